"""What the bench scripts share: the HTTP API emulator and the operator, each in a process of its own
(so the operator has a core to itself and its RSS and CPU can be read from ``/proc``), and a client
that drives the emulator as kubectl would.

The emulator records every request with its arrival time (``time.monotonic()``, one clock for all
processes on Linux); latencies are measured between those arrivals, at the API, as a user would see them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.kube import Api  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Logged(NamedTuple):
    """One request as the emulator recorded it."""

    method: str
    path: str
    watch: bool
    by_operator: bool
    received: float
    created: str | None  # the name of the object a POST created


class OperatorProcess:
    """``clusterpki run`` against the emulator, as a user starts it; its log goes to a file.

    With ``BENCH_PROFILE=FILE`` in the environment, py-spy samples it into FILE (collapsed stacks)."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process, self.log = process, log
        self.profiler: asyncio.subprocess.Process | None = None

    async def profile(self, output: str) -> None:
        self.profiler = await asyncio.create_subprocess_exec(
            "py-spy", "record", "--rate", "200", "--format", "raw", "--output", output,
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
    """An emulator process, a client session to it, and the operator processes started against it."""

    def __init__(self, url: str, kubeconfig: Path, session: aiohttp.ClientSession, emulator_pid: int) -> None:
        self.url, self.kubeconfig, self.session = url, kubeconfig, session
        self.emulator_pid = emulator_pid
        self.api = Api(self.url, session)

    async def requests(self, since: int = 0) -> list[Logged]:
        async with self.session.get(f"{self.url}/emulator/requests", params={"since": str(since)}) as response:
            return [Logged(**r) for r in await response.json()]

    async def watch(self, path: str, on_event: Callable[[str, dict[str, Any], float], None]) -> asyncio.Task:
        """Stream the changes of a collection (e.g. ``/apis/G/V/clusterpkis``) from now on into
        ``on_event(type, object, arrival)`` until the returned task is cancelled."""
        async with self.session.get(self.url + path) as response:
            version = (await response.json())["metadata"]["resourceVersion"]

        async def stream() -> None:
            params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "36000"}
            async with self.session.get(self.url + path, params=params,
                                        timeout=aiohttp.ClientTimeout(total=None)) as response:
                async for line in response.content:
                    event = json.loads(line)
                    on_event(event["type"], event["object"], time.monotonic())

        return asyncio.create_task(stream())

    async def start_operator(self, *args: str) -> OperatorProcess:
        """Start ``clusterpki run ARGS`` and return once it watches what it needs."""
        log = self.kubeconfig.with_name(f"operator-{time.monotonic_ns()}.log")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONPATH": str(ROOT / "operator")}
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(sys.executable, "-m", "clusterpki", "run", "-A", *args,
                                                           env=env, stdout=out, stderr=out)
        operator = OperatorProcess(process, log)
        wanted = {"clusterpkis", "secrets"} | ({"certificatesigningrequests", "nodes"}
                                               if "--csr-policy" in args else set())
        deadline = time.monotonic() + 60
        while wanted - {r.path.rsplit("/", 1)[-1] for r in await self.requests() if r.watch and r.by_operator}:
            if process.returncode is not None or time.monotonic() > deadline:
                await operator.stop()
                raise RuntimeError(f"the operator did not start:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.05)
        if os.environ.get("BENCH_PROFILE"):
            await operator.profile(os.environ["BENCH_PROFILE"])
        return operator


@asynccontextmanager
async def bench() -> AsyncIterator[Bench]:
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = Path(tmp) / "kubeconfig"
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
                yield Bench(url, kubeconfig, session, emulator.pid)
        finally:
            emulator.kill()
            await emulator.wait()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def clusterpki(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
