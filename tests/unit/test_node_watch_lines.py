"""The proofs' watch of Nodes reads what ``kubectl get nodes -w`` prints (checked on a real kubectl: with
``-w`` it aligns tab-separated columns with spaces, so the fields are separated by ``|``)."""

from __future__ import annotations

from tests.nodes import _seen


def test_a_line_of_the_watch_is_a_node_its_ready_condition_and_when_its_kubelet_set_it():
    seen = _seen("fake-1|False|KubeletNotReady|2026-11-30T18:10:03Z|container runtime status check may not have "
                 "completed yet\n")
    assert seen is not None and (seen.node, seen.status, seen.reason) == ("fake-1", "False", "KubeletNotReady")
    assert seen.since == 1796062203.0 and seen.message.startswith("container runtime")
    assert _seen("fake-2||||\n").status == "", "a Node without a Ready condition is read, and counts as not Ready"


def test_what_is_not_such_a_line_is_not_read_as_a_node():
    assert _seen("fake-1        False   KubeletNotReady   2026-11-30T18:10:03Z   message\n") is None
    assert _seen("|True|KubeletReady|2026-11-30T18:10:03Z|ready\n") is None
