"""The watch's backoff: a watch a load balancer's idle timeout ends (HAProxy's ``timeout server``, after a
while without events) is resumed at once; only watches that fail as they open back off further and further."""

import asyncio
import logging

from clusterpki.kube import informer
from clusterpki.kube.api import ApiError


class Streams:
    """An API whose list is empty and whose every watch stays open ``open_for`` seconds, then breaks
    the way a closed connection does (no event at all: an idle CSR or Node watch)."""

    def __init__(self, open_for: float) -> None:
        self.open_for, self.watches = open_for, 0

    async def request(self, verb, what, method, path, params=None, accept=None):
        return {"metadata": {"resourceVersion": "1"}, "items": []}

    async def stream(self, what, path, params, timeout, accept=None):
        self.watches += 1
        await asyncio.sleep(self.open_for)
        raise ApiError("watch", what, 0, "ClientPayloadError")
        yield  # an async generator, as Api.stream is


async def delays(open_for: float, monkeypatch, caplog, watches: int) -> list[str]:
    monkeypatch.setattr(informer, "BACKOFF", (0.01, 0.02, 0.03, 0.04, 0.05))
    monkeypatch.setattr(informer, "HEALTHY_WATCH", 0.5)  # far from both: a busy machine stalls for less
    api = Streams(open_for)
    watch = informer.Watch(api, [], "", lambda *_: None, plural="certificatesigningrequests")
    task = asyncio.create_task(watch.run())
    with caplog.at_level(logging.INFO, logger="clusterpki.kube.informer"):
        while api.watches < watches:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return [r.getMessage().rsplit(" ", 1)[-1] for r in caplog.records if "watching again" in r.getMessage()]


async def test_a_watch_that_was_open_a_while_is_resumed_at_once(monkeypatch, caplog):
    said = await delays(0.6, monkeypatch, caplog, watches=4)
    assert said and set(said) == {"0.01s"}, said


async def test_watches_that_break_as_they_open_back_off_further_each_time(monkeypatch, caplog):
    said = await delays(0.0, monkeypatch, caplog, watches=6)
    assert said[:5] == ["0.01s", "0.02s", "0.03s", "0.04s", "0.05s"], said


class Silent:
    """An API whose watches stay open and bring nothing (an apiserver whose cache stopped following
    etcd), while its lists show what changed."""

    def __init__(self) -> None:
        self.items, self.lists, self.watches = [], 0, 0

    async def request(self, verb, what, method, path, params=None, accept=None):
        self.lists += 1
        return {"metadata": {"resourceVersion": str(self.lists)}, "items": list(self.items)}

    async def stream(self, what, path, params, timeout, accept=None):
        self.watches += 1
        await asyncio.sleep(3600)
        yield {}


async def test_a_watch_found_behind_lists_again_and_reports_what_it_missed():
    api = Silent()
    seen = []
    watch = informer.Watch(api, ["ns"], "", lambda kind, obj, _: seen.append((kind, obj["metadata"]["name"])),
                           plural="leases", metadata_only=False)
    task = asyncio.create_task(watch.run())
    try:
        while api.watches < 1:
            await asyncio.sleep(0.01)
        api.items = [{"metadata": {"name": "cp-agent-m0", "namespace": "ns", "resourceVersion": "7"}}]
        watch.restart("other")  # another namespace's: nothing happens here
        await asyncio.sleep(0.05)
        assert (api.lists, seen) == (1, [])
        watch.restart("ns")
        while api.watches < 2:
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert api.lists == 2 and seen == [("ADDED", "cp-agent-m0")]
    assert set(watch.objects("ns")) == {"cp-agent-m0"}


async def test_a_replica_keeps_its_own_part_and_a_failing_handler_costs_one_event_not_the_watch(caplog):
    """``owns`` (a replica's part of the fleet): other namespaces' objects are neither kept nor reported;
    a handler that raises on one object is logged, and the others still come."""
    api = Silent()
    api.items = [{"metadata": {"name": n, "namespace": ns, "resourceVersion": "1"}}
                 for ns, n in (("mine", "bad"), ("theirs", "x"), ("mine", "good"))]
    seen = []

    def on_event(kind, obj, _):
        if obj["metadata"]["name"] == "bad":
            raise RuntimeError("a bug")
        seen.append((obj["metadata"]["namespace"], obj["metadata"]["name"]))
    watch = informer.Watch(api, [], "", on_event, plural="clusterpkis", metadata_only=False, report_first=True,
                           owns=lambda namespace: namespace == "mine")
    task = asyncio.create_task(watch.run())
    with caplog.at_level(logging.ERROR, logger="clusterpki.kube.informer"):
        try:
            while api.watches < 1:
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert seen == [("mine", "good")] and set(watch.objects("mine")) == {"bad", "good"} and not watch.objects("theirs")
    assert any("handling ADDED of clusterpkis mine/bad failed" in r.getMessage() for r in caplog.records)


class Quiet(Silent):
    """A silent API whose watches bring the events put on ``events``, then stay open."""

    def __init__(self) -> None:
        super().__init__()
        self.events: asyncio.Queue = asyncio.Queue()

    async def stream(self, what, path, params, timeout, accept=None):
        self.watches += 1
        while True:
            yield await self.events.get()


async def watching(api: Silent, monkeypatch, within: float = 0.05, at_most: float = 60.0, namespaces=("ns",)):
    monkeypatch.setattr(informer, "EXPECT_WITHIN", within)
    monkeypatch.setattr(informer, "RELIST_AT_MOST", at_most)
    watch = informer.Watch(api, list(namespaces), "", lambda *_: None, plural="clusterpkis", metadata_only=False)
    task = asyncio.create_task(watch.run())
    while api.watches < 1:
        await asyncio.sleep(0.01)
    return watch, task


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def stopped(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_watch_that_does_not_bring_our_own_write_lists_again_once_in_a_while(monkeypatch, caplog):
    """The HA proof's stall: the ClusterPKI watch stayed open through the apiservers' restarts and brought
    nothing for minutes, so a rotation asked for meanwhile waited. The operator's own writes tell."""
    api = Silent()
    watch, task = await watching(api, monkeypatch)
    try:
        with caplog.at_level(logging.INFO, logger="clusterpki.kube.informer"):
            watch.expect("ns", "5")  # the list was at 1, and the watch brings nothing
            await asyncio.wait_for(until(lambda: api.watches == 2), 5)
            assert api.lists == 2
            watch.expect("ns", "9")  # behind again at once: but a relist a minute is the most it costs
            await asyncio.sleep(0.2)
            assert api.lists == 2
    finally:
        await stopped(task)
    said = [r.getMessage() for r in caplog.records]
    assert "watch the clusterpkis of ns: it has not brought our own write (5) in 0.05s, only 1: listing again" in said


async def test_a_write_expected_within_the_minute_after_a_relist_is_checked_when_it_is_over(monkeypatch):
    """The relist can land on the same quiet apiserver: the next unmet expectation waits for the rate
    limit, and is not forgotten."""
    api = Silent()
    watch, task = await watching(api, monkeypatch, at_most=0.4, namespaces=())  # all namespaces: one watch
    try:
        watch.expect("ns", "5")
        await asyncio.wait_for(until(lambda: api.watches == 2), 5)
        watch.expect("other", "9")
        watch.expect("ns", "8")
        await asyncio.sleep(0.2)
        assert api.lists == 2, "not within the minute"
        await asyncio.wait_for(until(lambda: api.watches == 3), 5)
        await asyncio.sleep(0.6)
        assert api.lists == 3, "one relist for both, and none after: the list was at 2, then 3"
    finally:
        await stopped(task)


async def test_a_watch_that_brings_our_own_write_or_later_does_not_list_again(monkeypatch):
    api = Quiet()
    watch, task = await watching(api, monkeypatch, within=0.1, at_most=0.0)
    try:
        watch.expect("ns", "5")
        watch.expect("ns", "10")
        watch.expect("other", "70")  # not a namespace it follows: nothing to check
        api.events.put_nowait({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "10"}}})
        await asyncio.sleep(0.3)
        watch.expect("ns", "9")  # "10" > "9" as numbers, not as strings
        watch.expect("ns", "not-etcd")  # not comparable: never called behind
        await asyncio.sleep(0.3)
    finally:
        await stopped(task)
    assert (api.lists, api.watches) == (1, 1)
    watch.expect("ns", "99")  # stopped: a timer that fires later does nothing
    await asyncio.sleep(0.2)
    assert api.lists == 1
