"""``clusterpki run``: compose the operator's handlers and start Kopf with the in-cluster config or
the current kubeconfig.

The ClusterPKI controller always runs; the kubelet CSR handlers join it only with ``--csr-policy``,
so without one the operator never even reads a CSR.
"""

from __future__ import annotations

import asyncio
import ctypes
import http.server
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

import kopf

from clusterpki.errors import UsageError
from clusterpki.kube.api import connection_info, load_configuration
from clusterpki.kube.parts import WHOLE, Part
from clusterpki.pki import times

if TYPE_CHECKING:
    from clusterpki.kube.leadership import Elector

logger = logging.getLogger(__name__)


def run(namespaces: list[str], standalone: bool, liveness: str | None, verbose: bool,
        csr_policy: str | None = None, metrics_port: int | None = None, lease_namespace: str | None = None,
        shards: int = 1) -> int:
    """Run the operator. With ``lease_namespace``, only once this replica holds the Lease there; with
    ``shards``, for the part of the fleet whose Lease it holds (:mod:`clusterpki.kube.parts`)."""
    policy = parse_policy(csr_policy, namespaces)
    if shards > 1 and lease_namespace is None:
        raise UsageError("--shards needs --leader-elect: each part is led by the replica holding its Lease")
    configuration = load_configuration()
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not verbose:  # Kopf's line per watch event ("Handler 'drift' succeeded."): thousands a minute in a fleet
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if metrics_port is not None:
        import prometheus_client

        from clusterpki.csr import metrics  # noqa: F401  (its family is served, at 0, without a CSR policy too)

        prometheus_client.start_http_server(metrics_port)
    _until_served(configuration, namespaces, liveness)
    part, elector = WHOLE, None
    if lease_namespace is not None:
        elector = _wait_to_lead(configuration, lease_namespace, liveness, shards)
        assert elector.shard is not None
        part = Part(elector.shard, shards)
    if policy is not None and not part.owns(policy[0]):
        logger.info("The CSR policy's namespace %s is another part's: its replica approves the CSRs", policy[0])
        policy = None
    trim = heap_trimmer()
    if trim is not None:
        threading.Thread(target=give_heap_back, args=(trim,), name="heap", daemon=True).start()
    kopf.run(registry=build_registry(csr_policy=policy is not None),
             memo=kopf.Memo(csr_policy=policy, namespaces=namespaces, part=part),
             clusterwide=not namespaces, namespaces=namespaces, standalone=standalone,
             liveness_endpoint=liveness)
    if elector is not None:  # stopped (SIGTERM): nothing more is written, so a standby may lead at once
        elector.release(timeout=5)
    return 0


# CPython gives a freed arena back to the C allocator, but glibc keeps free pages inside its heap until a
# trim: after a burst of work (a renewal wave of 1,000 ClusterPKIs) the operator's RSS stayed about 30 MiB
# above what it used. Measured with bench/fleet.py: the wave's peak RSS was 204 MiB without, 171 MiB with
# a trim after each second of work. A trim took 15-18 ms on a 440 MiB heap (measured); a second without
# work costs none.
HEAP_LOOK = 1.0  # seconds between looks
HEAP_WORK = 0.05  # CPU seconds of work since the last look that make a trim worth it


def heap_trimmer() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, which gives a heap's free pages back to the system; None elsewhere (musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def give_heap_back(trim: Callable[[int], int], cpu: Callable[[], float] = time.process_time,
                   sleep: Callable[[float], None] = time.sleep) -> NoReturn:
    """Trim the heap after each second in which the process worked (its own thread, for the process's life):
    the CPU it used since the last look, not since the last trim, so that an idle operator's trickle of
    work (watch bookmarks, probes) never adds up to a trim."""
    last = cpu()
    while True:
        sleep(HEAP_LOOK)
        if cpu() - last >= HEAP_WORK:
            trim(0)
        last = cpu()


def _until_served(configuration: Any, namespaces: list[str], liveness: str | None) -> None:
    """Block until the credentials work and ClusterPKIs are served (see :mod:`clusterpki.kube.served`); the
    liveness endpoint answers meanwhile, as a standby's does."""
    from clusterpki.kube.api import Api
    from clusterpki.kube.served import until_served

    async def wait() -> None:
        api = Api(configuration)
        try:
            await until_served(api, namespaces, configuration.host)
        finally:
            await api.close()

    health = _StandbyHealth(liveness) if liveness else None
    try:
        asyncio.run(wait())
    finally:
        if health is not None:
            health.close()


def _wait_to_lead(configuration: object, namespace: str, liveness: str | None, shards: int) -> Elector:
    """Campaign for a Lease and block until this replica leads (``shard`` says which part). Meanwhile the liveness
    endpoint answers, so that the kubelet does not restart a healthy standby; Kopf serves it once this
    replica leads."""
    from clusterpki.kube.leadership import Elector

    elector = Elector(configuration, namespace, on_lost=_exit_now, shards=shards)
    health = _StandbyHealth(liveness) if liveness else None
    # until Kopf puts its own handler in place, once it runs: a pod stopped in between ends cleanly too
    signal.signal(signal.SIGTERM, lambda *_: _stop_before_work(elector))
    elector.start()
    try:
        elector.wait()
    finally:
        if health is not None:
            health.close()
    return elector


def _stop_before_work(elector: Elector) -> None:
    """SIGTERM before Kopf runs (standing by, or leading and not started yet): nothing has been written, so
    it gives back the Lease it holds, if any, and ends, as a leader stopped does."""
    logger.info("Stopped before starting its work." if elector.release(timeout=5) else "Stopped while standing by.")
    raise SystemExit(0)


def _exit_now(message: str) -> None:
    """Stop at once, without a graceful shutdown that would still write: another replica may lead now."""
    logger.error("%s Exiting, to restart as a standby.", message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


class _StandbyHealth:
    """A standby's liveness endpoint: 200 on the liveness URL's path."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        path = parts.path or "/"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                self.send_response(200 if self.path == path else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: object) -> None:  # probes every few seconds are no news
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer((parts.hostname or "0.0.0.0", parts.port or 80), Handler)
        threading.Thread(target=self._server.serve_forever, name="standby-health", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def parse_policy(value: str | None, namespaces: list[str]) -> tuple[str, str] | None:
    """``NS/NAME`` of the ClusterPKI whose ``spec.kubelet`` governs this cluster's kubelet CSRs."""
    if value is None:
        return None
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise UsageError(f"--csr-policy {value!r} is not NAMESPACE/NAME")
    if namespaces and namespace not in namespaces:
        raise UsageError(f"--csr-policy {value}: namespace {namespace} is not among the watched namespaces")
    return namespace, name


def build_registry(csr_policy: bool) -> kopf.OperatorRegistry:
    """The handlers of one operator, on a registry of their own."""
    from clusterpki.controller import handlers as controller

    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(configure)
    kopf.on.login(registry=registry)(login)
    controller.register(registry)
    if csr_policy:
        from clusterpki.csr import handlers as csr

        csr.register(registry)
    return registry


def configure(settings: kopf.OperatorSettings, **_: object) -> None:
    """Kopf settings for this operator: no Events of Kopf's own, no cluster-wide scans."""
    settings.posting.enabled = False  # Events are posted by the store, explicitly
    # No cluster-wide scans of namespaces and CRDs: they need RBAC the operator has no use for, and
    # the namespaces to serve are given exactly (-n) or are all of them (-A).
    settings.scanning.disabled = True


# A minute: after a rotation's Completing, the apiservers' new serving certificates keep the old CA's
# cross-signature only while it is in use; a client that still trusts the old CA alone fails at the next
# one re-issued without it (a rotation taken back, the next rotation). Reading the files costs no request.
RELOGIN = timedelta(minutes=1)


def login(**_: object) -> kopf.ConnectionInfo:
    """Kopf logs in with exactly the credentials the Secrets store uses, read again every RELOGIN (Kopf
    logs in again once they expire): a pod's token is rotated by the kubelet, and its ``ca.crt``
    follows the cluster's CA through a rotation, so the files are read afresh, not kept."""
    return kopf.ConnectionInfo(**connection_info(load_configuration()), expiration=times.now() + RELOGIN)
