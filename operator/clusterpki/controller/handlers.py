"""The Kopf handlers: thin triggers over :mod:`clusterpki.controller.issuance`, as controller-runtime has them.

Kopf's event handlers only watch; each trigger puts the ClusterPKI's key into one fleet-wide
:class:`~clusterpki.kube.scheduling.Scheduler`, which runs :func:`reconcile_now`, one reconcile per
ClusterPKI at a time. The triggers:
- a ClusterPKI seen for the first time (created, or listed at start-up), a new generation (spec), or a
  change of its annotations (the renew and rotate requests, the grace period);
- its next renewal time, or the next step of a CA rotation;
- a change to one of its Secrets that the operator did not make (drift), seen by a label-filtered
  :class:`~clusterpki.kube.informer.SecretWatch` (Kopf would deep-copy every Secret of every event);
- a retry after a transient failure.
Kopf keeps no state on the objects (no progress annotations, no finalizer): a reconcile is a pure
function of the ClusterPKI and its Secrets, so nothing needs remembering between runs.

:func:`register` puts them on an operator's registry (:mod:`clusterpki.runtime` composes it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from clusterpki.controller import issuance, metrics, settings
from clusterpki.controller.status import parse_timestamp
from clusterpki.kube import reports, resource, secrets
from clusterpki.kube.api import ApiError, load_configuration
from clusterpki.kube.informer import SecretWatch
from clusterpki.kube.scheduling import Scheduler
from clusterpki.kube.store import SecretStore
from clusterpki.pki import certificates

CLUSTERPKI = {"group": resource.GROUP, "version": resource.VERSION, "plural": resource.PLURAL}
Key = tuple[str, str]  # (namespace, name)
LOGGER = logging.getLogger("clusterpki.reconcile")


class ObjectLogger(logging.LoggerAdapter):
    """Log lines that name their ClusterPKI: ``ns/name: message``."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.extra['object']}: {msg}", kwargs


class State:
    """What the controller keeps in memory: the latest ClusterPKIs (from the watch), a lock per
    ClusterPKI and a bound on reconciles at once, the scheduler, and the resourceVersions of its own
    Secret writes."""

    def __init__(self, store: SecretStore) -> None:
        self.store = store
        self.bodies: dict[Key, dict[str, Any]] = {}
        self.locks: dict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.slots = asyncio.Semaphore(settings.CONCURRENT_RECONCILES)  # see settings
        self.own_writes: dict[tuple[str, str], str] = {}
        self.in_flight: set[tuple[str, str]] = set()  # Secrets being written right now
        self.held: dict[tuple[str, str], tuple[str, Key]] = {}  # their events that came before the response
        self.dirty: set[Key] = set()  # drift seen since the ClusterPKI's reconcile started
        self.terminating: dict[str, datetime] = {}  # namespace -> when the apiserver said it is being deleted
        self.scheduler = Scheduler(lambda key: reconcile_now(self, key), retry_after=settings.RETRY_DELAY)
        self.task: asyncio.Task | None = None  # the scheduler's
        self.informer: SecretWatch | None = None
        self.consumers: SecretWatch | None = None  # of the agents' reports (ConfigMaps)
        self.watch: asyncio.Future | None = None  # both watches


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.on.startup(registry=registry)(start)
    kopf.on.cleanup(registry=registry)(stop)
    kopf.on.event(**CLUSTERPKI, registry=registry)(track)


async def start(memo: kopf.Memo, **_: Any) -> None:
    state = memo.state = State(SecretStore(load_configuration()))
    state.task = asyncio.create_task(state.scheduler.run())
    state.informer = SecretWatch(state.store, memo.get("namespaces") or [],
                                 f"{secrets.LABEL_MANAGED_BY}={secrets.MANAGER}", lambda kind, obj: drift(state, kind, obj))
    state.consumers = SecretWatch(state.store, memo.get("namespaces") or [],
                                  f"{secrets.LABEL_MANAGED_BY}={reports.AGENT}", lambda kind, obj: reported(state, obj),
                                  plural="configmaps")
    state.watch = asyncio.gather(state.informer.run(), state.consumers.run())


async def stop(memo: kopf.Memo, **_: Any) -> None:
    state: State = memo.state
    state.watch.cancel()
    await asyncio.gather(state.watch, return_exceptions=True)
    await state.scheduler.stop(state.task)
    await state.store.close()


def track(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Keep the latest version of every ClusterPKI, and reconcile it when it asks for a look.
    (Kopf's initial listing at start-up comes with type None: every ClusterPKI is looked at once.)"""
    state: State = memo.state
    obj = event["object"]
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    if event["type"] == "DELETED":
        state.bodies.pop(key, None)
        state.scheduler.forget(key)
        metrics.forget(*key)
        return
    previous = state.bodies.get(key)
    state.bodies[key] = obj
    if asks_for_a_look(previous, obj):
        state.scheduler.after(key, 0)


def asks_for_a_look(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """Whether a ClusterPKI's new version needs a reconcile: first sight, a new generation (its spec
    changed), or other annotations. The operator's own status patches change neither."""
    if previous is None:
        return True
    before, after = previous["metadata"], current["metadata"]
    return before.get("generation") != after.get("generation") or \
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


def reported(state: State, obj: Mapping[str, Any]) -> None:
    """An agent reported what it runs: a rotation waiting for it may move on, and the status shows it."""
    meta = obj["metadata"]
    key = (meta["namespace"], (meta.get("labels") or {}).get(secrets.LABEL_PKI, ""))
    if key in state.bodies:
        mark_drift(state, key)


def mark_drift(state: State, key: Key) -> None:
    state.dirty.add(key)
    state.scheduler.after(key, settings.DRIFT_DELAY)


async def reconcile_now(state: State, key: Key) -> None:
    """Reconcile one ClusterPKI: issue, patch its status if it changed, report, and schedule the next
    look: at its next renewal, at the next step of a rotation, or after a transient failure."""
    logger = ObjectLogger(LOGGER, {"object": f"{key[0]}/{key[1]}"})
    async with state.locks[key], state.slots:
        state.dirty.discard(key)  # what drifted until now, this reconcile sees
        body = state.bodies.get(key)  # the freshest version seen
        if body is None or _in_terminating_namespace(state, body):  # nothing to issue, no metrics to revive
            state.scheduler.forget(key)
            return
        try:
            neighbours = [b for (namespace, _), b in state.bodies.items() if namespace == key[0] and b is not body]
            result = await issuance.reconcile(body, RecordingStore(state, state.store), certificates.utcnow(),
                                              neighbours)
        except ApiError as exc:
            if not exc.namespace_terminating:
                raise
            _namespace_terminating(state, key, logger)
            return
        if result.stopped:  # going away: nothing to report, nothing to look at again
            logger.info(result.stopped)
            metrics.RECONCILES.labels("stopped").inc()
            state.scheduler.forget(key)
            return
        metrics.observe(key[0], key[1], result.status, result.issued)
        current = body.get("status") or {}
        if any(current.get(field) != value for field, value in result.status.items()):
            try:
                await state.store.patch_status(key[0], key[1], result.status)
            except ApiError as exc:
                if exc.status != 404:  # (404: deleted meanwhile, and its DELETED event follows)
                    logger.warning(f"Could not record the status, retrying: {exc}")
                    state.scheduler.after(key, settings.RETRY_DELAY)
                return
            state.bodies[key] = {**body, "status": {**current, **result.status}}
        before = next((c for c in current.get("conditions") or [] if c.get("type") == "Ready"), {})
        for kind, reason, message in result.events:
            repeat = (before.get("reason"), before.get("message")) == (reason, message)  # counted on its Event
            level = logging.DEBUG if repeat else logging.WARNING if kind == issuance.WARNING else logging.INFO
            logger.log(level, f"{reason}: {message}")
            try:
                await state.store.post_event(body, kind, reason, message)
            except ApiError as exc:  # an Event is not worth a retry of the whole reconcile
                if exc.namespace_terminating:
                    _namespace_terminating(state, key, logger)
                    return
                logger.warning(f"Could not post the {reason} Event: {exc}")
        next_renewal = result.status.get("nextRenewal")
        when = parse_timestamp(next_renewal).timestamp() if next_renewal else None
        if when is not None and when <= certificates.utcnow().timestamp():  # due, yet not done: no busy loop
            when = certificates.utcnow().timestamp() + settings.RETRY_DELAY
        state.scheduler.replace(key, when)
        if key in state.dirty:  # drifted while this reconcile ran: replace() must not swallow that
            state.scheduler.after(key, settings.DRIFT_DELAY)
        if result.wake_at is not None:  # the next step of a CA rotation
            state.scheduler.at(key, result.wake_at.timestamp())
        if result.retry:
            state.scheduler.after(key, result.retry_delay)


def _namespace_terminating(state: State, key: Key, logger: logging.LoggerAdapter) -> None:
    """The apiserver refused a write because the namespace is being deleted: every ClusterPKI made in
    it so far is going too, so none of them is reconciled again."""
    state.terminating[key[0]] = certificates.utcnow()
    state.scheduler.forget(key)
    logger.info(f"Namespace {key[0]} is being deleted: nothing more is written for its ClusterPKIs")
    metrics.RECONCILES.labels("stopped").inc()


def _in_terminating_namespace(state: State, body: Mapping[str, Any]) -> bool:
    """Whether ``body`` was made before its namespace was seen being deleted (a ClusterPKI made later
    lives in a new namespace of the same name)."""
    seen = state.terminating.get(body["metadata"]["namespace"])
    created = body["metadata"].get("creationTimestamp")
    return seen is not None and created is not None and parse_timestamp(created) <= seen


class RecordingStore:
    """The store, remembering the resourceVersion of each Secret it writes, so that the drift watch
    can tell the operator's own writes from someone else's."""

    def __init__(self, state: State, store: SecretStore) -> None:
        self._state, self._store = state, store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def create(self, secret: secrets.Secret) -> secrets.Secret:
        return await self._write(self._store.create, secret)

    async def replace(self, secret: secrets.Secret) -> secrets.Secret:
        return await self._write(self._store.replace, secret)

    async def reports(self, namespace: str, pki_name: str) -> list[dict[str, Any]]:
        """The agents' reports on this ClusterPKI; no request when the watch has seen none."""
        assert self._state.consumers is not None
        if not any(labels.get(secrets.LABEL_PKI) == pki_name
                   for labels in self._state.consumers.names(namespace).values()):
            return []
        return await self._store.reports(namespace, pki_name)

    async def names(self, namespace: str) -> dict[str, dict[str, str]]:
        """The name and labels of every Secret of the namespace: the operator's own from its watch,
        anyone else's from a metadata-only LIST of the Secrets clusterpki does not manage."""
        assert self._state.informer is not None
        strangers = await self._store.names(namespace, f"{secrets.LABEL_MANAGED_BY}!={secrets.MANAGER}")
        return {**self._state.informer.names(namespace), **strangers}

    async def _write(self, method: Any, secret: secrets.Secret) -> secrets.Secret:
        name = (secret["metadata"]["namespace"], secret["metadata"]["name"])
        self._state.in_flight.add(name)
        written = None
        try:
            written = await method(secret)
            self._state.own_writes[name] = written["metadata"]["resourceVersion"]
            return written
        finally:
            self._state.in_flight.discard(name)
            held = self._state.held.pop(name, None)
            if held is not None and (written is None or held[0] != written["metadata"]["resourceVersion"]):
                mark_drift(self._state, held[1])  # someone else's change raced with ours
