"""The elector's decisions, with the real timing (10/7/2 s) on an event loop whose clock jumps to its next
timer: a standby tries every retry period and leads once it takes the Lease, a leader renews every retry
period, and one that has not renewed within the renew deadline, a hung request included, is told so at
that deadline, not an attempt later. Errors are failed attempts, retried; only a bug ends the election."""

from __future__ import annotations

import asyncio
import logging
import selectors
from collections.abc import Coroutine
from typing import Any

from clusterpki.kube.api import ApiError
from clusterpki.kube.leadership import TIMING, Elector
from kubernetes import client

HANG = object()  # an answer that never comes


class JumpingSelector(selectors.DefaultSelector):
    """Nothing here waits on I/O: instead of sleeping until the next timer, move the loop's clock to it."""

    def __init__(self, loop: FakeClockLoop) -> None:
        super().__init__()
        self.loop = loop

    def select(self, timeout: float | None = None) -> list:
        ready = super().select(0)
        if not ready and timeout is None:
            raise RuntimeError("deadlock: nothing scheduled and nothing to wait for")
        if not ready:
            self.loop.now += timeout
        return ready


class FakeClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(JumpingSelector(self))

    def time(self) -> float:
        return self.now


def run(coroutine: Coroutine[Any, Any, Any]) -> None:
    loop = FakeClockLoop()
    try:
        loop.run_until_complete(asyncio.wait_for(coroutine, 3600))
    finally:
        loop.close()


class ScriptedLease:
    """A Lease whose take() and renew() give the next answer of their script: a value, an exception to
    raise, or HANG. Each call is noted with the loop's time."""

    def __init__(self, takes: list[Any], renewals: list[Any], name: str = "clusterpki") -> None:
        self.takes, self.renewals, self.name = takes, renewals, name
        self.calls: list[tuple[float, str]] = []

    async def take(self) -> str | None:
        return await self._answer("take", self.takes)

    async def renew(self) -> bool:
        return await self._answer("renew", self.renewals)

    async def give_back(self) -> None:
        self.calls.append((asyncio.get_running_loop().time(), "give_back"))

    def holder(self) -> str:
        return "other"

    async def _answer(self, name: str, script: list[Any]) -> Any:
        self.calls.append((asyncio.get_running_loop().time(), name))
        answer = script.pop(0)
        if answer is HANG:
            await asyncio.Event().wait()
        if isinstance(answer, Exception):
            raise answer
        return answer


class Outcome:
    """What the elector did: when it started leading, and when and why it said the Lease was lost."""

    def __init__(self, takes: list[Any], renewals: list[Any]) -> None:
        self.lease = ScriptedLease(takes, renewals)
        self.lost: list[tuple[float, str]] = []
        self.elector = Elector(client.Configuration(), "ns", on_lost=self._lost)
        run(self.elector.elect(self.lease))

    def _lost(self, message: str) -> None:
        self.lost.append((asyncio.get_running_loop().time(), message))

    def times(self, name: str) -> list[float]:
        return [at for at, called in self.lease.calls if called == name]


def failed(status: int = 0, reason: str = "ClientConnectorError") -> ApiError:
    return ApiError("get", "Lease ns/clusterpki", status, reason)


def test_the_timing_is_client_gos_shape():
    assert TIMING.retry_period < TIMING.renew_deadline < TIMING.lease_duration


def test_a_standby_tries_every_retry_period_and_leads_once_it_takes_the_lease():
    outcome = Outcome(takes=["other", "other", "other", None], renewals=[False])
    assert outcome.times("take") == [0, 2, 4, 6]
    assert outcome.elector.leading.is_set()
    assert outcome.lost == [(8, "Lost the Lease ns/clusterpki: it is no longer ours (other holds it).")]


def test_the_leader_renews_every_retry_period():
    outcome = Outcome(takes=[None], renewals=[True, True, True, False])
    assert outcome.times("renew") == [2, 4, 6, 8]
    assert [at for at, _ in outcome.lost] == [8]


def test_a_leader_whose_renewals_fail_is_lost_at_the_renew_deadline():
    outcome = Outcome(takes=[None], renewals=[True, failed(), failed(), failed()])
    assert outcome.times("renew") == [2, 4, 6, 8]
    assert outcome.lost == [(2 + 7, "Lost the Lease ns/clusterpki: no renewal succeeded within 7s.")], \
        "at the deadline (7 s after the last renewal that succeeded began), not at the next attempt"


def test_a_hung_renewal_is_cut_at_the_renew_deadline():
    outcome = Outcome(takes=[None], renewals=[True, HANG])
    assert outcome.times("renew") == [2, 4]
    assert outcome.lost == [(2 + 7, "Lost the Lease ns/clusterpki: no renewal succeeded within 7s.")]


def test_a_renewal_that_succeeds_before_the_deadline_keeps_the_lead():
    outcome = Outcome(takes=[None], renewals=[failed(), failed(), True, True, False])
    assert outcome.times("renew") == [2, 4, 6, 8, 10]
    assert outcome.lost == [(10, "Lost the Lease ns/clusterpki: it is no longer ours (other holds it).")]


def test_errors_while_standing_by_are_retried_and_a_403_is_logged(caplog):
    caplog.set_level(logging.WARNING, "clusterpki.kube.leadership")
    forbidden = failed(403, 'Forbidden: leases.coordination.k8s.io "clusterpki" is forbidden')
    outcome = Outcome(takes=[forbidden, failed(), None], renewals=[False])
    assert outcome.times("take") == [0, 2, 4]
    assert outcome.elector.leading.is_set()
    assert "get Lease ns/clusterpki failed: HTTP 403 Forbidden" in caplog.text


def test_a_bug_ends_the_election():
    outcome = Outcome(takes=[KeyError("spec")], renewals=[])
    assert not outcome.elector.leading.is_set()
    assert outcome.lost == [(0, "Lost the Lease ns/clusterpki: the election failed: KeyError.")]


def test_a_replica_of_a_fleet_in_parts_leads_the_part_whose_lease_is_free_and_only_that_one():
    held = ScriptedLease(["other"] * 10, [], "clusterpki-shard-0")
    free = ScriptedLease(["other", None], [True, False], "clusterpki-shard-1")
    lost: list[str] = []
    elector = Elector(client.Configuration(), "ns", on_lost=lost.append, shards=2)
    run(elector.elect(held, free))
    assert (elector.shard, elector.name) == (1, "clusterpki-shard-1")
    assert [called for _, called in held.calls if called == "renew"] == [], "the held part is never renewed"
    assert lost == ["Lost the Lease ns/clusterpki-shard-1: it is no longer ours (other holds it)."]


def test_a_leader_stopped_gives_its_lease_back_and_is_not_lost():
    lease = ScriptedLease([None], [True] * 10)
    lost: list[str] = []
    elector = Elector(client.Configuration(), "ns", on_lost=lost.append)

    async def stopped_after_5s() -> None:
        asyncio.get_running_loop().call_later(5, elector._stop.set)
        await elector.elect(lease)
    run(stopped_after_5s())
    assert [(at, called) for at, called in lease.calls if called != "take"] == \
        [(2, "renew"), (4, "renew"), (5, "give_back")], "given back at once, not at the next renewal"
    assert lost == [] and elector.released.is_set()
