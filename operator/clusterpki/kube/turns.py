"""Whose turn it is to restart: one ``coordination.k8s.io/v1`` Lease per ClusterPKI,
``<clusterpki>-restart``, held by the agent that restarts one of its components.

One Lease for every component, not one per component: a kube-apiserver is ready only while etcd
answers it, so an etcd member restarting on one node while an apiserver restarts on another can leave a
load balancer with no ready apiserver (the HA proof saw it). So agents on different members never
restart anything at the same time, let alone the same component.

An agent renews the Lease while it holds it, also after a failed restart, so a failure stops the roll
until that agent's restart succeeds. Only an agent that dies lets its Lease lapse, after
:data:`DURATION`; the next agent's health check of the other members still guards the roll.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from clusterpki.kube.api import Api, ApiError

LOGGER = logging.getLogger("clusterpki.agent")
DURATION = 90  # seconds a Lease outlives its holder's last renewal
RENEW = 10.0  # seconds between renewals while held
POLL = 2.0  # seconds between looks at a Lease that another agent holds


def lease_name(pki_name: str) -> str:
    return f"{pki_name}-restart"


class Turns:
    """The restart Lease of one ClusterPKI, as one agent (``holder``) takes it and gives it back."""

    def __init__(self, api: Api, namespace: str, pki_name: str, holder: str) -> None:
        self.api, self.namespace, self.holder = api, namespace, holder
        self.name = lease_name(pki_name)
        self.what = f"Lease {namespace}/{self.name}"
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{self.name}"
        self._renewer: asyncio.Task | None = None

    @property
    def held(self) -> bool:
        """Whether the Lease is ours: taken, and renewed in time (the renewer stops once it is not)."""
        return self._renewer is not None and not self._renewer.done()

    async def take(self) -> str | None:
        """Take the Lease, or say who holds it: None once it is ours."""
        if self.held:
            return None
        self._renewer = None  # a renewer that stopped: the Lease is to be taken again, if it is free
        now = _now()
        lease = await self.api.get_or_none(self.what, self.path)
        spec = {"holderIdentity": self.holder, "leaseDurationSeconds": DURATION,
                "acquireTime": _micro(now), "renewTime": _micro(now)}
        try:
            if lease is None:
                await self.api.request("take", self.what, "POST", self.path.rpartition("/")[0],
                                       {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                        "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec})
            else:
                holder = _holder(lease, now)
                if holder not in (None, self.holder):
                    return holder
                await self.api.request("take", self.what, "PUT", self.path,
                                       {**lease, "spec": {**lease.get("spec", {}), **spec}})
        except ApiError as exc:
            if exc.status == 409:  # another agent took it between our read and our write
                return "another agent"
            raise
        self._renewer = asyncio.create_task(self._renew())
        return None

    async def give_back(self) -> None:
        """Release the Lease, so that the next member may restart."""
        renewer, self._renewer = self._renewer, None
        if renewer is None:
            return
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
        try:
            lease = await self.api.get_or_none(self.what, self.path)
            if lease is not None and (lease.get("spec") or {}).get("holderIdentity") == self.holder:
                spec = {k: v for k, v in lease["spec"].items() if k not in ("holderIdentity", "acquireTime")}
                await self.api.request("release", self.what, "PUT", self.path, {**lease, "spec": spec})
        except ApiError as exc:  # it lapses by itself, DURATION after the last renewal
            LOGGER.warning(f"cannot give the restart {self.what} back: {exc}")

    async def _renew(self) -> None:
        """Renew until cancelled; stop (the Lease is no longer ours) once another agent holds it, or
        once renewals have failed for so long that another agent may take it soon."""
        clock = asyncio.get_running_loop().time
        renewed = clock()
        while True:
            await asyncio.sleep(RENEW)
            try:
                lease = await self.api.get_or_none(self.what, self.path)
                if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.holder:
                    LOGGER.warning(f"the restart {self.what} was taken from {self.holder}")
                    return
                await self.api.request("renew", self.what, "PUT", self.path,
                                       {**lease, "spec": {**lease["spec"], "renewTime": _micro(_now())}})
                renewed = clock()
            except ApiError as exc:
                LOGGER.warning(f"cannot renew the restart {self.what}: {exc}")
                if clock() - renewed > DURATION - 3 * RENEW:
                    LOGGER.warning(f"the restart {self.what} is about to lapse: no longer ours")
                    return


def _holder(lease: dict[str, Any], now: datetime) -> str | None:
    """Who holds a Lease now: nobody once it is released, or lapsed past its duration."""
    spec = lease.get("spec") or {}
    holder, renewed = spec.get("holderIdentity"), spec.get("renewTime")
    if not holder or not renewed:
        return None
    lapsed = datetime.fromisoformat(renewed.replace("Z", "+00:00")) + timedelta(
        seconds=spec.get("leaseDurationSeconds") or DURATION)
    return holder if lapsed > now else None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _micro(moment: datetime) -> str:
    """A Lease's MicroTime."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
