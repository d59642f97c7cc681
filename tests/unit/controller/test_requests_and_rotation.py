"""The pure decisions behind annotations: renew requests and CA rotation phases, on a fixed clock."""

from datetime import datetime, timedelta, timezone

import pytest
from clusterpki.controller import requests, rotation

LEAVES = ["apiserver", "admin", "kube-proxy"]
T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


def body(annotations=None, status=None):
    return {"metadata": {"annotations": annotations or {}}, "status": status or {}}


@pytest.mark.parametrize("value, targets, problem", [
    ("2026-11-22T12:00:00Z", set(LEAVES), None),  # any new value: every leaf
    ("apiserver", {"apiserver"}, None),
    ("apiserver,admin@1", {"apiserver", "admin"}, None),
    ("@2", set(LEAVES), None),
    ("nonsense@2", set(), "nonsense is not a leaf of this ClusterPKI"),
    ("a,b@3", set(), "a, b are not leaves of this ClusterPKI"),
])
def test_renewal_targets(value, targets, problem):
    assert requests.renewal_targets(value, LEAVES) == (targets, problem)


def test_a_renew_request_fires_once_per_value():
    assert requests.pending_renewal(body({requests.RENEW: "x"})) == "x"
    assert requests.pending_renewal(body({requests.RENEW: "x"}, {"renewRequest": "x"})) is None
    assert requests.pending_renewal(body({requests.RENEW: "y"}, {"renewRequest": "x"})) == "y"
    assert requests.pending_renewal(body()) is None


@pytest.mark.parametrize("value, expected", [
    ("ca", ("ca", "ca", None)), ("etcd-ca@2", ("etcd-ca", "etcd-ca@2", None)), ("sa", ("sa", "sa", None)),
    ("root", (None, "root", "'root' is not one of ca, etcd-ca, front-proxy-ca, sa")),
])
def test_rotation_requests(value, expected):
    assert rotation.pending_request(body({rotation.ROTATE: value})) == expected
    handled = body({rotation.ROTATE: value}, {"caRotation": {"request": value}})
    assert rotation.pending_request(handled) == (None, None, None)


GRACE = timedelta(minutes=10)


def test_phases_follow_the_grace_period_from_when_their_work_is_done():
    b = body()
    state = rotation.start("ca", "annotation", "ca", T0)
    assert state["phase"] == "Preparing" and state["phaseStartedAt"] is None
    started, wake = rotation.advance(state, b, GRACE, T0)  # Preparing's Secrets are written: its clock starts
    assert started["phaseStartedAt"] == "2026-11-22T12:00:00Z" and wake == T0 + GRACE
    same, wake = rotation.advance(started, b, GRACE, T0 + timedelta(minutes=5))
    assert same == started and wake == T0 + GRACE
    rotating, wake = rotation.advance(started, b, GRACE, T0 + GRACE)
    assert (rotating["phase"], rotating["phaseStartedAt"], wake) == ("Rotating", None, T0 + GRACE)
    # Rotating's work (the move, the re-issue) comes an hour late: its grace period starts then.
    late = T0 + timedelta(hours=1)
    waiting, wake = rotation.advance(rotating, b, GRACE, late)
    assert waiting["phase"] == "Rotating" and wake == late + GRACE
    completing, _ = rotation.advance(waiting, b, GRACE, late + GRACE)
    completed, wake = rotation.advance(completing, b, GRACE, late + GRACE)
    assert (completed["phase"], completed["completedAt"], wake) == ("Completed", "2026-11-22T13:10:00Z", None)


def test_the_complete_annotation_ends_rotating_early_once_per_value():
    state = {**rotation.start("ca", "annotation", "ca", T0), "phase": "Rotating"}
    asked = body({rotation.COMPLETE: "now"})
    completing, wake = rotation.advance(state, asked, GRACE, T0 + timedelta(seconds=1))
    assert completing["phase"] == "Completing" and completing["completeRequest"] == "now" and wake is not None
    again = {**state, "completeRequest": "now"}
    assert rotation.advance(again, asked, GRACE, T0 + timedelta(seconds=1))[0]["phase"] == "Rotating"
