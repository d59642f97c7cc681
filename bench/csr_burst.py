#!/usr/bin/env python3
"""Kubelet CSRs against `clusterpki run --csr-policy` and the HTTP API emulator, each in its own process.

A burst creates all CSRs at once (64 concurrent requests); with --rate R they arrive at R per second
instead. Half are client CSRs, half serving CSRs of registered Nodes. Each latency runs from the CSR's
create request to its approval PUT, both as the API received them. Reports decisions/s, p50/p99
latency, and the CPU the operator and the emulator spent per CSR.
Usage: python bench/csr_burst.py [--count N ...] [--rate R] [--nodes N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from statistics import median

from harness import Bench, bench, clusterpki, cpu_seconds, percentile

from tests.csr_factory import kubelet_csr, node_body


def node_ip(i: int) -> str:
    return f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


async def measure(count: int, nodes: int, rate: float | None) -> dict[str, float]:
    async with bench() as b:
        await b.api.apply_pki(clusterpki("bench", "policy"))
        for i in range(nodes):
            await b.api.create_node(node_body(f"node-{i}", (f"node-{i}.internal",), (node_ip(i),)))
        bodies = [kubelet_csr(f"csr-{i}", f"node-{i % nodes}", serving=i % 2 == 1,
                              dns=(f"node-{i % nodes}.internal",), ips=(node_ip(i % nodes),)) if i % 2 else
                  kubelet_csr(f"csr-{i}", f"node-{i % nodes}") for i in range(count)]
        operator = await b.start_operator("--csr-policy", "bench/policy")
        try:
            await b.api.ready("bench", "policy", timeout=60)
            since = len(await b.requests())
            cpu, emulator_cpu = operator.cpu_seconds(), cpu_seconds(b.emulator_pid)
            if rate is None:
                await asyncio.gather(*(b.api.create("certificatesigningrequests", body) for body in bodies))
            else:
                await paced(b, bodies, rate)
            created, decided = await decisions(b, since, count)
            cpu, emulator_cpu = operator.cpu_seconds() - cpu, cpu_seconds(b.emulator_pid) - emulator_cpu
        finally:
            await operator.stop()
    latencies = [decided[name] - created[name] for name in decided]
    span = max(decided.values()) - min(created.values())
    return {"rate": len(decided) / span, "p50": median(latencies), "p99": percentile(latencies, 0.99),
            "span": span, "creation": max(created.values()) - min(created.values()),
            "cpu": cpu / count, "emulator_cpu": emulator_cpu / count}


async def paced(b: Bench, bodies: list[dict], rate: float) -> None:
    """Create the CSRs at ``rate`` per second, each on time however long the others take."""
    start = time.monotonic()
    tasks = []
    for i, body in enumerate(bodies):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(b.api.create("certificatesigningrequests", body)))
    await asyncio.gather(*tasks)


async def decisions(b: Bench, since: int, count: int) -> tuple[dict[str, float], dict[str, float]]:
    """When each CSR was created, and when its decision arrived, from the emulator's request log."""
    created: dict[str, float] = {}
    decided: dict[str, float] = {}
    deadline = time.monotonic() + 300
    while len(decided) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(decided)} of {count} CSRs were decided within 300 s")
        await asyncio.sleep(0.2)
        batch = await b.requests(since)
        since += len(batch)
        for r in batch:
            if r.method == "POST" and r.created and r.path.endswith("/certificatesigningrequests"):
                created[r.created] = r.received
            elif r.method == "PUT" and r.path.endswith("/approval"):
                decided.setdefault(r.path.split("/")[-2], r.received)
    return created, decided


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--rate", type=float, help="create the CSRs at this many per second, not at once")
    parser.add_argument("--nodes", type=int, default=250, help="registered Nodes the CSRs belong to")
    args = parser.parse_args()
    print(f"{'CSRs':>6} {'created in':>11} {'decided in':>11} {'decisions/s':>12} {'p50':>8} {'p99':>8} "
          f"{'operator CPU/CSR':>17} {'emulator CPU/CSR':>17}")
    for count in args.count:
        r = asyncio.run(measure(count, args.nodes, args.rate))
        print(f"{count:>6} {r['creation']:>10.2f}s {r['span']:>10.2f}s {r['rate']:>12.0f} "
              f"{r['p50'] * 1000:>6.0f}ms {r['p99'] * 1000:>6.0f}ms {r['cpu'] * 1000:>15.2f}ms "
              f"{r['emulator_cpu'] * 1000:>15.2f}ms")


if __name__ == "__main__":
    main()
