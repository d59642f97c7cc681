"""The operator counts a member's report as stale only on a fresh read: its watch of the report Leases can
go quiet without breaking (through a load balancer, across an apiserver's restart) while the agents renew."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

from clusterpki.controller import handlers
from clusterpki.kube import reports
from clusterpki.pki import times


def lease(member: str, renewed_ago: timedelta) -> dict:
    report = reports.Report(member, duration=timedelta(seconds=90))
    return reports.renewed(reports.lease("cp", "ns", member, 90), report, times.now() - renewed_ago)


class Api:
    def __init__(self, items: list[dict]) -> None:
        self.items, self.lists = items, 0

    async def request(self, verb, what, method, path, body=None, params=None, **_):
        assert (method, path, params) == ("GET", reports.lease_path("ns"), {"labelSelector": reports.selector()})
        self.lists += 1
        return {"items": self.items}


def state(watched: list[dict], stored: list[dict]) -> SimpleNamespace:
    objects = {item["metadata"]["name"]: item for item in watched}
    restarted: list[str] = []
    return SimpleNamespace(api=Api(stored), restarted=restarted, reports=SimpleNamespace(
        objects=lambda namespace: objects, restart=restarted.append))


async def test_fresh_reports_come_from_the_watch_alone():
    found = state([lease("m0", timedelta(seconds=5)), lease("m1", timedelta(seconds=20))], [])
    assert [r.member for r in await handlers._reports(found, ("ns", "cp"))] == ["m0", "m1"]
    assert found.api.lists == 0 and found.restarted == []


async def test_a_report_stale_in_the_watch_but_renewed_since_is_read_afresh_and_counts():
    renewed = [lease("m0", timedelta(seconds=5)), lease("m1", timedelta(seconds=3))]
    found = state([lease("m0", timedelta(seconds=5)), lease("m1", timedelta(minutes=5))], renewed)
    got = await handlers._reports(found, ("ns", "cp"))
    assert found.api.lists == 1 and all(r.fresh(times.now()) for r in got) and len(got) == 2
    assert found.restarted == ["ns"], "a watch found behind lists again"


async def test_a_report_stale_on_a_fresh_read_stays_stale_and_other_pkis_reports_are_left_out():
    other = reports.renewed(reports.lease("cp2", "ns", "m0", 90), reports.Report("m0"), times.now())
    gone_quiet = lease("m0", timedelta(minutes=5))
    found = state([gone_quiet], [gone_quiet, other])
    got = await handlers._reports(found, ("ns", "cp"))
    assert [(r.lease, r.fresh(times.now())) for r in got] == [("cp-agent-m0", False)]
    assert found.restarted == [], "the watch was right"
