"""What the bench scripts share: an API server, the operator in a process of its own (so its RSS and CPU
can be read from ``/proc``), and a client that drives the server as kubectl would.

Two servers, the same benches:
- the HTTP API emulator (``python -m tests.emulator``), which logs every request with its client and
  arrival time, so latencies are measured at the API and the operator's requests are counted exactly;
- ``--real``: a real control plane (``../shared/k8s``: kube-apiserver, kube-controller-manager, etcd),
  set up as the README says, with the operator running as its ServiceAccount. Requests are counted
  by the apiserver itself (``apiserver_request_total``), less the bench's own, which the bench counts
  as it sends them; latencies run from the bench sending a request to its watch seeing the result.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.controlplane import ControlPlane  # noqa: E402
from tests.kube import Api  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# A bench stopped with SIGTERM (timeout, kill) still tears down its control plane and operator.
signal.signal(signal.SIGTERM, signal.default_int_handler)
RequestKey = tuple[str, str, str]  # (verb, resource, subresource), as the apiserver counts them
# What the operator reads and writes; on a real apiserver, requests for anything else are the control
# plane's own (admission's quota lookups, kube-controller-manager's informers).
OPERATOR_RESOURCES = ("clusterpkis", "secrets", "events", "certificatesigningrequests", "nodes")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def classify(method: str, path: str, watch: bool) -> RequestKey:
    """A request as the apiserver's metrics name it: LIST and WATCH for collections, GET for one object."""
    parts = [p for p in path.split("/") if p]
    parts = parts[2:] if parts[:1] == ["api"] else parts[3:]  # drop /api/v1 or /apis/GROUP/VERSION
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    resource, name, sub = (parts + ["", "", ""])[:3]
    verb = method
    if method == "GET":
        verb = "WATCH" if watch else ("GET" if name else "LIST")
    return verb, resource, sub


class OperatorProcess:
    """``clusterpki run -A`` as a user starts it; its log goes to a file.

    With ``BENCH_PROFILE=FILE`` in the environment, py-spy samples it into FILE (collapsed stacks; the
    bench's later operators into FILE.1, FILE.2, ...)."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path, metrics_port: int) -> None:
        self.process, self.log, self.metrics_port = process, log, metrics_port
        self.profiler: asyncio.subprocess.Process | None = None

    async def reconciles(self) -> float:
        """How many reconciles it has finished, from its own clusterpki_reconcile_total."""
        from prometheus_client.parser import text_string_to_metric_families

        def read() -> str:
            # that family alone: the whole page renders every ClusterPKI's series, tens of milliseconds of its CPU
            url = f"http://127.0.0.1:{self.metrics_port}/metrics?name[]=clusterpki_reconcile_total"
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        text = await asyncio.to_thread(read)
        return sum(s.value for family in text_string_to_metric_families(text) if family.name == "clusterpki_reconcile"
                   for s in family.samples if s.name == "clusterpki_reconcile_total")

    async def profile(self, output: str) -> None:
        self.profiler = await asyncio.create_subprocess_exec(
            "py-spy", "record", "--rate", "100", "--gil", "--format", "raw", "--output", output,
            "--pid", str(self.process.pid), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    def peak_rss_mb(self) -> float:
        """The high-water mark of the resident set (VmHWM), in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def reset_peak_rss(self) -> None:
        """Start a new high-water mark from the current RSS (``clear_refs`` 5)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    async def stop(self) -> None:
        if self.profiler is not None and self.profiler.returncode is None:
            self.profiler.send_signal(signal.SIGINT)
            await self.profiler.wait()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except asyncio.TimeoutError:
                self.process.kill()
                await self.process.wait()


class Bench:
    """A server, a client session to it, and the operator processes started against it."""

    real = False

    def __init__(self, url: str, kubeconfig: Path, session: aiohttp.ClientSession, server_pids: list[int]) -> None:
        self.url, self.kubeconfig, self.session = url, kubeconfig, session
        self.server_pids = server_pids
        self.api = Api(self.url, session)

        self.operators: list[OperatorProcess] = []

    def server_cpu(self) -> float:
        """CPU seconds the API server (and, for a real control plane, etcd) used so far."""
        return sum(cpu_seconds(pid) for pid in self.server_pids)

    def operator_cpu(self) -> float:
        return sum(operator.cpu_seconds() for operator in self.operators if operator.process.returncode is None)

    async def mark(self) -> Any:
        """A point from which :meth:`operator_requests` counts."""
        raise NotImplementedError

    async def operator_requests(self, since: Any) -> Counter[RequestKey]:
        """The operator's requests since ``since``, watches aside, by (verb, resource, subresource)."""
        raise NotImplementedError

    async def create_namespaces(self, names: list[str]) -> None:
        """The emulator needs none; a real apiserver refuses objects in namespaces that do not exist."""

    async def watch(self, path: str, on_event: Callable[[str, dict[str, Any], float], None]) -> asyncio.Task:
        """Stream the changes of a collection (e.g. ``/apis/G/V/clusterpkis``) from now on into
        ``on_event(type, object, arrival)`` until the returned task is cancelled. A watch the server
        closes (a real apiserver drops watchers that fall behind) is resumed from the last version seen,
        as an informer does; one whose version has expired is relisted, every object as MODIFIED."""
        async with self.session.get(self.url + path, params={"limit": "1"}) as response:
            version = (await response.json())["metadata"]["resourceVersion"]

        async def stream() -> None:
            nonlocal version
            while True:
                params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "36000"}
                async with self.session.get(self.url + path, params=params,
                                            timeout=aiohttp.ClientTimeout(total=None)) as response:
                    while line := await response.content.readline():
                        event = json.loads(line)
                        if event["type"] == "ERROR" and event["object"].get("code") == 410:
                            version = await relist()
                            break
                        if event["type"] == "ERROR":
                            raise RuntimeError(f"the watch of {path} failed: {event['object']}")
                        version = event["object"]["metadata"]["resourceVersion"]
                        on_event(event["type"], event["object"], time.monotonic())

        async def relist() -> str:
            async with self.session.get(self.url + path) as response:
                listed = await response.json()
            for obj in listed["items"]:
                on_event("MODIFIED", obj, time.monotonic())
            return listed["metadata"]["resourceVersion"]

        return asyncio.create_task(stream())

    @staticmethod
    async def until(event: asyncio.Event, watch: asyncio.Task, timeout: float) -> None:
        """Wait for ``event``, failing at once if the ``watch`` feeding it fails."""
        waiter = asyncio.ensure_future(event.wait())
        done, _ = await asyncio.wait([waiter, watch], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if watch in done:
            watch.result()
        if waiter not in done:
            raise TimeoutError(f"not done within {timeout:.0f}s")

    async def start_operator(self, *args: str) -> OperatorProcess:
        """Start ``clusterpki run -A ARGS`` and return once it watches what it needs."""
        log = self.kubeconfig.with_name(f"operator-{time.monotonic_ns()}.log")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": str(ROOT / "operator")}
        port, metrics_port = _free_port(), _free_port()
        since = await self.mark()
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "clusterpki", "run", "-A", "--liveness", f"http://127.0.0.1:{port}/healthz",
                "--metrics-port", str(metrics_port), *args, env=env, stdout=out, stderr=out)
        operator = OperatorProcess(process, log, metrics_port)
        deadline = time.monotonic() + 60
        while not await self._watching(port, "--csr-policy" in args, since):
            if process.returncode is not None or time.monotonic() > deadline:
                await operator.stop()
                raise RuntimeError(f"the operator did not start:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.05)
        if os.environ.get("BENCH_PROFILE"):  # FILE for the first operator, FILE.1 for the next, ...
            suffix = f".{len(self.operators)}" if self.operators else ""
            await operator.profile(os.environ["BENCH_PROFILE"] + suffix)
        self.operators.append(operator)
        return operator

    async def _watching(self, port: int, csrs: bool, since: Any) -> bool:
        """Whether the operator started after ``since`` watches what it needs."""
        raise NotImplementedError


class EmulatorBench(Bench):
    """The emulator: every request is in its log, with the client that made it."""

    async def requests(self, since: int = 0) -> list[SimpleNamespace]:
        async with self.session.get(f"{self.url}/emulator/requests", params={"since": str(since)}) as response:
            return [SimpleNamespace(**r) for r in await response.json()]

    async def mark(self) -> int:
        return len(await self.requests())

    async def operator_requests(self, since: int) -> Counter[RequestKey]:
        return Counter(classify(r.method, r.path, r.watch) for r in await self.requests(since)
                       if r.by_operator and not r.watch)

    async def _watching(self, port: int, csrs: bool, since: int) -> bool:
        wanted = {"clusterpkis", "secrets"} | ({"certificatesigningrequests", "nodes"} if csrs else set())
        return not wanted - {r.path.rsplit("/", 1)[-1] for r in await self.requests(since) if r.watch and r.by_operator}


class ControlPlaneBench(Bench):
    """A real control plane: the apiserver counts every request; the bench subtracts its own."""

    real = True

    def __init__(self, plane: ControlPlane, url: str, kubeconfig: Path, session: aiohttp.ClientSession,
                 server_pids: list[int], own: Counter[RequestKey]) -> None:
        super().__init__(url, kubeconfig, session, server_pids)
        self.plane, self.own = plane, own

    async def mark(self) -> tuple[dict, Counter]:
        return await asyncio.to_thread(self.plane.requests), Counter(self.own)

    async def operator_requests(self, since: tuple[dict, Counter]) -> Counter[RequestKey]:
        before, own_before = since
        after = await asyncio.to_thread(self.plane.requests)
        counts: Counter[RequestKey] = Counter()
        for key, value in after.items():
            if key[0] == "WATCH" or key[1] not in OPERATOR_RESOURCES:
                continue  # watches are standing connections; the rest is the control plane's own chatter
            counts[key] = int(value - before.get(key, 0)) - (self.own[key] - own_before[key])
        return +counts

    async def create_namespaces(self, names: list[str]) -> None:
        await asyncio.gather(*(self.api.create("namespaces", {"metadata": {"name": n}}) for n in names))

    async def _watching(self, port: int, csrs: bool, since: Any) -> bool:
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/healthz", timeout=1)
        except OSError:
            return False
        await asyncio.sleep(1)  # Kopf answers once it runs; its watches open within moments
        return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def bench(real: bool = False) -> AsyncIterator[Bench]:
    """A fresh server for one measurement: the emulator, or (``real``) a real control plane."""
    with tempfile.TemporaryDirectory() as tmp:
        if real:
            async with _control_plane(Path(tmp)) as b:
                yield b
        else:
            async with _emulator(Path(tmp)) as b:
                yield b


@asynccontextmanager
async def _emulator(tmp: Path) -> AsyncIterator[EmulatorBench]:
    kubeconfig = tmp / "kubeconfig"
    emulator = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.emulator", "--kubeconfig", str(kubeconfig),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    try:
        assert emulator.stdout is not None
        url = (await asyncio.wait_for(emulator.stdout.readline(), 30)).decode().strip()
        from tests.emulator import Emulator

        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {Emulator.token}"},
                                         connector=connector) as session:
            yield EmulatorBench(url, kubeconfig, session, [emulator.pid])
    finally:
        emulator.kill()
        await emulator.wait()


@asynccontextmanager
async def _control_plane(tmp: Path) -> AsyncIterator[ControlPlaneBench]:
    plane = ControlPlane.external() or await asyncio.to_thread(ControlPlane.boot, tmp / "control-plane")
    try:
        installed = await asyncio.to_thread(plane.install)
        if installed.returncode != 0:
            raise RuntimeError(f"the README's install failed: {installed.stderr}")
        await asyncio.to_thread(plane.kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                                "crd/clusterpkis.pki.clusterpki.dev")
        operator_kubeconfig = await asyncio.to_thread(plane.token_kubeconfig, tmp / "operator.kubeconfig")
        pids = [int((plane.directory / f"{p}.pid").read_text()) for p in ("apiserver", "etcd")] \
            if plane.directory else []
        own: Counter[RequestKey] = Counter()

        async def count(session: Any, context: Any, params: aiohttp.TraceRequestStartParams) -> None:
            own[classify(params.method, urlsplit(str(params.url)).path, "watch=" in str(params.url))] += 1

        tracing = aiohttp.TraceConfig()
        tracing.on_request_start.append(count)
        url, session = Api.session_for(plane.kubeconfig, limit=64, trace_configs=[tracing])
        async with session:
            yield ControlPlaneBench(plane, url, operator_kubeconfig, session, pids, own)
    finally:
        await asyncio.to_thread(plane.down)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def clusterpki(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
