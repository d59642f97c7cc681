#!/usr/bin/env python3
"""A burst of kubelet CSRs against the operator and the HTTP API emulator: decisions/s and the
latency from creation to the recorded decision (p50/p99). Usage: python bench/csr_burst.py [--count N ...]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.csr_factory import kubelet_csr, node_body  # noqa: E402
from tests.emulator import Emulator  # noqa: E402
from tests.operator.conftest import Api, Operator  # noqa: E402


async def measure(count: int) -> dict[str, float]:
    emulator = Emulator()
    await emulator.start()
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = emulator.write_kubeconfig(Path(tmp) / "kubeconfig")
        os.environ["KUBECONFIG"] = str(kubeconfig)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {emulator.token}"}) as session:
            api = Api(emulator, session)
            await api.apply_pki({"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
                                 "metadata": {"name": "policy", "namespace": "bench"}, "spec": {}})
            nodes = 50
            for i in range(nodes):
                await api.create_node(node_body(f"node-{i}", (f"node-{i}.internal",), (f"10.0.{i // 250}.{i % 250 + 1}",)))
            bodies = [kubelet_csr(f"csr-{i}", f"node-{i % nodes}") for i in range(count)]
            operator = Operator(csr_policy=("bench", "policy"))
            await operator.start()
            try:
                await api.ready("bench", "policy")
                created: dict[str, float] = {}
                start = time.monotonic()

                async def create(body):
                    await api.create("certificatesigningrequests", body)
                    created[body["metadata"]["name"]] = time.monotonic()
                await asyncio.gather(*(create(b) for b in bodies))
                decided: dict[str, float] = {}
                while len(decided) < count and time.monotonic() - start < 300:
                    for request in emulator.requests[:]:
                        if request.path.endswith("/approval") and request.method == "PUT":
                            name = request.path.split("/")[-2]
                            decided.setdefault(name, request.received)
                    await asyncio.sleep(0.01)
                total = max(decided.values()) - start
            finally:
                await operator.stop()
    await emulator.stop()
    latencies = sorted(decided[n] - created[n] for n in decided)
    return {"count": count, "rate": count / total, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, nargs="+", default=[500, 2000])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(f"{'CSRs':>6} {'decisions/s':>12} {'p50':>8} {'p99':>8}")
    for count in args.count:
        r = asyncio.run(measure(count))
        print(f"{count:>6} {r['rate']:>12.0f} {r['p50'] * 1000:>6.0f}ms {r['p99'] * 1000:>6.0f}ms")


if __name__ == "__main__":
    main()
