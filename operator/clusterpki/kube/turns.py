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

from clusterpki.kube.api import Api, ApiError
from clusterpki.kube.lease import Lease

LOGGER = logging.getLogger("clusterpki.agent")
DURATION = 90  # seconds a Lease outlives its holder's last renewal
RENEW = 10.0  # seconds between renewals while held
POLL = 2.0  # seconds between looks at a Lease that another agent holds


def lease_name(pki_name: str) -> str:
    return f"{pki_name}-restart"


class Turns:
    """The restart Lease of one ClusterPKI, as one agent (``holder``) takes it and gives it back."""

    def __init__(self, api: Api, namespace: str, pki_name: str, holder: str) -> None:
        self.lease = Lease(api, namespace, lease_name(pki_name), holder, DURATION)
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
        holder = await self.lease.take()
        if holder is None:
            self._renewer = asyncio.create_task(self._renew())
        return holder

    async def give_back(self) -> None:
        """Release the Lease, so that the next member may restart."""
        renewer, self._renewer = self._renewer, None
        if renewer is None:
            return
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
        try:
            await self.lease.give_back()
        except ApiError as exc:  # it lapses by itself, DURATION after the last renewal
            LOGGER.warning(f"cannot give the restart {self.lease.what} back: {exc}")

    async def _renew(self) -> None:
        """Renew until cancelled; stop (the Lease is no longer ours) once another agent holds it, or
        once renewals have failed for so long that another agent may take it soon."""
        clock = asyncio.get_running_loop().time
        renewed = clock()
        while True:
            await asyncio.sleep(RENEW)
            try:
                if not await self.lease.renew():
                    LOGGER.warning(f"the restart {self.lease.what} was taken from {self.lease.identity}")
                    return
                renewed = clock()
            except ApiError as exc:
                LOGGER.warning(f"cannot renew the restart {self.lease.what}: {exc}")
                if clock() - renewed > DURATION - 3 * RENEW:
                    LOGGER.warning(f"the restart {self.lease.what} is about to lapse: no longer ours")
                    return
