"""Rotation phases wait for consumers, unless forced; sa keeps its old key for the token lifetime."""

from datetime import datetime, timedelta, timezone

from clusterpki.controller import rotation
from clusterpki.controller.status import parse_timestamp, timestamp

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
GRACE = timedelta(seconds=10)


def _in(phase: str, target: str = "ca") -> dict:
    return {"ca": target, "phase": phase, "phaseStartedAt": timestamp(NOW - GRACE)}


def test_a_phase_whose_time_is_up_waits_for_consumers_and_names_them():
    held, wake = rotation.advance(_in(rotation.PREPARING), {}, GRACE, NOW, "node-0/etcd (etcd-ca)")
    assert held["phase"] == rotation.PREPARING and held["waitingFor"] == "node-0/etcd (etcd-ca)"
    assert wake == NOW + rotation.CONSUMER_RECHECK
    moved, wake = rotation.advance(held, {}, GRACE, NOW, "")
    assert moved["phase"] == rotation.ROTATING and "waitingFor" not in moved and wake == NOW


def test_force_moves_on_without_the_consumers_once_per_value():
    body = {"metadata": {"annotations": {rotation.FORCE: "now"}}}
    moved, _ = rotation.advance(_in(rotation.ROTATING), body, GRACE, NOW, "node-0/etcd (etcd-ca)")
    assert moved["phase"] == rotation.COMPLETING and moved["forceRequest"] == "now"
    held, _ = rotation.advance({**_in(rotation.PREPARING), "forceRequest": "now"}, body, GRACE, NOW, "node-0/etcd (x)")
    assert held["phase"] == rotation.PREPARING


def test_before_its_time_a_phase_waits_for_the_grace_period_alone():
    fresh = {**_in(rotation.PREPARING), "phaseStartedAt": timestamp(NOW)}
    same, wake = rotation.advance(fresh, {}, GRACE, NOW, "")
    assert same["phase"] == rotation.PREPARING and wake == NOW + GRACE


def test_leaving_sa_s_rotating_keeps_the_old_key_for_the_token_lifetime():
    moved, _ = rotation.advance(_in(rotation.ROTATING, "sa"), {}, GRACE, NOW, "", timedelta(hours=1))
    assert parse_timestamp(moved["oldKeyTrustedUntil"]) == NOW + timedelta(hours=1)
    other, _ = rotation.advance(_in(rotation.ROTATING, "ca"), {}, GRACE, NOW, "", timedelta(hours=1))
    assert "oldKeyTrustedUntil" not in other
