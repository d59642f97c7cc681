"""Reports against the record: who runs what, who is behind on which Secret, whose restart failed."""

from __future__ import annotations

from datetime import timedelta

from clusterpki.controller.consumers import consumers
from clusterpki.kube.reports import Report, Restart, RestartReason, RestartState, lease_name
from clusterpki.pki.record import Entry, Record

from tests.unit.controller.world import T0

ISSUED = Record({"etcd-ca": Entry("a", "1"), "etcd-server-m0": Entry("b", "2"), "ca": Entry("c", "3")})


def report(member: str = "m0", **fields: object) -> Report:
    return Report(member=member, renewed=T0, duration=timedelta(seconds=90), lease=lease_name("x", member), **fields)


def test_reports_name_who_runs_an_older_revision():
    loaded = {"etcd": {"etcd-ca": ISSUED.revision(["etcd-ca"]), "etcd-server-m0": "old"},
              "kube-apiserver": {"ca": ISSUED.revision(["ca"])}}
    found = consumers([report(loaded=loaded)], ISSUED, "x", {"m0"}, T0)
    assert list(found.entries) == [{"name": "m0/etcd", "current": False, "behind": ["etcd-server-m0"]},
                                   {"name": "m0/kube-apiserver", "current": True}]
    assert found.holding_up == "m0/etcd (etcd-server-m0)" and found.current == "1/2" and found.failed == ""
    assert found.next_stale == T0 + timedelta(seconds=90)


def test_restarts_not_done_are_typed_and_a_failed_one_is_named():
    failed = Restart(RestartState.FAILED, RestartReason.COMMAND_FAILED, "restarting etcd exited 1: boom")
    waiting = Restart(RestartState.WAITING, RestartReason.TURN_TAKEN, "it is the turn of m1 to restart")
    found = consumers([report(loaded={"kube-apiserver": {}}, restarts={"etcd": failed, "kube-apiserver": waiting})],
                      ISSUED, "x", {"m0"}, T0)
    assert [e["restart"] for e in found.entries] == [
        {"state": "Failed", "reason": "RestartFailed", "message": "restarting etcd exited 1: boom"},
        {"state": "Waiting", "reason": "TurnTaken", "message": "it is the turn of m1 to restart"}]
    assert found.failed == "m0/etcd (restarting etcd exited 1: boom)"


def test_refused_material_is_named_and_reports_of_no_member_or_gone_stale_do_not_count():
    stale = Report(member="m1", renewed=T0 - timedelta(seconds=91), lease=lease_name("x", "m1"),
                   loaded={"etcd": {}})
    forged = Report(member="m0", renewed=T0, duration=timedelta(days=365), lease=lease_name("x", "m1"),
                    loaded={"etcd": {}})  # m1's agent, saying it is m0, for a year
    found = consumers([report(rejected={"ca": "ca.crt is not the bundle on record"}), report("m9", loaded={"etcd": {}}),
                       stale], ISSUED, "x", {"m0", "m1"}, T0, seen_before={"m1"})
    assert found.rejected == "m0: ca: ca.crt is not the bundle on record"
    assert found.entries == () and found.stale == ("m1",)
    found = consumers([forged], ISSUED, "x", {"m0", "m1"}, T0 + timedelta(minutes=11))
    assert found.entries == (), "a report is m1's, as its Lease's name says, and counts ten minutes at most"
