"""Leader election for ``clusterpki run --leader-elect``: a ``coordination.k8s.io/v1`` Lease, taken and
renewed by the official client's ``LeaderElection`` with its ``LeaseLock``, the way client-go does it.

Only the leader runs the operator. A standby only reads the Lease, every retry period. A leader that
cannot renew the Lease within the renew deadline must stop at once, since another replica may lead a
moment later: :class:`Elector` then calls ``on_lost``, which exits the process and lets the Deployment
restart it as a standby. A watchdog covers the one case the library does not: a renewal request that
hangs (the client sets no timeout), which would otherwise hold the leader past its deadline.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.leaderelection import electionconfig, leaderelection
from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

logger = logging.getLogger(__name__)

LEASE_NAME = "clusterpki"


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


class _WithTimeout:
    """An API object whose calls time out: the official client sets no timeout, and a hung request
    would hold a replica in the election loop."""

    def __init__(self, api: Any, timeout: float) -> None:
        self._api, self._timeout = api, timeout

    def __getattr__(self, name: str) -> Any:
        return functools.partial(getattr(self._api, name), _request_timeout=self._timeout)


class _TimedLeaseLock(LeaseLock):
    """The official LeaseLock through our client configuration, with a timeout per request, noting
    when a write last succeeded. A network error (the library only catches ``ApiException``) counts
    as a failed attempt, retried the next period, not as the end of the election."""

    def __init__(self, name: str, namespace: str, holder: str, api_client: client.ApiClient, timeout: float) -> None:
        super().__init__(name, namespace, holder)
        self.api_instance = _WithTimeout(client.CoordinationV1Api(api_client), timeout)
        self.last_write = 0.0

    def get(self, name: str, namespace: str) -> tuple[bool, Any]:
        try:
            found, record = super().get(name, namespace)
        except Exception as exc:  # urllib3's errors for a refused, reset or timed-out connection
            found, record = False, ApiException(status=0, reason=type(exc).__name__)
        status = getattr(record, "status", None)
        if not found and status != 404:  # the library retries quietly; say why, e.g. a 403
            logger.warning("Cannot read the Lease %s/%s: HTTP %s %s", namespace, name, status,
                           getattr(record, "reason", ""))
        return found, record

    def create(self, name: str, namespace: str, election_record: Any) -> bool:
        return self._noted(lambda: super(_TimedLeaseLock, self).create(name, namespace, election_record))

    def update(self, name: str, namespace: str, updated_record: Any) -> bool:
        return self._noted(lambda: super(_TimedLeaseLock, self).update(name, namespace, updated_record))

    def _noted(self, write: Callable[[], bool]) -> bool:
        try:
            succeeded = write()
        except Exception as exc:  # as in get(): a network error is a failed attempt
            logger.warning("Cannot write the Lease %s/%s: %s", self.namespace, self.name, type(exc).__name__)
            return False
        if succeeded:
            self.last_write = time.monotonic()
        return succeeded


class Elector:
    """Campaigns for the Lease ``namespace/name`` in a thread of its own."""

    def __init__(self, configuration: client.Configuration, namespace: str, on_lost: Callable[[str], None]) -> None:
        self.namespace, self.name = namespace, LEASE_NAME
        self.holder = identity()
        self.on_lost = on_lost
        self.leading = threading.Event()
        self._lock = _TimedLeaseLock(self.name, namespace, self.holder, client.ApiClient(configuration),
                                     timeout=TIMING.retry_period)
        self._config = electionconfig.Config(self._lock, TIMING.lease_duration, TIMING.renew_deadline,
                                             TIMING.retry_period, self.leading.set, self._stopped)

    def start(self) -> None:
        logger.info("Campaigning for the Lease %s/%s as %s.", self.namespace, self.name, self.holder)
        threading.Thread(target=self._campaign, name="leader-election", daemon=True).start()
        threading.Thread(target=self._watchdog, name="leader-watchdog", daemon=True).start()

    def wait(self) -> None:
        """Block until this process leads."""
        while not self.leading.wait(timeout=60):
            logger.info("Standing by: the Lease %s/%s is held by another replica.", self.namespace, self.name)
        logger.info("Leading: holding the Lease %s/%s as %s.", self.namespace, self.name, self.holder)

    def _campaign(self) -> None:
        try:
            leaderelection.LeaderElection(self._config).run()
        except Exception as exc:  # the lock turns API and network errors into failed attempts: this is a bug
            self._lost(f"the election failed: {type(exc).__name__}")

    def _stopped(self) -> None:
        self._lost(f"the Lease was not renewed within {TIMING.renew_deadline}s")

    def _watchdog(self) -> None:
        while True:
            time.sleep(1)
            if self.leading.is_set() and time.monotonic() - self._lock.last_write > TIMING.renew_deadline:
                self._lost(f"no renewal of the Lease succeeded in {TIMING.renew_deadline}s")

    def _lost(self, why: str) -> None:
        self.on_lost(f"Lost the Lease {self.namespace}/{self.name}: {why}.")
