"""The controller on Kopf: its start-up and clean-up, the watches that trigger it, as
controller-runtime has them, and the loop that runs observe → decide → apply for one ClusterPKI at a
time.

Each trigger puts the ClusterPKI's key into one fleet-wide
:class:`~clusterpki.kube.scheduling.Scheduler`, which runs :func:`reconcile_now`. The triggers come from
watches of the controller's own (:class:`~clusterpki.kube.informer.Watch`), not Kopf's: Kopf's handling
of a ClusterPKI's event (a deep copy and a diff base) was an eighth of the operator's time issuing a
fleet, and a watch of its own reports in the server's order (see :func:`clusterpki.controller.gates.settling`):
- a ClusterPKI seen for the first time (created, or listed at start-up), a new generation (spec), or a
  change of its annotations (the renew and rotate requests, the grace period);
- its next wake: a renewal, a rotation's next step, a consumer report that turns stale;
- a change to one of its Secrets that the operator did not make (drift), seen by a label-filtered,
  metadata-only watch;
- a change to an agent's report (a Lease);
- a retry after a transient failure.
With ``run --shards``, every watch keeps only the namespaces of this replica's part of the fleet.
Nothing keeps state on the objects (no progress annotations, no finalizer): the status is all there is.

:func:`register` puts the start-up and clean-up on an operator's registry (:mod:`clusterpki.runtime`
composes it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from clusterpki.controller import metrics, settings
from clusterpki.controller.apply import apply, post_events
from clusterpki.controller.decide import decide
from clusterpki.controller.gates import failed
from clusterpki.controller.observe import Observed, observe, view
from clusterpki.controller.plan import Plan, Retry
from clusterpki.controller.reasons import Kind, Reason
from clusterpki.kube import node_reports, reports, resource, secrets
from clusterpki.kube.api import Api, ApiError, load_configuration
from clusterpki.kube.events import EventRecorder
from clusterpki.kube.informer import Watch
from clusterpki.kube.leadership import identity
from clusterpki.kube.parts import WHOLE, Part
from clusterpki.kube.resource import ClusterPKIClient
from clusterpki.kube.scheduling import Scheduler
from clusterpki.kube.secret_client import SecretClient, SecretMeta, meta_of
from clusterpki.pki import times

Key = tuple[str, str]  # (namespace, name)
LOGGER = logging.getLogger("clusterpki.reconcile")


class ObjectLogger(logging.LoggerAdapter):
    """Log lines that name their ClusterPKI: ``ns/name: message``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['object']}: {msg}", kwargs


class State:
    """What the controller keeps in memory: the latest ClusterPKIs (from their watch), a lock per
    ClusterPKI and a bound on reconciles at once, the scheduler, the watches (ClusterPKIs, Secrets, report
    Leases, and Nodes with a CSR policy), all of this replica's part of the fleet alone, and the
    resourceVersions of its own Secret writes (to tell them from drift)."""

    def __init__(self, api: Api, namespaces: list[str], node_policy: Key | None = None, part: Part = WHOLE) -> None:
        self.api, self.holder = api, identity()
        self.secrets, self.clusterpkis, self.events = SecretClient(api), ClusterPKIClient(api), EventRecorder(api)
        self.bodies: dict[Key, dict[str, Any]] = {}
        self.locks: dict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.slots = asyncio.Semaphore(settings.CONCURRENT_RECONCILES)  # see settings
        self.own_writes: dict[tuple[str, str], str] = {}
        self.in_flight: set[tuple[str, str]] = set()  # Secrets being written right now
        self.held: dict[tuple[str, str], tuple[str, Key]] = {}  # their events that came before the response
        self.dirty: set[Key] = set()  # drift seen since the ClusterPKI's reconcile started
        self.terminating: dict[str, datetime] = {}  # namespace -> when the apiserver said it is being deleted
        self.told: dict[Key, frozenset[tuple[str, str]]] = {}  # the Events of each one's last reconcile
        self.scheduler = Scheduler(lambda key: reconcile_now(self, key), retry_after=settings.RETRY_DELAY)
        self.task: asyncio.Task | None = None  # the scheduler's
        # The ClusterPKIs: their events in the server's order, so that when one is first looked at every
        # ClusterPKI made before it is known (the neighbours whose Secret names it must not take)
        self.watch_clusterpkis = Watch(api, namespaces, "", lambda kind, obj, before: track(self, kind, obj, before),
                                       plural=resource.PLURAL, group=resource.GROUP_PATH, metadata_only=False,
                                       report_first=True, keep=_what_asks_for_a_look, owns=part.owns)
        self.informer = Watch(api, namespaces, f"{secrets.LABEL_MANAGED_BY}={secrets.MANAGER}",
                              lambda kind, obj, _: drift(self, kind, obj), keep=_secret_meta, owns=part.owns)
        self.reports = Watch(api, namespaces, reports.selector(), lambda kind, obj, before: reported(self, kind, obj, before),
                             plural="leases", group=reports.LEASES, metadata_only=False, owns=part.owns)
        # Nodes' reports, for the --csr-policy ClusterPKI alone (the cluster the operator runs in, whose
        # nodes' client certificates it signs): node -> (ClusterPKI, revision), metadata alone kept. The
        # first list reports every Node, and a ca rotation does not move before it (see _nodes).
        self.node_policy = node_policy
        self.nodes = Watch(api, [], "", lambda kind, obj, _: node_reported(self, kind, obj), plural="nodes",
                           keep=_node_report_only, report_first=True) if node_policy is not None else None
        self.node_reports: dict[str, str] = {}  # node -> the revision it reports for the policy ClusterPKI
        self.watch: asyncio.Future | None = None  # the watches


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.on.startup(registry=registry)(start)
    kopf.on.cleanup(registry=registry)(stop)


async def start(memo: kopf.Memo, **_: Any) -> None:
    state = memo.state = State(Api(load_configuration(), reload=load_configuration), memo.get("namespaces") or [],
                               node_policy=memo.get("csr_policy"), part=memo.get("part") or WHOLE)
    state.task = asyncio.create_task(state.scheduler.run())
    state.watch = asyncio.gather(state.watch_clusterpkis.run(), state.informer.run(), state.reports.run(),
                                 *([state.nodes.run()] if state.nodes is not None else []))


async def stop(memo: kopf.Memo, **_: Any) -> None:
    state: State = memo.state
    assert state.watch is not None and state.task is not None
    state.watch.cancel()
    await asyncio.gather(state.watch, return_exceptions=True)
    await state.scheduler.stop(state.task)
    await state.api.close()


def track(state: State, kind: str, obj: dict[str, Any], before: Mapping[str, Any] | None) -> None:
    """Keep the latest version of every ClusterPKI, and reconcile it when it asks for a look (the
    watch's first list reports each one: every ClusterPKI is looked at once at start-up). Called on the
    event loop, by the watch, in the server's order, with the version the watch saw before (``before``).

    A change is judged against that version, never against the body kept: the response to the
    operator's own status patch may already hold a change someone made a moment before (a new
    rotate-ca annotation), and the watch's event for that change would then look like nothing new."""
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    if kind == "DELETED":
        state.bodies.pop(key, None)
        state.told.pop(key, None)
        state.dirty.discard(key)
        state.scheduler.forget(key)
        metrics.forget(*key)
        return
    remember(state, key, obj)
    if asks_for_a_look(before, obj):
        mark_drift(state, key, delay=0)  # a reconcile running now must not swallow it (see _schedule)


def _secret_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """What the Secret watch's index keeps of a Secret's metadata: what drift and the names of a namespace's
    Secrets need (not its managedFields, a third of a fleet's index)."""
    return {key: meta[key] for key in ("name", "namespace", "resourceVersion", "labels", "creationTimestamp")
            if key in meta}


def _what_asks_for_a_look(obj: dict[str, Any]) -> dict[str, Any]:
    """What the ClusterPKI watch's own index keeps: what :func:`asks_for_a_look` compares, and the version
    that tells a relist's changes (the bodies are kept once, in ``State.bodies``)."""
    meta = obj["metadata"]
    return {"metadata": {field: meta[field] for field in ("namespace", "name", "resourceVersion", "uid", "generation",
                                                          "annotations") if field in meta}}


def remember(state: State, key: Key, obj: dict[str, Any]) -> None:
    """Keep ``obj`` as the latest version of the ClusterPKI, unless a later one is kept already: the
    operator's own status patch returns a version its watch may bring an older one after. (etcd's
    resourceVersions grow; versions that are not numbers are not compared.)"""
    kept = state.bodies.get(key)
    new, old = _version(obj), _version(kept) if kept is not None else None
    if new is None or old is None or new >= old:
        obj["metadata"].pop("managedFields", None)  # never read, and as large as the status it tracks
        state.bodies[key] = obj


def _version(obj: Mapping[str, Any]) -> int | None:
    version = str(obj["metadata"].get("resourceVersion", ""))
    return int(version) if version.isdigit() else None


def asks_for_a_look(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether a ClusterPKI's new version needs a reconcile: first sight, another object of the same name
    (deleted and made again while the watch was away: a relist reports it as modified), a new generation
    (its spec changed), or other annotations. The operator's own status patches change none of these."""
    if previous is None:
        return True
    before, after = previous["metadata"], current["metadata"]
    return before.get("uid") != after.get("uid") or before.get("generation") != after.get("generation") or \
        (before.get("annotations") or {}) != (after.get("annotations") or {})


def drift(state: State, kind: str, obj: Mapping[str, Any]) -> None:
    """A managed Secret appeared, changed or went away: look at its ClusterPKI again, unless we wrote it."""
    meta = obj["metadata"]
    key = (meta["namespace"], (meta.get("labels") or {}).get(secrets.LABEL_PKI, ""))
    if key not in state.bodies:
        return
    secret = (meta["namespace"], meta["name"])
    if kind != "DELETED" and secret in state.in_flight:  # judged when the write returns
        state.held[secret] = (meta.get("resourceVersion", ""), key)
        return
    if kind != "DELETED" and state.own_writes.get(secret) == meta.get("resourceVersion"):
        return
    mark_drift(state, key)


def reported(state: State, kind: str, obj: Mapping[str, Any], before: Mapping[str, Any] | None) -> None:
    """An agent's report changed: a rotation waiting for it may move on, and the status shows it. A
    renewal alone (its heartbeat) changes nothing to look at: the report's staleness has a wake of its own."""
    meta = obj["metadata"]
    said = (meta.get("annotations") or {}, (obj.get("spec") or {}).get("holderIdentity"))
    if kind == "MODIFIED" and before is not None and \
            said == ((before["metadata"].get("annotations") or {}), (before.get("spec") or {}).get("holderIdentity")):
        return
    for key in [k for k in state.bodies if k[0] == meta["namespace"] and
                meta["name"].startswith(reports.lease_name(k[1], ""))]:
        mark_drift(state, key)


def node_reported(state: State, kind: str, obj: Mapping[str, Any]) -> None:
    """A Node's report for the policy ClusterPKI changed (or the Node went): look at it again a moment
    later, so that a rotation's thousands of reports make a few looks, not one each. A report for any
    other ClusterPKI is not kept: any node may annotate its own Node with any name."""
    name = obj["metadata"]["name"]
    found = None if kind == "DELETED" else node_reports.of_node(obj["metadata"])
    after = found.revision if found is not None and found.key == state.node_policy else None
    before = state.node_reports.pop(name, None)
    if after is not None:
        state.node_reports[name] = after
    if before != after and state.node_policy in state.bodies:
        state.scheduler.after(state.node_policy, settings.NODE_REPORT_DELAY)


def _node_report_only(meta: dict[str, Any]) -> dict[str, Any]:
    """What the Node watch's index keeps of a Node's metadata: its name, version and report."""
    report = (meta.get("annotations") or {}).get(node_reports.ANNOTATION)
    return {"name": meta["name"], "resourceVersion": meta["resourceVersion"],
            **({"annotations": {node_reports.ANNOTATION: report}} if report else {})}


def _nodes(state: State, key: Key) -> dict[str, str] | None:
    """The nodes' reports for ``key``: only the policy ClusterPKI's count (any node may annotate its own
    Node with any ClusterPKI's name); None until the Node watch has listed every Node once."""
    if state.nodes is None or key != state.node_policy:
        return {}
    return dict(state.node_reports) if state.nodes.is_synced("") else None


def mark_drift(state: State, key: Key, delay: float | None = None) -> None:
    """Look at ``key`` again after ``delay`` (DRIFT_DELAY by default), and after a reconcile running now."""
    state.dirty.add(key)
    state.scheduler.after(key, settings.DRIFT_DELAY if delay is None else delay)


async def reconcile_now(state: State, key: Key) -> None:
    """Observe, decide and apply for one ClusterPKI, report what happened, and schedule its next look."""
    logger = ObjectLogger(LOGGER, {"object": f"{key[0]}/{key[1]}"})
    async with state.locks[key], state.slots:
        state.dirty.discard(key)  # what drifted until now, this reconcile sees
        body = state.bodies.get(key)  # the freshest version seen
        if body is None or _in_terminating_namespace(state, body):  # nothing to issue, no metrics to revive
            state.scheduler.forget(key)
            return
        try:
            plan = await _reconcile(state, key, body, logger)
        except ApiError as exc:
            if not exc.namespace_terminating:
                raise
            _namespace_terminating(state, key, logger)
            return
        if plan is None:  # going away: nothing to report, nothing to look at again
            state.scheduler.forget(key)
            return
        _schedule(state, key, plan)


async def _reconcile(state: State, key: Key, body: dict[str, Any], logger: logging.LoggerAdapter) -> Plan | None:
    """The plan carried out (or, when carrying it out failed, the failure reported instead); None when the
    ClusterPKI is going away."""
    clients = Clients(state)
    seen, plan = await _decided(state, key, body, clients)
    if plan.stop:
        logger.info(plan.stop)
        metrics.RECONCILES.labels("stopped").inc()
        return None
    applied = await apply(plan, seen.meta, clients, seen.status)
    if applied.failure is not None:
        plan = failed(seen, times.now(), *applied.failure)
        applied = await apply(plan, seen.meta, clients, seen.status)
    if applied.gone:  # deleted meanwhile: nothing to report, and its DELETED event follows
        return None
    if applied.stored is not None and key in state.bodies:
        remember(state, key, dict(applied.stored))
    await _report(seen, plan, logger, clients, state.told.get(key, frozenset()))
    state.told[key] = frozenset((e.reason.value, e.message) for e in plan.events)
    return plan


async def _decided(state: State, key: Key, body: dict[str, Any], clients: Clients) -> tuple[Observed, Plan]:
    """What was observed, and the plan for it; a read that failed is the plan to report it."""
    neighbours = [b for (namespace, _), b in state.bodies.items() if namespace == key[0] and b is not body]
    halves = False
    while True:
        try:
            seen = await observe(clients, body, neighbours, await _reports(state, key), state.holder,
                                 _none_stored(state, key), _nodes(state, key), halves)
        except ApiError as exc:
            if exc.namespace_terminating:
                raise
            seen = view(body, ())
            return seen, failed(seen, times.now(), Reason.API_ERROR, str(exc), Retry(settings.RETRY_DELAY, str(exc)))
        plan = await asyncio.to_thread(decide, seen, times.now())  # new keys: off the event loop
        if not plan.read_halves or halves:
            return seen, plan
        halves = True


async def _report(seen: Observed, plan: Plan, logger: logging.LoggerAdapter, clients: Clients,
                  told: frozenset[tuple[str, str]]) -> None:
    """Metrics, a log line per Event (a repeat of the last reconcile's, or of the Ready condition, at debug
    level: what persists is one line, and one Event series), and the Events."""
    metrics.observe(seen.meta.namespace, seen.meta.name, plan.status or {}, plan.issued)
    before = next((c for c in seen.conditions if c.get("type") == "Ready"), {})
    for event in plan.events:
        said = (event.reason.value, event.message)
        repeat = said in told or (before.get("reason"), before.get("message")) == said
        level = logging.DEBUG if repeat else logging.WARNING if event.kind is Kind.WARNING else logging.INFO
        logger.log(level, f"{event.reason.value}: {event.message}")
    for event, exc in await post_events(plan.events, seen.meta, clients):
        logger.warning(f"Could not post the {event.reason.value} Event: {exc}")


def _schedule(state: State, key: Key, plan: Plan) -> None:
    """The next look: the plan's wake, a retry, and drift seen while it ran."""
    state.scheduler.replace(key, plan.wake_at.timestamp() if plan.wake_at else None)
    if plan.retry is not None:
        state.scheduler.after(key, plan.retry.delay)
    if key in state.dirty:  # drifted while this reconcile ran: replace() must not swallow that
        state.scheduler.after(key, settings.DRIFT_DELAY)


async def _reports(state: State, key: Key) -> list[reports.Report]:
    """The agents' reports of ``key``, from the watch; read afresh when one of them looks stale there. A
    watch can go quiet without breaking (through a load balancer, across an apiserver's restart), and a
    report called stale stops counting as a consumer: only a fresh read may say so."""
    prefix = reports.lease_name(key[1], "")
    found = [reports.Report.from_lease(lease) for name, lease in state.reports.objects(key[0]).items()
             if name.startswith(prefix)]
    now = times.now()
    if all(report.fresh(now) for report in found if report.renewed is not None):
        return found
    listed = await state.api.request("list", f"the report Leases of {key[0]}", "GET", reports.lease_path(key[0]),
                                     params={"labelSelector": reports.selector()})
    fresh = [reports.Report.from_lease(lease) for lease in listed.get("items") or []
             if lease["metadata"]["name"].startswith(prefix)]
    if {r.lease: r.renewed for r in fresh} != {r.lease: r.renewed for r in found}:
        LOGGER.info(f"{key[0]}/{key[1]}: the report watch was behind a fresh read of the Leases")
        state.reports.restart(key[0])
    return fresh


def _none_stored(state: State, key: Key) -> bool:
    """Whether the watch, synced, has seen no Secret of this ClusterPKI."""
    if not state.informer.is_synced(key[0]):
        return False
    return not any((meta.get("labels") or {}).get(secrets.LABEL_PKI) == key[1]
                   for meta in state.informer.objects(key[0]).values())


def _namespace_terminating(state: State, key: Key, logger: logging.LoggerAdapter) -> None:
    """The apiserver refused a write because the namespace is being deleted: every ClusterPKI made in
    it so far is going too, so none of them is reconciled again."""
    state.terminating[key[0]] = times.now()
    state.scheduler.forget(key)
    logger.info(f"Namespace {key[0]} is being deleted: nothing more is written for its ClusterPKIs")
    metrics.RECONCILES.labels("stopped").inc()


def _in_terminating_namespace(state: State, body: Mapping[str, Any]) -> bool:
    """Whether ``body`` was made before its namespace was seen being deleted (a ClusterPKI made later
    lives in a new namespace of the same name)."""
    seen = state.terminating.get(body["metadata"]["namespace"])
    created = body["metadata"].get("creationTimestamp")
    return seen is not None and created is not None and times.parse_time(created) <= seen


class Clients:
    """The reads and writes of one reconcile: the Secrets (remembering the resourceVersion of each one
    it writes, so that the drift watch can tell the operator's own writes from someone else's), the
    ClusterPKI's status, and Events. The watch of what it writes is told to expect each write (see
    :meth:`~clusterpki.kube.informer.Watch.expect`): one that stays open and quiet is found behind."""

    def __init__(self, state: State) -> None:
        self._state = state

    async def list(self, namespace: str, pki_name: str) -> list[dict[str, Any]]:
        return await self._state.secrets.list(namespace, pki_name)

    async def names(self, namespace: str) -> dict[str, SecretMeta]:
        """The names of every Secret of the namespace: the operator's own from its watch, anyone else's
        from a metadata-only LIST of the Secrets clusterpki does not manage."""
        strangers = await self._state.secrets.names(namespace, f"{secrets.LABEL_MANAGED_BY}!={secrets.MANAGER}")
        own = {name: meta_of(meta) for name, meta in self._state.informer.objects(namespace).items()}
        return {**own, **strangers}

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._state.secrets.get(namespace, name)

    async def clusterpki(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._state.clusterpkis.get(namespace, name)

    async def create(self, secret: dict[str, Any]) -> dict[str, Any]:
        return await self._write(self._state.secrets.create, secret)

    async def replace(self, secret: dict[str, Any]) -> dict[str, Any]:
        return await self._write(self._state.secrets.replace, secret)

    async def delete(self, namespace: str, name: str, resource_version: str | None = None) -> None:
        await self._state.secrets.delete(namespace, name, resource_version)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]:
        stored = await self._state.clusterpkis.patch_status(namespace, name, status, resource_version)
        self._state.watch_clusterpkis.expect(namespace, str(stored["metadata"].get("resourceVersion", "")))
        return stored

    async def post(self, involved: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        await self._state.events.post(involved, kind, reason, message)

    async def _write(self, method: Any, secret: dict[str, Any]) -> dict[str, Any]:
        name = (secret["metadata"]["namespace"], secret["metadata"]["name"])
        self._state.in_flight.add(name)
        written = None
        try:
            written = await method(secret)
            self._state.own_writes[name] = written["metadata"]["resourceVersion"]
            self._state.informer.expect(name[0], written["metadata"]["resourceVersion"])
            return written
        finally:
            self._state.in_flight.discard(name)
            held = self._state.held.pop(name, None)
            if held is not None and (written is None or held[0] != written["metadata"]["resourceVersion"]):
                mark_drift(self._state, held[1])  # someone else's change raced with ours
