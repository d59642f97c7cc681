"""Failover of the operator's leader election on a real control plane (``../shared/k8s``), installed as the
README says: two replicas of ``clusterpki run -A --leader-elect`` as the ServiceAccount, the leader killed
with SIGKILL, and the time from the kill to the new leader's first write, the first Secret of a ClusterPKI
created right after the kill (the ADDED event of the bench's watch).

Usage: python bench/failover.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import ROOT

from tests.controlplane import ControlPlane
from tests.kube import Api
from tests.runners import free_port

LEASE_NAMESPACE = "clusterpki-system"


def start(kubeconfig: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "clusterpki", "run", "-A", "--standalone", "--leader-elect",
         "--liveness", f"http://127.0.0.1:{free_port()}/healthz"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(ROOT / "operator")})


def leader(logs: list[Path]) -> int | None:
    """The replica whose log says it leads."""
    return next((i for i, log in enumerate(logs) if "Leading: holding the Lease" in log.read_text()), None)


async def wait(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := probe()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout}s")
        await asyncio.sleep(0.05)
    return value


async def first_secret_added(api: Api, namespace: str, name: str) -> float:
    """Watch the namespace's Secrets; the monotonic time the first one of ClusterPKI ``name`` is ADDED."""
    path = api.path("secrets", namespace)
    params = {"watch": "true", "labelSelector": f"pki.clusterpki.dev/cluster-pki={name}"}
    async with api.session.get(api.url + path, params=params) as response:
        while line := await response.content.readline():
            if json.loads(line)["type"] == "ADDED":
                return time.monotonic()
    raise RuntimeError("the watch ended")


async def measure(rounds: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        plane = ControlPlane.external() or await asyncio.to_thread(ControlPlane.boot, directory / "control-plane")
        try:
            assert (await asyncio.to_thread(plane.install)).returncode == 0
            await asyncio.to_thread(plane.kubectl, "wait", "--for=condition=Established", "--timeout=60s",
                                    "crd/clusterpkis.pki.clusterpki.dev")
            kubeconfig = await asyncio.to_thread(plane.token_kubeconfig, directory / "operator.kubeconfig")
            url, session = Api.session_for(plane.kubeconfig)
            async with session:
                api = Api(url, session)
                namespace = f"failover-{os.getpid()}"
                await api.create("namespaces", {"metadata": {"name": namespace}})
                logs = [directory / f"replica-{i}.log" for i in range(2)]
                processes = [start(kubeconfig, log) for log in logs]
                figures = []
                try:
                    for round_ in range(rounds):
                        await wait(lambda: leader(logs) is not None, 60, "leader")
                        leading = leader(logs)
                        await asyncio.sleep(random.uniform(2, 4))  # a random point in the renewal cycle
                        name = f"round-{round_}"
                        watch = asyncio.create_task(first_secret_added(api, namespace, name))
                        await asyncio.sleep(0.2)
                        killed = time.monotonic()
                        processes[leading].send_signal(signal.SIGKILL)
                        processes[leading].wait()
                        await api.create("clusterpkis", {"apiVersion": "pki.clusterpki.dev/v1alpha1",
                                                         "kind": "ClusterPKI", "metadata": {"name": name}}, namespace)
                        written = await asyncio.wait_for(watch, 60)
                        figures.append(written - killed)
                        print(f"round {round_ + 1}: {figures[-1]:.1f} s from SIGKILL to the new leader's first write",
                              flush=True)
                        logs[leading].write_text("")
                        processes[leading] = start(kubeconfig, logs[leading])  # back as the standby
                finally:
                    for process in processes:
                        process.kill()
                        process.wait()
                return figures
        finally:
            plane.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    figures = asyncio.run(measure(parser.parse_args().rounds))
    print(f"failover over {len(figures)} rounds: median {statistics.median(figures):.1f} s, "
          f"max {max(figures):.1f} s (goal 15 s)")


if __name__ == "__main__":
    main()
