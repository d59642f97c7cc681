"""What a restart of one etcd member costs the apiserver's clients, on real etcd and kube-apiserver.

Three etcd members and one kube-apiserver that talks to all three (tests/consumers.py's flags), run from
a PKI ``clusterpki render`` wrote. Clients read (GET a namespace) and write (create, then delete, a
ConfigMap) through the apiserver while each member is restarted in turn (stopped with the signal given,
started again, waited for). Every failed request is printed with the member whose restart it fell in
and the seconds since the stop began.

The agent restarts etcd only when its trusted CA bundle changes (an ``etcd-ca`` rotation): etcd reads
``--trusted-ca-file`` once. This measures what that restart costs, whoever makes it.

Usage: python bench/etcd_restarts.py [--rounds N] [--readers N] [--writers N] [--signal SIGTERM|SIGKILL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import yaml
from harness import ROOT

from tests import consumers, proof
from tests.controlplane import free_port_block

MEMBERS = ("m0", "m1", "m2")
SHARED = ("ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "sa.key", "sa.pub",
          "etcd/ca.crt", "etcd/ca.key")


def render(root: Path, api_port: int) -> None:
    """One PKI, each member's files rendered with the first member's CAs and service-account key."""
    spec = {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI", "metadata": {"name": "bench"},
            "spec": {"controlPlaneEndpoint": f"127.0.0.1:{api_port}",
                     "etcd": {"members": [{"name": m, "ips": ["127.0.0.1"]} for m in MEMBERS]}}}
    (root / "clusterpki.yaml").write_text(yaml.safe_dump(spec))
    for member in MEMBERS:
        out = root / member / "kubernetes"
        if member != MEMBERS[0]:
            for name in SHARED:
                (out / "pki" / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / MEMBERS[0] / "kubernetes" / "pki" / name, out / "pki" / name)
        subprocess.run([sys.executable, "-m", "clusterpki", "render", "-f", str(root / "clusterpki.yaml"),
                        "--out", str(out), "--etcd-member", member], check=True, capture_output=True, cwd=ROOT)


def configure(root: Path, etcd: dict[str, tuple[int, int]], api_port: int) -> dict[str, Path]:
    states = {}
    for member in MEMBERS:
        pki, state = root / member / "kubernetes" / "pki", root / member / "state"
        state.mkdir()
        port = api_port if member == MEMBERS[0] else None
        found = consumers.commands(pki, proof.bin_dir(), state, member, etcd, port)
        wanted = ("etcd", "kube-apiserver") if port else ("etcd",)
        (state / "commands.json").write_text(json.dumps({c: found[c] for c in wanted}))
        (state / "config.json").write_text(json.dumps({"pki": str(pki), "etcd_port": etcd[member][0],
                                                       "api_port": port, "ports": {}}))
        states[member] = state
    return states


class Clients:
    def __init__(self, url: str, context, readers: int, writers: int) -> None:
        self.url, self.context, self.readers, self.writers = url, context, readers, writers
        self.failures: list[tuple[float, str]] = []
        self.count = 0
        self.stopped = asyncio.Event()

    async def _call(self, session, method: str, path: str, expect: int, body=None) -> None:
        try:
            async with session.request(method, self.url + path, json=body,
                                       timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status != expect:
                    self.failures.append((time.time(), f"{method} {response.status}: {(await response.text())[:150]}"))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self.failures.append((time.time(), f"{method} {type(exc).__name__}: {exc}"[:150]))
        self.count += 1

    async def _reader(self, session) -> None:
        while not self.stopped.is_set():
            await self._call(session, "GET", "/api/v1/namespaces/default", 200)

    async def _writer(self, session, index: int) -> None:
        for n in range(10**9):
            if self.stopped.is_set():
                return
            path, name = "/api/v1/namespaces/default/configmaps", f"bench-{index}-{n}"
            await self._call(session, "POST", path, 201, {"metadata": {"name": name}})
            await self._call(session, "DELETE", f"{path}/{name}", 200)

    async def run(self) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.context)) as session:
            await asyncio.gather(*(self._reader(session) for _ in range(self.readers)),
                                 *(self._writer(session, i) for i in range(self.writers)))


def stopper(signum: int):
    def stop(component: str, state: Path) -> None:
        pid = state / f"{component}.pid"
        if signum != signal.SIGTERM and pid.exists():
            try:
                os.kill(int(pid.read_text()), signum)
            except ProcessLookupError:
                pass
        original(component, state)
    original = consumers.stop
    return stop


async def measure(args: argparse.Namespace, root: Path) -> None:
    base = free_port_block(8)
    etcd = {m: (base + 2 * i, base + 2 * i + 1) for i, m in enumerate(MEMBERS)}
    api_port = base + 6
    render(root, api_port)
    states = configure(root, etcd, api_port)
    consumers.stop = stopper(getattr(signal, args.signal))
    try:
        for member, process in [(m, consumers.launch("etcd", states[m])) for m in MEMBERS]:
            await asyncio.to_thread(consumers.healthy, "etcd", states[member], process)
        await asyncio.to_thread(consumers.start, "kube-apiserver", states[MEMBERS[0]])
        clients = Clients(f"https://127.0.0.1:{api_port}", proof.admin_context(root / MEMBERS[0] / "kubernetes"),
                          args.readers, args.writers)
        running = asyncio.create_task(clients.run())
        await asyncio.sleep(2)
        for _ in range(args.rounds):
            for member in MEMBERS:
                await asyncio.to_thread(consumers.restart, "etcd", states[member])
                await asyncio.sleep(1)
        clients.stopped.set()
        await running
    finally:
        for member in reversed(MEMBERS):
            for component in ("kube-apiserver", "etcd"):
                consumers.stop(component, states[member])
    report(clients, {m: consumers.windows(states[m]) for m in MEMBERS}, args)


def report(clients: Clients, windows: dict, args: argparse.Namespace) -> None:
    restarts = sum(len(found) for found in windows.values())
    print(f"{args.signal}: {restarts} etcd restarts, {clients.count} requests "
          f"({args.readers} readers, {args.writers} writers), {len(clients.failures)} failed")
    kinds = Counter()
    for at, error in clients.failures:
        where = [f"{m} +{at - started:.2f}s" for m, found in windows.items() for _, started, ended in found
                 if started <= at <= ended + 1]
        print(f"  {', '.join(where) or 'outside any restart'}: {error}")
        known = next((e for e in proof.ETCD_RESTART_ERRORS if e in error), None)
        kinds[f"etcd's own: {known}" if known else error.split(":")[0]] += 1
    for kind, count in kinds.most_common():
        print(f"  {count:4d}  {kind}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="restarts of each member (default 2)")
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--signal", choices=("SIGTERM", "SIGKILL"), default="SIGTERM")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="etcd-restarts-") as root:
        asyncio.run(measure(args, Path(root)))


if __name__ == "__main__":
    main()
