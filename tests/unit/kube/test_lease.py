"""The one Lease implementation, against a fake of the Lease API that keeps resourceVersions as the API
server does: a holder takes a Lease that is absent, free, lapsed or already its own, never one another
holder keeps renewing, and of two holders writing at once only one wins. The restart turns on top of it."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from clusterpki.kube import turns
from clusterpki.kube.api import Api, ApiError
from clusterpki.kube.lease import Lease
from clusterpki.pki import times

NOW = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=timezone.utc)
COLLECTION = "/apis/coordination.k8s.io/v1/namespaces/ns/leases"


class FakeLeaseApi:
    """One namespace's Leases, behind :class:`Api`'s ``request``: GET, POST (409 when it exists) and PUT
    (409 when the resourceVersion sent is not the current one). ``refuse`` holds the methods answered 403,
    ``hang`` makes every request wait forever, and ``before_write`` runs before a write is applied, as
    another holder writing between our read and our write."""

    get_or_none = Api.get_or_none  # the transport's own: a 404 is None

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.refuse: set[str] = set()
        self.hang = False
        self.before_write: Callable[[], None] | None = None
        self._version = 0

    def seed(self, name: str, spec: dict[str, Any]) -> None:
        """A Lease written by someone else."""
        self._version += 1
        self.leases[name] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": spec,
                             "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(self._version)}}

    async def request(self, verb: str, what: str, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.requests.append((method, path))
        if self.hang:
            await asyncio.Event().wait()
        if method in self.refuse:
            raise ApiError(verb, what, 403, "Forbidden")
        if method != "GET" and self.before_write is not None:
            self.before_write()
        name = body["metadata"]["name"] if method == "POST" else path.rpartition("/")[2]
        current = self.leases.get(name)
        if method == "GET" or (method == "PUT" and current is None):
            if current is None:
                raise ApiError(verb, what, 404, "NotFound")
            return copy.deepcopy(current)
        if method == "POST" and current is not None:
            raise ApiError(verb, what, 409, "AlreadyExists")
        sent = body["metadata"].get("resourceVersion")  # none sent: an unconditional update, as the API server
        if method == "PUT" and sent and sent != current["metadata"]["resourceVersion"]:
            raise ApiError(verb, what, 409, "Conflict")
        self.seed(name, copy.deepcopy(body["spec"]))
        return copy.deepcopy(self.leases[name])

    def writes(self) -> list[str]:
        return [method for method, _ in self.requests if method != "GET"]

    def spec(self, name: str = "lease") -> dict[str, Any]:
        return self.leases[name]["spec"]


@pytest.fixture
def api() -> FakeLeaseApi:
    return FakeLeaseApi()


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> list[datetime]:
    """The project's one clock, stopped at NOW until a test moves it: ``clock[0] += ...``."""
    moment = [NOW]
    monkeypatch.setattr(times, "now", lambda: moment[0])
    return moment


def lease(api: FakeLeaseApi, identity: str = "a", timeout: float | None = None) -> Lease:
    return Lease(api, "ns", "lease", identity, 10, timeout=timeout)


def held(holder: str | None, renewed: datetime, transitions: int = 3) -> dict[str, Any]:
    spec = {"leaseDurationSeconds": 10, "renewTime": times.format_micro(renewed), "leaseTransitions": transitions,
            "acquireTime": times.format_micro(renewed - timedelta(minutes=5))}
    return spec if holder is None else {**spec, "holderIdentity": holder}


async def test_an_absent_lease_is_created_as_ours_with_no_transition(api):
    a = lease(api)
    assert await a.take() is None
    assert api.writes() == ["POST"]
    assert api.requests[-1][1] == COLLECTION
    assert api.spec() == {"holderIdentity": "a", "leaseDurationSeconds": 10, "leaseTransitions": 0,
                          "acquireTime": "2026-11-24T12:00:00.123456Z", "renewTime": "2026-11-24T12:00:00.123456Z"}
    assert a.holder() == "a"


async def test_a_free_lease_is_taken_without_the_create_verb(api):
    """An administrator's manifests may create the Lease and grant its holders only get and update."""
    api.seed("lease", held(None, NOW - timedelta(seconds=1)))
    api.refuse.add("POST")
    assert await lease(api).take() is None
    assert api.writes() == ["PUT"]
    assert api.spec()["holderIdentity"] == "a"
    assert api.spec()["leaseTransitions"] == 4
    assert api.spec()["acquireTime"] == api.spec()["renewTime"] == times.format_micro(NOW)


async def test_a_lapsed_lease_is_taken(api):
    api.seed("lease", held("b", NOW - timedelta(seconds=10, microseconds=1)))
    assert await lease(api).take() is None
    assert (api.spec()["holderIdentity"], api.spec()["leaseTransitions"]) == ("a", 4)


async def test_a_lease_another_holder_renews_is_refused_with_only_a_read(api):
    api.seed("lease", held("b", NOW - timedelta(seconds=9)))
    before = copy.deepcopy(api.leases)
    a = lease(api)
    assert await a.take() == "b"
    assert api.writes() == [] and api.leases == before
    assert a.holder() == "b"
    assert a.holder(NOW + timedelta(seconds=1, microseconds=1)) is None, "it lapses 10 s after its renewal"


async def test_a_put_that_loses_the_race_says_who_won(api):
    """Another holder's write lands between our read and our write: our PUT gets 409 and no error."""
    api.seed("lease", held(None, NOW))

    def rival_writes() -> None:
        api.before_write = None
        api.seed("lease", held("b", NOW, transitions=4))
    api.before_write = rival_writes
    assert await lease(api).take() == "b"
    assert api.spec()["holderIdentity"] == "b"


async def test_a_create_that_loses_the_race_says_who_won(api):
    def rival_creates() -> None:
        api.before_write = None
        api.seed("lease", {**held("b", NOW), "leaseTransitions": 0})
    api.before_write = rival_creates
    assert await lease(api).take() == "b"
    assert api.writes() == ["POST"]


async def test_a_renewal_moves_the_renew_time_only(api, clock):
    a = lease(api)
    await a.take()
    taken = copy.deepcopy(api.spec())
    clock[0] += timedelta(seconds=2)
    assert await a.renew() is True
    assert api.spec() == {**taken, "renewTime": "2026-11-24T12:00:02.123456Z"}


async def test_a_lease_taken_from_us_is_not_renewed(api):
    a = lease(api)
    await a.take()
    api.seed("lease", {**api.spec(), "holderIdentity": "b"})
    writes = len(api.writes())
    assert await a.renew() is False
    assert len(api.writes()) == writes
    assert a.holder() == "b"


async def test_a_lease_given_back_is_free_and_only_ours_is_given_back(api):
    a, b = lease(api), lease(api, "b")
    await a.take()
    await b.give_back()
    assert api.spec()["holderIdentity"] == "a", "b does not hold it: nothing to give back"
    await a.give_back()
    assert "holderIdentity" not in api.spec() and "acquireTime" not in api.spec()
    assert a.holder() is None
    assert await b.take() is None


async def test_transitions_count_changes_of_holder(api, clock):
    a, b = lease(api), lease(api, "b")
    await a.take()
    await a.take()  # already ours: neither a transition nor a new acquireTime
    assert (api.spec()["leaseTransitions"], api.spec()["acquireTime"]) == (0, times.format_micro(NOW))
    await a.give_back()
    clock[0] += timedelta(seconds=1)
    await b.take()
    assert (api.spec()["leaseTransitions"], api.spec()["acquireTime"]) == (1, times.format_micro(clock[0]))
    clock[0] += timedelta(seconds=11)  # b died: its Lease lapses
    await a.take()
    assert (api.spec()["holderIdentity"], api.spec()["leaseTransitions"]) == ("a", 2)


async def test_micro_times_round_trip(api):
    await lease(api).take()
    written = api.spec()["renewTime"]
    assert written == "2026-11-24T12:00:00.123456Z"
    assert times.parse_time(written) == NOW
    assert lease(api).holder() is None, "nothing read yet"


async def test_a_hung_request_is_an_api_error_after_the_timeout(api):
    api.hang = True
    with pytest.raises(ApiError) as raised:
        await asyncio.wait_for(lease(api, timeout=0.05).take(), 5)
    assert (raised.value.status, str(raised.value)) == (0, "get Lease ns/lease failed: HTTP 0 TimeoutError")


async def test_restart_turns_take_renew_and_give_back(api, monkeypatch):
    """An agent's turn is its Lease: taken once (no create when it exists), renewed while held, given
    back; the renewer stops, and the turn is no longer held, once another agent holds the Lease."""
    monkeypatch.setattr(turns, "RENEW", 0.01)
    api.seed("cp-restart", held(None, NOW))
    api.refuse.add("POST")
    mine, theirs = turns.Turns(api, "ns", "cp", "m1"), turns.Turns(api, "ns", "cp", "m2")
    assert await mine.take() is None and mine.held
    assert await theirs.take() == "m1"
    taken = api.writes()
    await asyncio.sleep(0.05)
    assert mine.held and len(api.writes()) > len(taken), "renewed"
    await mine.give_back()
    assert not mine.held and "holderIdentity" not in api.spec("cp-restart")
    assert await theirs.take() is None
    api.seed("cp-restart", {**api.spec("cp-restart"), "holderIdentity": "m3"})
    await asyncio.sleep(0.05)
    assert not theirs.held
    await theirs.give_back()
    assert api.spec("cp-restart")["holderIdentity"] == "m3"
