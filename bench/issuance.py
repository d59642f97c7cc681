#!/usr/bin/env python3
"""Issuance against the HTTP API emulator: create N ClusterPKIs and time apply→Ready.

The operator (the real Kopf machinery and handlers) runs in this process in its own thread, the
emulator in the main loop. Prints a table and the API requests the operator made per ClusterPKI.
Usage: python bench/issuance.py [--count N ...] [--algorithm ECDSA-P256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.emulator import Emulator  # noqa: E402
from tests.operator.conftest import Api, Operator  # noqa: E402


async def measure(count: int, algorithm: str) -> dict[str, float]:
    emulator = Emulator()
    await emulator.start()
    with tempfile.TemporaryDirectory() as tmp:
        kubeconfig = emulator.write_kubeconfig(Path(tmp) / "kubeconfig")
        os.environ["KUBECONFIG"] = str(kubeconfig)
        operator = Operator()
        await operator.start()
        try:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {emulator.token}"}) as session:
                api = Api(emulator, session)
                baseline = len(emulator.requests)
                started = time.monotonic()
                latencies = await asyncio.gather(*(one(api, f"ns-{i % 50}", f"pki-{i}", algorithm)
                                                   for i in range(count)))
                total = time.monotonic() - started
                await asyncio.sleep(1)  # let trailing status patches and Events land
                operator_requests = sum(r.by_operator for r in emulator.requests[baseline:])
        finally:
            await operator.stop()
            await emulator.stop()
    latencies.sort()
    return {"count": count, "total": total, "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            "requests": operator_requests / count}


async def one(api: Api, namespace: str, name: str, algorithm: str) -> float:
    body = {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
            "metadata": {"name": name, "namespace": namespace}, "spec": {"keyAlgorithm": algorithm}}
    start = time.monotonic()
    await api.apply_pki(body)
    await api.ready(namespace, name, timeout=600)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--algorithm", default="ECDSA-P256")
    args = parser.parse_args()
    import logging
    logging.disable(logging.WARNING)
    print(f"{'ClusterPKIs':>11} {'all Ready':>10} {'p50 apply→Ready':>16} {'p99':>8} {'API requests/PKI':>17}")
    for count in args.count:
        result = asyncio.run(measure(count, args.algorithm))
        print(f"{count:>11} {result['total']:>9.2f}s {result['p50']:>15.3f}s {result['p99']:>7.3f}s "
              f"{result['requests']:>17.1f}")


if __name__ == "__main__":
    main()
