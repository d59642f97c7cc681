"""Errors a user can fix, which the CLI prints as one sentence without a traceback."""


class UserError(Exception):
    """A problem with the user's input or environment, worded for the user."""
