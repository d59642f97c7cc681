"""What the README tells users to type works the second time too: an annotation a request leaves in
place (rotate-ca, rotate-ca-abort, rotate-ca-complete, renew...) is only changed with --overwrite."""

from __future__ import annotations

import re

from tests.helpers import REPO

README = (REPO / "README.md").read_text()


def test_every_kubectl_annotate_in_the_readme_overwrites():
    # commands may wrap over two lines of a bullet: join the README's lines first
    text = re.sub(r"\s*\n\s*", " ", README)
    commands = re.findall(r"kubectl (?:-n \S+ )?annotate[^`]*", text)
    assert commands, "the README shows how to annotate"
    assert all("--overwrite" in command for command in commands), [c for c in commands if "--overwrite" not in c]


def test_the_readme_lists_every_event_reason_and_no_other():
    import re as regex

    from clusterpki.controller.reasons import Reason

    events = README[README.index("- **Events** on the ClusterPKI:"):]
    events = events[:events.index("Each reason")]
    listed = set(regex.findall(r"`([A-Za-z]+)`", events))
    conditions_only = {Reason.NO_FAILED_RESTART.value, Reason.MATERIAL_ACCEPTED.value}  # condition reasons
    assert listed == {r.value for r in Reason} - conditions_only
