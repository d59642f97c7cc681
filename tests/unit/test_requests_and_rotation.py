"""The pure decisions behind annotations: renew requests and CA rotation phases, on a fixed clock."""

from datetime import datetime, timedelta, timezone

import pytest
from clusterpki import requests, rotation

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


def test_phases_follow_the_grace_period():
    b = body({rotation.GRACE: "10m"})
    state = rotation.start("ca", "annotation", "ca", T0)
    assert state["phase"] == "Preparing"
    same, wake = rotation.advance(state, b, T0 + timedelta(minutes=5))
    assert same["phase"] == "Preparing" and wake == T0 + timedelta(minutes=10)
    rotating, wake = rotation.advance(state, b, T0 + timedelta(minutes=10))
    assert rotating["phase"] == "Rotating" and wake == T0 + timedelta(minutes=10)
    waiting, wake = rotation.advance(rotating, b, T0 + timedelta(minutes=15))
    assert waiting["phase"] == "Rotating" and wake == T0 + timedelta(minutes=20)
    completing, _ = rotation.advance(rotating, b, T0 + timedelta(minutes=20))
    completed, wake = rotation.advance(completing, b, T0 + timedelta(minutes=20))
    assert (completed["phase"], completed["completedAt"], wake) == ("Completed", "2026-11-22T12:20:00Z", None)


def test_the_complete_annotation_ends_rotating_early_once_per_value():
    state = {**rotation.start("ca", "annotation", "ca", T0), "phase": "Rotating"}
    asked = body({rotation.COMPLETE: "now"})
    completing, wake = rotation.advance(state, asked, T0 + timedelta(seconds=1))
    assert completing["phase"] == "Completing" and completing["completeRequest"] == "now" and wake is not None
    again = {**state, "completeRequest": "now"}
    assert rotation.advance(again, asked, T0 + timedelta(seconds=1))[0]["phase"] == "Rotating"


def test_grace_defaults_to_a_day_and_ignores_nonsense():
    assert rotation.grace(body()) == timedelta(hours=24)
    assert rotation.grace(body({rotation.GRACE: "soon"})) == timedelta(hours=24)
    assert rotation.grace(body({rotation.GRACE: "90s"})) == timedelta(seconds=90)
