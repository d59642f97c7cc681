"""Leader election for ``clusterpki run --leader-elect``: the ``coordination.k8s.io/v1`` Lease
``clusterpki`` (with ``--shards N``, one Lease per part of the fleet: :mod:`clusterpki.kube.parts`), taken
and renewed through :class:`clusterpki.kube.lease.Lease` the way client-go's ``leaderelection`` does it.

Only the leader runs the operator. A standby only reads the Lease, every retry period, and takes it once
it is free or lapsed. The leader renews it every retry period. A leader that has not renewed it within
the renew deadline must stop at once, since another replica may lead a moment later: :class:`Elector`
then calls ``on_lost``, which exits the process and lets the Deployment restart it as a standby. A
leader that stops (SIGTERM) gives the Lease back once its work has stopped (:meth:`Elector.release`). Every
request has a timeout, and an attempt never runs past the deadline, so a hung request cannot keep a
leader that lost its Lease.

The election runs in a thread of its own, on an event loop of its own: it starts before Kopf's loop
exists (``run`` waits to lead before it starts Kopf) and must renew for as long as Kopf runs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import threading
import uuid
from collections.abc import Callable
from typing import NamedTuple

from kubernetes import client

from clusterpki.kube.api import Api, ApiError
from clusterpki.kube.lease import Lease
from clusterpki.kube.parts import lease_names

logger = logging.getLogger(__name__)

class Timing(NamedTuple):
    """Seconds. Shorter than controller-runtime's 15/10/2 so that a failover after SIGKILL of the leader
    (detection takes up to ``lease_duration``, then the new leader starts) stays within 15 s."""

    lease_duration: int = 10
    renew_deadline: int = 7
    retry_period: int = 2


TIMING = Timing()


def identity() -> str:
    """A holder identity unique per process, as client-go makes it: the host (the pod's name) and a UUID."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


class Elector:
    """Campaigns in a thread of its own for the Lease ``namespace/clusterpki``, or with ``shards`` for
    whichever part's Lease is free (``clusterpki-shard-<i>-of-<N>``): a replica leads one part at most, and
    :attr:`shard` says which."""

    def __init__(self, configuration: client.Configuration, namespace: str, on_lost: Callable[[str], None],
                 shards: int = 1) -> None:
        self.namespace, self.names = namespace, lease_names(shards)
        self.name = self.names[0]  # the Lease held, once leading
        self.shard: int | None = None
        self.holder = identity()
        self.on_lost = on_lost
        self.leading = threading.Event()
        self.released = threading.Event()
        self._stop = asyncio.Event()  # set (on the election's loop) by release()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._configuration = configuration

    def start(self) -> None:
        logger.info("Campaigning for the Lease %s as %s.", self._leases(" or "), self.holder)
        threading.Thread(target=asyncio.run, args=(self._campaign(),), name="leader-election", daemon=True).start()

    def wait(self) -> None:
        """Block until this process leads: said once the first attempts have failed, then every minute."""
        timeout = 2 * TIMING.retry_period
        while not self.leading.wait(timeout=timeout):
            held = "is held by another replica" if len(self.names) == 1 else "are held by other replicas"
            logger.info("Standing by: the Lease %s %s.", self._leases(" and "), held)
            timeout = 60
        logger.info("Leading: holding the Lease %s/%s as %s.", self.namespace, self.name, self.holder)

    def _leases(self, joined: str) -> str:
        return joined.join(f"{self.namespace}/{name}" for name in self.names)

    def release(self, timeout: float) -> bool:
        """Give the Lease back, once this replica has stopped working, so that a standby takes over at once
        rather than after the Lease lapses; whether that was done within ``timeout``."""
        if self._loop is None or not self.leading.is_set():
            return False
        self._loop.call_soon_threadsafe(self._stop.set)
        return self.released.wait(timeout)

    async def _campaign(self) -> None:
        """The election on this thread's loop, with an API session of its own (a session serves one loop).
        Each request may take at most half a retry period, so that a hung one is only a failed attempt."""
        self._loop = asyncio.get_running_loop()
        api = Api(self._configuration)
        try:
            await self.elect(*(Lease(api, self.namespace, name, self.holder, TIMING.lease_duration,
                                     timeout=TIMING.retry_period / 2) for name in self.names))
        finally:
            await api.close()

    async def elect(self, *leases: Lease) -> None:
        """Stand by until this replica takes one of ``leases``, lead while it renews it, then call
        ``on_lost``."""
        try:
            renewed, lease = await self._acquire(leases)
            self.name, self.shard = lease.name, leases.index(lease)
            self.leading.set()
            why = await self._lead(lease, renewed)
            if why is None:
                await self._give_back(lease)
                return
        except Exception as exc:  # noqa: BLE001  API and network errors are retried: this is a bug, and a
            # thread that died of it silently would leave a leader running without renewing its Lease
            why = f"the election failed: {type(exc).__name__}"
        self.on_lost(f"Lost the Lease {self.namespace}/{self.name}: {why}.")

    async def _give_back(self, lease: Lease) -> None:
        try:
            await lease.give_back()
            logger.info("Gave the Lease %s/%s back.", self.namespace, self.name)
        except ApiError as exc:  # it lapses by itself
            logger.warning("Cannot give the Lease %s/%s back (%s): it lapses within %ss.", self.namespace,
                           self.name, exc, TIMING.lease_duration)
        finally:
            self.released.set()

    async def _acquire(self, leases: tuple[Lease, ...]) -> tuple[float, Lease]:
        """Try to take a Lease every retry period, each in turn from a random one (so that replicas
        starting together spread over the parts), which only reads those another replica holds; the
        loop time at which the successful attempt started, and the Lease taken."""
        clock = asyncio.get_running_loop().time
        first = random.randrange(len(leases))
        while True:
            started = clock()
            for lease in leases[first:] + leases[:first]:
                try:
                    if await lease.take() is None:
                        return started, lease
                except ApiError as exc:  # e.g. "get Lease ... failed: HTTP 403 Forbidden": RBAC to fix
                    logger.warning("%s; trying again in %ss.", exc, TIMING.retry_period)
            await asyncio.sleep(TIMING.retry_period)

    async def _lead(self, lease: Lease, renewed: float) -> str | None:
        """Renew the Lease every retry period; why leading ended: the Lease has another holder, or no
        renewal succeeded within the renew deadline (None: :meth:`release` ended it). Attempts and
        pauses end at that deadline, so the loss is known at once, not an attempt later."""
        clock = asyncio.get_running_loop().time
        while True:
            pause = min(TIMING.retry_period, max(0.0, renewed + TIMING.renew_deadline - clock()))
            try:
                await asyncio.wait_for(self._stop.wait(), pause)
                return None
            except TimeoutError:
                pass
            started = clock()
            left = renewed + TIMING.renew_deadline - started
            if left <= 0:
                return f"no renewal succeeded within {TIMING.renew_deadline}s"
            try:
                async with asyncio.timeout(left):
                    if not await lease.renew():
                        return f"it is no longer ours ({lease.holder() or 'nobody'} holds it)"
                renewed = started
            except (ApiError, TimeoutError) as exc:
                logger.warning("Cannot renew the Lease %s/%s: %s", self.namespace, self.name,
                               exc if isinstance(exc, ApiError) else "the renew deadline came first")
