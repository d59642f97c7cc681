"""apply: the only code that writes what a plan decided.

In order: the claim (a status patch on the version observed, so that of two writers only one goes on),
the CA Secrets, the other Secrets, the status (the record committed, the claim cleared), then the
Events. A failure stops it where it is; what was written is recognised by the claim next time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from clusterpki.controller import settings
from clusterpki.controller.observe import Meta
from clusterpki.controller.plan import Plan, Retry, Write, WriteKind
from clusterpki.controller.reasons import Event, Reason
from clusterpki.kube.api import ApiError


RECREATE_ATTEMPTS, RECREATE_PAUSE = 20, 0.25  # a just-deleted Secret's create is tried for five seconds


class Writes(Protocol):
    """What apply writes through (the Secret client, the ClusterPKI client and the Event recorder)."""

    async def create(self, secret: dict[str, Any]) -> dict[str, Any]: ...

    async def replace(self, secret: dict[str, Any]) -> dict[str, Any]: ...

    async def delete(self, namespace: str, name: str, resource_version: str | None = None) -> None: ...

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]: ...

    async def post(self, involved: Mapping[str, Any], kind: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class Applied:
    """What became of a plan: the ClusterPKI as stored after its status patch (None: not patched), or
    the failure to report instead."""

    stored: Mapping[str, Any] | None = None
    failure: tuple[Reason, str, Retry] | None = None
    gone: bool = False  # the ClusterPKI was deleted meanwhile (its DELETED event follows)


async def apply(plan: Plan, meta: Meta, writes: Writes, previous: Mapping[str, Any]) -> Applied:
    """Carry out ``plan`` for the ClusterPKI ``meta``, whose status was ``previous``. Raises ApiError only
    when the namespace is being deleted (which concerns every ClusterPKI in it)."""
    try:
        version = await _claim(plan, meta, writes)
        await _secrets(plan.writes, meta, writes)
        stored = await _commit(plan, meta, writes, previous, version)
    except _Gone:
        return Applied(gone=True)
    except ApiError as exc:
        if exc.namespace_terminating:
            raise
        return Applied(failure=_failure(exc))
    return Applied(stored=stored)


async def post_events(events: tuple[Event, ...], meta: Meta, writes: Writes) -> list[tuple[Event, ApiError]]:
    """Post each Event; the ones that could not be posted, with why (an Event is not worth a retry)."""
    failed = []
    for event in events:
        try:
            await writes.post(meta.involved(), event.kind.value, event.reason.value, event.message)
        except ApiError as exc:
            if exc.namespace_terminating:
                raise
            failed.append((event, exc))
    return failed


def changes(previous: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Whether storing ``status`` (each field's whole new value; None: no such field) over ``previous``
    changes anything."""
    return any(previous.get(field) != value for field, value in status.items())


def merge_patch(previous: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch that makes each field of ``wanted`` exactly its value: a merge patch merges nested
    mappings, so a key ``previous`` has and ``wanted`` has not is set to None (deleted)."""
    patch: dict[str, Any] = {}
    for field, value in wanted.items():
        before = previous.get(field)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[field] = {**{k: None for k in before if k not in value}, **merge_patch(before, value)}
        else:
            patch[field] = value
    return patch


class _Gone(Exception):
    """The ClusterPKI was deleted meanwhile: its status cannot be written."""


async def _patch_status(writes: Writes, meta: Meta, status: dict[str, Any], version: str | None) -> dict[str, Any]:
    try:
        return await writes.patch_status(meta.namespace, meta.name, status, version)
    except ApiError as exc:
        if exc.status == 404:
            raise _Gone() from None
        raise


async def _claim(plan: Plan, meta: Meta, writes: Writes) -> str | None:
    """The resourceVersion the status must still have when it is committed."""
    if plan.claim is None:
        return plan.precondition
    stored = await _patch_status(writes, meta, {"claim": plan.claim.to_status()}, plan.precondition)
    return stored["metadata"]["resourceVersion"]


async def _secrets(planned: tuple[Write, ...], meta: Meta, writes: Writes) -> None:
    first = [w for w in planned if w.first]
    await asyncio.gather(*(_write(w, meta, writes) for w in first))
    await asyncio.gather(*(_write(w, meta, writes) for w in planned if not w.first))


async def _write(write: Write, meta: Meta, writes: Writes) -> None:
    secret = write.secret
    version = secret["metadata"].get("resourceVersion")
    if write.unblock is not None:  # someone else's finalizer would keep it: off first
        version = (await writes.replace(write.unblock))["metadata"]["resourceVersion"]
    if write.kind is WriteKind.CREATE:
        await writes.create(secret)
    elif write.kind is WriteKind.REPLACE:
        await writes.replace({**secret, "metadata": {**secret["metadata"], "resourceVersion": version}})
    elif write.kind is WriteKind.DELETE:
        await _delete(writes, meta.namespace, write.name, version)
    else:  # RECREATE: the API keeps a Secret's type, and an immutable one's data
        await _delete(writes, meta.namespace, write.name, version)
        await _create_again(writes, {**secret, "metadata": {k: v for k, v in secret["metadata"].items()
                                                            if k != "resourceVersion"}})


async def _delete(writes: Writes, namespace: str, name: str, version: str | None) -> None:
    try:
        await writes.delete(namespace, name, version)
    except ApiError as exc:
        if exc.status != 404:  # gone already (it was being deleted, and held only by the finalizer)
            raise


async def _create_again(writes: Writes, secret: dict[str, Any]) -> None:
    """Create a Secret just deleted: the material is only in memory now, so a create that finds the old
    one still there is tried again for a few seconds before giving up."""
    for attempt in range(RECREATE_ATTEMPTS):
        try:
            await writes.create(secret)
            return
        except ApiError as exc:
            if exc.status != 409 or attempt == RECREATE_ATTEMPTS - 1:
                raise
            await asyncio.sleep(RECREATE_PAUSE)


async def _commit(plan: Plan, meta: Meta, writes: Writes, previous: Mapping[str, Any],
                  version: str | None) -> Mapping[str, Any] | None:
    if plan.status is None or not changes(previous, plan.status):
        return None
    return await _patch_status(writes, meta, merge_patch(previous, plan.status), version)


def _failure(exc: ApiError) -> tuple[Reason, str, Retry]:
    if exc.status == 409:  # another writer (e.g. a second replica, or a user's annotation) got there first
        message = f"{exc}; another writer changed the ClusterPKI or a Secret, retrying"
        return Reason.CONFLICT, message, Retry(settings.CONFLICT_RETRY_DELAY, message)
    return Reason.API_ERROR, str(exc), Retry(settings.RETRY_DELAY, str(exc))
