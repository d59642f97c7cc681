"""The Kopf handlers: thin triggers over :mod:`clusterpki.issuance`.

Every trigger ends in :func:`reconcile_now`, one reconcile per ClusterPKI at a time:
- creation, any change of spec or annotations, and operator start-up (resume);
- the ClusterPKI's next renewal time, from one fleet-wide :class:`~clusterpki.scheduling.Scheduler`;
- a change to one of its Secrets that the operator did not make (drift), seen by a label-filtered
  watch that writes nothing to Secrets.

With ``--csr-policy``, :mod:`clusterpki.approval` adds the kubelet CSR handlers.
:func:`build_registry` registers them all on a registry of their own for one operator.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import kopf

from clusterpki import certificates, issuance, metrics, secrets, settings
from clusterpki.scheduling import Scheduler
from clusterpki.status import parse_timestamp
from clusterpki.store import ApiError, SecretStore, connection_info, load_configuration

CLUSTERPKI = {"group": settings.GROUP, "version": settings.VERSION, "plural": settings.PLURAL}
Key = tuple[str, str]  # (namespace, name)


class State:
    """What the operator keeps in memory: the latest ClusterPKIs (from the watch), a lock per
    ClusterPKI and a bound on reconciles at once, the scheduler, the resourceVersions of its own
    Secret writes, and, for kubelet CSRs, the policy ClusterPKI, a Node index and the CSRs waiting
    for their Node."""

    def __init__(self, store: SecretStore, csr_policy: Key | None = None) -> None:
        self.store = store
        self.csr_policy = csr_policy
        self.nodes: dict[str, Any] = {}
        self.waiting: dict[str, dict[str, Any]] = {}
        self.first_seen: dict[str, Any] = {}  # CSR name -> when this operator first saw it
        self.policy_cache: tuple[str | None, Any] | None = None  # (resourceVersion, parsed Spec)
        self.deciding: set[str] = set()
        self.bodies: dict[Key, dict[str, Any]] = {}
        self.locks: dict[Key, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        self.slots = asyncio.Semaphore(settings.CONCURRENT_RECONCILES)  # see settings
        self.own_writes: dict[tuple[str, str], str] = {}
        self.in_flight: set[tuple[str, str]] = set()  # Secrets being written right now
        self.held: dict[tuple[str, str], tuple[str, Key]] = {}  # their events that came before the response
        self.dirty: set[Key] = set()  # drift seen since the ClusterPKI's reconcile started
        self.terminating: dict[str, datetime] = {}  # namespace -> when the apiserver said it is being deleted
        self.scheduler = Scheduler(self.scheduled, retry_after=settings.RETRY_DELAY)
        self.task: asyncio.Task | None = None

    async def scheduled(self, key: Any) -> None:
        """Fire a scheduled look: a ClusterPKI by (namespace, name), or a CSR waiting for its Node."""
        if self.csr_policy is not None:
            from clusterpki import (
                approval,  # only operators with a CSR policy schedule CSRs
            )

            if isinstance(key, approval.CsrKey):
                if key.name in self.waiting:
                    await approval.decide(self, self.waiting[key.name], logging.getLogger("clusterpki.csr"))
                return
        body = self.bodies.get(key)
        if body is not None:
            await reconcile_now(self, body, logging.getLogger("clusterpki.scheduled"))


async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    memo.state = State(SecretStore(load_configuration()), memo.get("csr_policy"))
    memo.state.task = asyncio.create_task(memo.state.scheduler.run())


async def stop(memo: kopf.Memo, **_: Any) -> None:
    await memo.state.scheduler.stop(memo.state.task)
    memo.state.store.close()


def login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf logs in with exactly the credentials the Secrets store uses."""
    return kopf.ConnectionInfo(**connection_info(load_configuration()))


def track(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """Keep the latest version of every ClusterPKI for the scheduled reconciles."""
    obj = event["object"]
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    if event["type"] == "DELETED":
        memo.state.bodies.pop(key, None)
        memo.state.scheduler.forget(key)
        metrics.forget(*key)
    else:
        known = key in memo.state.bodies
        memo.state.bodies[key] = obj
        if key == memo.state.csr_policy and not known:
            from clusterpki import approval

            approval.policy_arrived(memo.state)


async def reconcile(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    memo.state.bodies[(body.metadata.namespace, body.metadata.name)] = dict(body)
    retry = await reconcile_now(memo.state, dict(body), logger)
    if retry:
        raise kopf.TemporaryError(retry[0], delay=retry[1])


def drift(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """A managed Secret appeared, changed or went away: look at its ClusterPKI again, unless we wrote it.
    (Kopf's initial listing comes with type None and is ignored.)"""
    if event["type"] not in ("ADDED", "MODIFIED", "DELETED"):
        return
    meta = event["object"]["metadata"]
    key = (meta["namespace"], (meta.get("labels") or {}).get(secrets.LABEL_PKI, ""))
    if key not in memo.state.bodies:
        return
    secret = (meta["namespace"], meta["name"])
    if event["type"] != "DELETED" and secret in memo.state.in_flight:  # judged when the write returns
        memo.state.held[secret] = (meta.get("resourceVersion", ""), key)
        return
    if event["type"] != "DELETED" and memo.state.own_writes.get(secret) == meta.get("resourceVersion"):
        return
    mark_drift(memo.state, key)


def mark_drift(state: State, key: Key) -> None:
    state.dirty.add(key)
    state.scheduler.after(key, settings.DRIFT_DELAY)


async def reconcile_now(state: State, body: Mapping[str, Any], logger: logging.Logger
                        ) -> tuple[str, float] | None:
    """Reconcile one ClusterPKI: issue, patch its status if it changed, report, and schedule the next
    look at its next renewal. Returns a message and a delay when a transient failure should be retried."""
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    async with state.locks[key], state.slots:
        state.dirty.discard(key)  # what drifted until now, this reconcile sees
        body = state.bodies.get(key)  # the freshest version seen, if a newer one arrived meanwhile
        if body is None or _in_terminating_namespace(state, body):  # nothing to issue, no metrics to revive
            state.scheduler.forget(key)
            return None
        try:
            result = await issuance.reconcile(body, RecordingStore(state, state.store), certificates.utcnow())
        except ApiError as exc:
            if not exc.namespace_terminating:
                raise
            _namespace_terminating(state, key, logger)
            return None
        if result.stopped:  # going away: nothing to report, nothing to look at again
            logger.info(result.stopped)
            state.scheduler.forget(key)
            return None
        metrics.observe(key[0], key[1], result.status, result.issued)
        current = body.get("status") or {}
        if any(current.get(field) != value for field, value in result.status.items()):
            try:
                await state.store.patch_status(key[0], key[1], result.status)
            except ApiError as exc:
                if exc.status == 404:  # deleted meanwhile: its DELETED event follows
                    return None
                state.scheduler.after(key, settings.RETRY_DELAY)  # whatever triggered this, try again
                return str(exc), settings.RETRY_DELAY
            state.bodies[key] = {**body, "status": {**current, **result.status}}
        for kind, reason, message in result.events:
            (logger.warning if kind == issuance.WARNING else logger.info)(f"{reason}: {message}")
            try:
                await state.store.post_event(body, kind, reason, message)
            except ApiError as exc:  # an Event is not worth a retry of the whole reconcile
                if exc.namespace_terminating:
                    _namespace_terminating(state, key, logger)
                    return None
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
            return result.retry, result.retry_delay
        return None


def _namespace_terminating(state: State, key: Key, logger: logging.Logger) -> None:
    """The apiserver refused a write because the namespace is being deleted: every ClusterPKI made in
    it so far is going too, so none of them is reconciled again."""
    state.terminating[key[0]] = certificates.utcnow()
    state.scheduler.forget(key)
    logger.info(f"Namespace {key[0]} is being deleted: nothing more is written for its ClusterPKIs")


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


def build_registry(csr_policy: bool) -> kopf.OperatorRegistry:
    """The handlers of one operator. The CSR and Node watches exist only with a CSR policy, so
    without one the operator never even reads a CSR."""
    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(start)
    kopf.on.cleanup(registry=registry)(stop)
    kopf.on.login(registry=registry)(login)
    kopf.on.event(**CLUSTERPKI, registry=registry)(track)
    for decorator in (kopf.on.resume, kopf.on.create, kopf.on.update):
        decorator(**CLUSTERPKI, registry=registry)(reconcile)
    kopf.on.event("", "v1", "secrets", labels={secrets.LABEL_MANAGED_BY: secrets.MANAGER},
                  registry=registry)(drift)
    if csr_policy:
        from clusterpki import approval

        approval.register(registry)
    return registry


def configure(operator_settings: kopf.OperatorSettings) -> None:
    """Kopf settings for this operator: annotations of a prefix of their own for Kopf's bookkeeping
    (Kopf ignores changes to annotations of its prefix, and ``pki.clusterpki.dev/renew`` must not be
    ignored), and a server-side label selector so that only the operator's Secrets are watched."""
    operator_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=settings.KOPF_PREFIX)
    operator_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=settings.KOPF_PREFIX, key="last-handled-configuration")
    operator_settings.persistence.finalizer = f"{settings.GROUP}/finalizer"
    operator_settings.persistence.consistency_timeout = settings.CONSISTENCY_TIMEOUT
    operator_settings.posting.enabled = False  # Events are posted by the store, explicitly
    # No cluster-wide scans of namespaces and CRDs: they need RBAC the operator has no use for, and
    # the namespaces to serve are given exactly (-n) or are all of them (-A).
    operator_settings.scanning.disabled = True
    operator_settings.watching.label_selectors[("v1", "secrets")] = \
        f"{secrets.LABEL_MANAGED_BY}={secrets.MANAGER}"
