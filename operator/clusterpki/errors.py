"""Errors a user can fix, which the CLI prints as one sentence without a traceback."""


class UserError(Exception):
    """A problem with the user's input or environment, worded for the user."""


class UsageError(UserError):
    """Arguments that do not go together (or lack one another): the command is not run, exit 2."""
