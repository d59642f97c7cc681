"""One ``coordination.k8s.io/v1`` Lease, as one holder takes, renews and gives it back: the project's only
Lease code, under the operator's leader election (:mod:`clusterpki.kube.leadership`) and the agents'
restart turns (:mod:`clusterpki.kube.turns`).

It follows client-go's ``resourcelock``: every write is a PUT of the object as read, resourceVersion
included, so of two holders writing at once the API server accepts one and answers the other 409. A
Lease is held by its ``holderIdentity`` until ``leaseDurationSeconds`` after its ``renewTime``; a
change of holder sets ``acquireTime`` and counts one more ``leaseTransitions``. An existing Lease is
only read and updated, never created again, so an administrator may create it and grant holders no
``create``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from clusterpki.kube.api import Api, ApiError
from clusterpki.pki import times

T = TypeVar("T")
API_VERSION = "coordination.k8s.io/v1"
RIVAL = "another holder"  # who won a race we only know we lost


class Lease:
    """The Lease ``namespace/name`` as ``identity`` takes and holds it; ``object`` is the Lease as last
    read or written.

    ``duration`` is the ``leaseDurationSeconds`` written, and the one assumed for a Lease without it.
    ``timeout`` bounds each request, so that a hung connection is a failed attempt, not a stuck holder;
    None leaves the transport's own."""

    def __init__(self, api: Api, namespace: str, name: str, identity: str, duration: int,
                 timeout: float | None = None) -> None:
        self.api, self.namespace, self.name, self.identity = api, namespace, name, identity
        self.duration, self.timeout = duration, timeout
        self.what = f"Lease {namespace}/{name}"
        self.collection = f"/apis/{API_VERSION}/namespaces/{namespace}/leases"
        self.path = f"{self.collection}/{name}"
        self.object: dict[str, Any] | None = None

    def holder(self, at: datetime | None = None) -> str | None:
        """Who holds the Lease as last seen, at ``at`` (now by default): nobody once it is released,
        or lapsed past its duration after its last renewal."""
        spec = _spec(self.object)
        holder, renewed = spec.get("holderIdentity"), spec.get("renewTime")
        if not holder or not renewed:
            return None
        lapses = times.parse_time(renewed) + timedelta(seconds=spec.get("leaseDurationSeconds") or self.duration)
        return holder if lapses > (at or times.now()) else None

    async def read(self) -> dict[str, Any] | None:
        """The Lease as it is now; None when it does not exist."""
        self.object = await self._bounded("get", self.api.get_or_none(self.what, self.path))
        return self.object

    async def take(self) -> str | None:
        """Take the Lease unless another holds it: None once it is ours, else who holds it (and then
        nothing is written, so a holder-to-be that waits only reads)."""
        lease = await self.read()
        at = times.now()
        holder = self.holder(at)
        if holder not in (None, self.identity):
            return holder
        try:
            if lease is None:
                spec = {**self._taken({}, at), "leaseTransitions": 0}  # a new Lease has seen no transition
                await self._write("take", "POST", self.collection, {
                    "apiVersion": API_VERSION, "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec})
            else:
                await self._write("take", "PUT", self.path, {**lease, "spec": self._taken(_spec(lease), at)})
        except ApiError as exc:
            if exc.status != 409:  # 409: another holder created or updated it since our read
                raise
            await self.read()
            return self.holder() or RIVAL
        return None

    async def renew(self) -> bool:
        """Renew the Lease if it is still ours; False once it is not (taken, released or deleted)."""
        lease = await self.read()
        if lease is None or _spec(lease).get("holderIdentity") != self.identity:
            return False
        spec = {**_spec(lease), "renewTime": times.format_micro(times.now())}
        await self._write("renew", "PUT", self.path, {**lease, "spec": spec})
        return True

    async def give_back(self) -> None:
        """Release the Lease if it is ours, so that the next holder need not wait for it to lapse."""
        lease = await self.read()
        if lease is None or _spec(lease).get("holderIdentity") != self.identity:
            return
        spec = {k: v for k, v in _spec(lease).items() if k not in ("holderIdentity", "acquireTime")}
        await self._write("release", "PUT", self.path, {**lease, "spec": spec})

    def _taken(self, spec: dict[str, Any], at: datetime) -> dict[str, Any]:
        """``spec`` as ours from ``at``. As client-go: a change of holder sets ``acquireTime`` and counts
        a transition; the holder that has it already keeps both."""
        moment = times.format_micro(at)
        ours = spec.get("holderIdentity") == self.identity
        return {**spec, "holderIdentity": self.identity, "leaseDurationSeconds": self.duration,
                "acquireTime": (spec.get("acquireTime") if ours else None) or moment, "renewTime": moment,
                "leaseTransitions": (spec.get("leaseTransitions") or 0) + (0 if ours else 1)}

    async def _write(self, verb: str, method: str, path: str, body: dict[str, Any]) -> None:
        self.object = await self._bounded(verb, self.api.request(verb, self.what, method, path, body))

    async def _bounded(self, verb: str, request: Awaitable[T]) -> T:
        """``request`` within ``timeout``; past it, an ApiError like the transport's own for a timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                return await request
        except TimeoutError:
            raise ApiError(verb, self.what, 0, "TimeoutError") from None


def _spec(lease: dict[str, Any] | None) -> dict[str, Any]:
    return (lease or {}).get("spec") or {}
