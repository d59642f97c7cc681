"""Who holds a restart Lease: nobody once it is released or has lapsed, so a dead agent's turn ends."""

from datetime import datetime, timedelta, timezone

from clusterpki.kube import turns

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def lease(holder: str | None, renewed: datetime | None, duration: int = 90) -> dict:
    spec = {"leaseDurationSeconds": duration}
    if holder is not None:
        spec["holderIdentity"] = holder
    if renewed is not None:
        spec["renewTime"] = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"spec": spec}


def holder(lease: dict, now: datetime) -> str | None:
    """Who holds ``lease`` at ``now``, as the restart turns of an agent see it."""
    turn = turns.Turns(None, "ns", "cp", "m1")
    turn.lease.object = lease
    return turn.lease.holder(now)


def test_a_renewed_lease_is_held():
    assert holder(lease("m0", NOW - timedelta(seconds=80)), NOW) == "m0"


def test_a_lapsed_lease_is_free():
    assert holder(lease("m0", NOW - timedelta(seconds=91)), NOW) is None


def test_a_released_lease_is_free():
    assert holder(lease(None, NOW), NOW) is None
    assert holder({}, NOW) is None


def test_one_lease_per_clusterpki():
    assert turns.lease_name("cp") == "cp-restart"
