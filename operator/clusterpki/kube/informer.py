"""A watch of one kind of object, as an informer keeps one: the ClusterPKIs (whole as they come; the
controller keeps their bodies), the operator's own Secrets (metadata only, ``PartialObjectMetadata``:
names, labels and versions are all it needs, and a fleet's Secrets with their data would cost the
operator hundreds of MiB at start-up), the agents' report Leases (whole: they are small, and what they
say is in their spec and annotations), and, for the CSR approver, the policy ClusterPKI, Nodes and CSRs
(cluster-scoped, whole as they come, but only their metadata kept).

List, then watch from the list's version (label-filtered on the server); resume from the last
version when the server ends the watch; list again when that version has expired (HTTP 410). An
index (namespace → name → resourceVersion and object) lets a relist report exactly what changed in
the gap, so no change is missed and none is reported twice, and answers what the objects are without
a request. The first list only fills the index: at start-up every ClusterPKI is looked at anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from clusterpki.kube.api import PARTIAL_METADATA, PARTIAL_METADATA_WATCH, Api, ApiError

WATCH_TIMEOUT = 300  # seconds the server keeps one watch open before the next one resumes it
BACKOFF = (1, 2, 5, 10, 30)  # seconds before trying again after failures in a row
# A watch that stayed open this long before it broke was working: a load balancer's idle timeout (HAProxy's
# `timeout server`) or an apiserver's restart ended it, and it is resumed at once, not after a growing backoff.
HEALTHY_WATCH = 10.0
# A write of ours that the watch has not brought this long after the server answered it: the watch is open
# and behind (an apiserver whose cache stopped following etcd, behind a load balancer), and lists again;
# but not more often than RELIST_AT_MOST, so that a loaded server, whose watch lags for good reason, is
# not made to serve a relist after each write.
EXPECT_WITHIN = 10.0
RELIST_AT_MOST = 60.0
LOGGER = logging.getLogger("clusterpki.kube.informer")

# (ADDED | MODIFIED | DELETED, the object, the version seen before it, if any)
Handler = Callable[[str, dict[str, Any], dict[str, Any] | None], None]


class Watch:
    """Follows the objects of ``plural`` (under ``group``: ``/api/v1`` or ``/apis/<group>/<version>``)
    matching ``selector`` in ``namespaces`` (all when empty), calling ``on_event`` for each change."""

    def __init__(self, api: Api, namespaces: list[str], selector: str, on_event: Handler,
                 plural: str = "secrets", group: str = "/api/v1", metadata_only: bool = True,
                 report_first: bool = False, keep: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 fields: str = "", owns: Callable[[str], bool] = lambda namespace: True) -> None:
        """``report_first``: the first list reports each object as ADDED too. ``keep``: what of an object
        (of its metadata, when ``metadata_only``) the index retains (all of it by default), and a DELETED
        found by a relist reports. ``fields``: a field selector (e.g. ``metadata.name=x``). ``owns``: the
        namespaces whose objects count (a replica's part of the fleet); the others are neither kept nor
        reported."""
        self.owns = owns
        self.api, self.on_event, self.plural = api, on_event, plural
        self.params = {"labelSelector": selector, **({"fieldSelector": fields} if fields else {})}
        self.group, self.metadata_only, self.report_first = group, metadata_only, report_first
        self.keep = keep or (lambda obj: obj)
        self.namespaces: list[str | None] = list(namespaces) or [None]
        # namespace -> name -> (resourceVersion, the object: its metadata alone when metadata_only)
        self.index: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
        self.synced: set[str | None] = set()  # namespaces (None: all) whose first list is done
        self._restart: dict[str | None, asyncio.Event] = {}  # set: list again now (see restart)
        self._why: dict[str | None, str] = {}  # why it lists again, for the log ("": it is routine)
        self._progress: dict[str | None, list[str | None]] = {}  # the version each watch is at
        self._relisted: dict[str | None, float] = {}  # when an unmet expectation last made it list again
        self._deferred: dict[str | None, int] = {}  # the latest version to check once that minute is over
        self._watching: set[str | None] = set()  # the watches open (or opening) now

    def objects(self, namespace: str) -> dict[str, dict[str, Any]]:
        """Every object of the namespace this watch has seen (for a metadata-only watch, their metadata)."""
        return {name: obj for name, (_, obj) in self.index.get(namespace, {}).items()}

    def is_synced(self, namespace: str) -> bool:
        """Whether the first list that covers ``namespace`` is done: only then does an empty index mean none."""
        return namespace in self.synced or None in self.synced

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(namespace) for namespace in self.namespaces))

    def restart(self, namespace: str, why: str = "it was behind a fresh read") -> None:
        """List again now, and watch from there: the watch of ``namespace`` was found behind (``why``, said
        in the log; "" when it is only time to make sure it is not). A watch can stay open and bring
        nothing, through a load balancer or from an apiserver whose cache stopped following etcd (seen
        behind HAProxy, across the apiservers' restarts, for ten minutes)."""
        key = self._key(namespace)
        if key in self._restart:
            self._why[key] = why
            self._restart[key].set()

    def expect(self, namespace: str, version: str) -> None:
        """A write of ours to an object this watch follows made ``version``: the watch should be there
        within EXPECT_WITHIN seconds, or it is behind and lists again (at most once in RELIST_AT_MOST).
        etcd's versions grow across all objects, so any event or bookmark at or past ``version`` will do.
        A version that is not a number (not etcd's) is not compared."""
        if version.isdigit():
            asyncio.get_running_loop().call_later(EXPECT_WITHIN, self._check, self._key(namespace), int(version))

    def _check(self, key: str | None, version: int) -> None:
        at = (self._progress.get(key) or [None])[0]
        if key not in self._restart or at is None or not at.isdigit() or int(at) >= version:
            return  # stopped, listing again, or there
        if key not in self._watching:  # waiting to watch again after a failure: it may come back quiet
            self._defer(key, version, EXPECT_WITHIN)
            return
        now = asyncio.get_running_loop().time()
        wait = self._relisted.get(key, -RELIST_AT_MOST) + RELIST_AT_MOST - now
        if wait > 0:  # listed again lately: look once more when that minute is over, not never
            self._defer(key, version, wait)
            return
        self._relisted[key] = now
        self.restart(key or "", f"it has not brought our own write ({version}) in {EXPECT_WITHIN:g}s, only {at}")

    def _defer(self, key: str | None, version: int, wait: float) -> None:
        """Check ``version`` after ``wait``: one timer per watch, for the latest version deferred."""
        pending = self._deferred.get(key)
        self._deferred[key] = max(version, pending or 0)
        if pending is None:
            asyncio.get_running_loop().call_later(wait, self._check_deferred, key)

    def _check_deferred(self, key: str | None) -> None:
        version = self._deferred.pop(key, None)
        if version is not None:
            self._check(key, version)

    def _key(self, namespace: str) -> str | None:
        return namespace if namespace in self.namespaces else None

    async def _follow(self, namespace: str | None) -> None:
        path = f"{self.group}/namespaces/{namespace}/{self.plural}" if namespace else f"{self.group}/{self.plural}"
        what = f"the {self.plural} of {namespace or 'all namespaces'}"
        progress: list[str | None] = [None]  # the version to resume from; None: list again
        self._progress[namespace] = progress
        restart = self._restart[namespace] = asyncio.Event()
        try:
            await self._follow_from(path, what, namespace, progress, restart)
        finally:  # stopped: nothing more to expect of it
            del self._restart[namespace], self._progress[namespace]

    async def _follow_from(self, path: str, what: str, namespace: str | None, progress: list[str | None],
                           restart: asyncio.Event) -> None:
        initial, failures = True, 0
        clock = asyncio.get_running_loop().time
        while True:
            opened = clock()
            try:
                if progress[0] is None:
                    progress[0] = await self._list(path, what, namespace, report=self.report_first or not initial)
                    initial = False
                    self.synced.add(namespace)
                self._watching.add(namespace)
                try:
                    listing_again = await _unless(restart, self._watch_from(path, what, progress))
                finally:
                    self._watching.discard(namespace)
                if listing_again:
                    why = self._why.pop(namespace, "")
                    if why:
                        LOGGER.info(f"watch {what}: {why}: listing again")
                    restart.clear()
                    progress[0] = None
                else:
                    failures = 0
            except ApiError as exc:
                if clock() - opened >= HEALTHY_WATCH:
                    failures = 0
                delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                failures += 1
                (LOGGER.warning if failures > 1 else LOGGER.info)(f"{exc}; watching again in {delay}s")
                progress[0] = None if exc.status == 410 else progress[0]
                await asyncio.sleep(delay)

    async def _watch_from(self, path: str, what: str, progress: list[str | None]) -> None:
        """One watch from ``progress[0]``, keeping it at the last version seen (None: expired, list again)."""
        params = {"watch": "1", "resourceVersion": progress[0] or "", "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(WATCH_TIMEOUT), **self.params}
        async for event in self.api.stream(what, path, params, timeout=WATCH_TIMEOUT + 30,
                                           accept=PARTIAL_METADATA_WATCH if self.metadata_only else None):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:  # expired: list again
                    progress[0] = None
                    return
                raise ApiError("watch", what, obj.get("code", 0), obj.get("reason", ""))
            progress[0] = obj["metadata"]["resourceVersion"]
            if kind != "BOOKMARK":
                self._seen(kind, obj)

    async def _list(self, path: str, what: str, namespace: str | None, report: bool) -> str:
        """List, bring the index up to date, and report what changed since the index was last
        right (unless ``report`` is off: the first list). Returns the list's version."""
        listed = await self.api.request("list", what, "GET", path, params=self.params,
                                        accept=PARTIAL_METADATA if self.metadata_only else None)
        present = set()
        for item in listed.get("items") or []:
            meta = item["metadata"]
            if not self.owns(_namespace(meta)):
                continue
            present.add((_namespace(meta), meta["name"]))
            known = self.index.get(_namespace(meta), {}).get(meta["name"])
            if known is None or known[0] != meta["resourceVersion"]:
                self._remember(item)
                if report:
                    self._report("ADDED" if known is None else "MODIFIED", item, known[1] if known else None)
        for space, secrets in self.index.items():
            if namespace not in (None, space):
                continue
            for name in [n for n in secrets if (space, n) not in present]:
                _, gone = secrets.pop(name)
                if report:
                    self._report("DELETED", gone if not self.metadata_only else {"metadata": gone}, None)
        return listed["metadata"]["resourceVersion"]

    def _seen(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if not self.owns(_namespace(meta)):
            return
        known = self.index.get(_namespace(meta), {}).get(meta["name"])
        if kind == "DELETED":
            self.index.get(_namespace(meta), {}).pop(meta["name"], None)
        else:
            self._remember(obj)
        self._report(kind, obj, known[1] if known else None)

    def _report(self, kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        """Call ``on_event``; a bug in it is logged, and the watch goes on for the other objects."""
        try:
            self.on_event(kind, obj, before)
        except Exception:  # noqa: BLE001  a watch that died of one event would bring no other
            LOGGER.exception(f"handling {kind} of {self.plural} {_namespace(obj['metadata'])}/"
                             f"{obj['metadata'].get('name')} failed")

    def _remember(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        kept = self.keep(meta if self.metadata_only else obj)
        self.index.setdefault(_namespace(meta), {})[meta["name"]] = (meta["resourceVersion"], kept)


async def _unless(event: asyncio.Event, work: Awaitable[None]) -> bool:
    """Await ``work`` unless ``event`` is set first (then ``work`` is cancelled): whether it was."""
    doing, waiting = asyncio.ensure_future(work), asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({doing, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not doing.done():
            doing.cancel()
        await asyncio.gather(doing, waiting, return_exceptions=True)
    if event.is_set() and doing.cancelled():
        return True
    doing.result()  # its ApiError, if any
    return False


def _namespace(meta: dict[str, Any]) -> str:
    """An object's namespace; "" for a cluster-scoped one (a Node, a CSR)."""
    return meta.get("namespace", "")
