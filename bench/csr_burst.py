#!/usr/bin/env python3
"""Kubelet CSRs against `clusterpki run --csr-policy`, with the API server in a process of its own: the
HTTP API emulator, or with --real a real control plane (../shared/k8s), where each CSR is created as
its Node (the bench impersonates system:node:<name>, so the apiserver sets the requester itself).

A burst creates all CSRs at once (64 concurrent requests); with --rate R they arrive at R per second
instead. Half are client CSRs, half serving CSRs of registered Nodes. Each latency runs from the bench
sending the CSR's create request to its watch seeing the decision. Reports decisions/s, p50/p99
latency, and the CPU the operator and the API server (with etcd) spent per CSR.
Usage: python bench/csr_burst.py [--real] [--count N ...] [--rate R] [--nodes N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from statistics import median
from typing import Any

from harness import bench, clusterpki, percentile
from multidict import CIMultiDict

from tests.csr_factory import kubelet_csr, node_body

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


def node_ip(i: int) -> str:
    return f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}"


def as_node(name: str) -> CIMultiDict:
    """Impersonation headers: the CSR is created by the Node itself, as its kubelet would."""
    return CIMultiDict([("Impersonate-User", f"system:node:{name}"), ("Impersonate-Group", "system:nodes"),
                        ("Impersonate-Group", "system:authenticated")])


async def measure(count: int, nodes: int, rate: float | None, real: bool) -> dict[str, float]:
    async with bench(real) as b:
        await b.create_namespaces(["bench"])
        await b.api.apply_pki(clusterpki("bench", "policy"), defaults=not b.real)
        await asyncio.gather(*(b.api.create_node(node_body(f"node-{i}", (f"node-{i}",), (node_ip(i),)))
                               for i in range(nodes)))
        bodies = [kubelet_csr(f"csr-{i}", f"node-{i % nodes}", serving=i % 2 == 1,
                              dns=(f"node-{i % nodes}",), ips=(node_ip(i % nodes),)) if i % 2 else
                  kubelet_csr(f"csr-{i}", f"node-{i % nodes}") for i in range(count)]
        operator = await b.start_operator("--csr-policy", "bench/policy")
        sent: dict[str, float] = {}
        decided: dict[str, float] = {}
        all_decided = asyncio.Event()

        def on_event(kind: str, obj: dict[str, Any], arrival: float) -> None:
            name = obj["metadata"]["name"]
            conditions = (obj.get("status") or {}).get("conditions") or []
            if name not in decided and any(c["type"] in ("Approved", "Denied") for c in conditions):
                decided[name] = arrival
                if len(decided) == count:
                    all_decided.set()

        async def create(body: dict[str, Any]) -> None:
            sent[body["metadata"]["name"]] = time.monotonic()
            await b.api.create("certificatesigningrequests", body,
                               headers=as_node(body["spec"]["username"].removeprefix("system:node:")) if b.real
                               else None)

        try:
            await b.api.ready("bench", "policy", timeout=60)
            watch = await b.watch(CSRS, on_event)
            cpu, server_cpu = operator.cpu_seconds(), b.server_cpu()
            if rate is None:
                await asyncio.gather(*(create(body) for body in bodies))
            else:
                await paced(create, bodies, rate)
            await b.until(all_decided, watch, 300)
            watch.cancel()
            cpu, server_cpu = operator.cpu_seconds() - cpu, b.server_cpu() - server_cpu
        finally:
            await operator.stop()
    latencies = [decided[name] - sent[name] for name in decided]
    span = max(decided.values()) - min(sent.values())
    return {"rate": len(decided) / span, "p50": median(latencies), "p99": percentile(latencies, 0.99),
            "span": span, "creation": max(sent.values()) - min(sent.values()),
            "cpu": cpu / count, "server_cpu": server_cpu / count}


async def paced(create: Any, bodies: list[dict], rate: float) -> None:
    """Create the CSRs at ``rate`` per second, each on time however long the others take."""
    start = time.monotonic()
    tasks = []
    for i, body in enumerate(bodies):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(create(body)))
    await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--rate", type=float, help="create the CSRs at this many per second, not at once")
    parser.add_argument("--nodes", type=int, default=250, help="registered Nodes the CSRs belong to")
    parser.add_argument("--real", action="store_true", help="on a real control plane (../shared/k8s), not the emulator")
    args = parser.parse_args()
    print(f"{'CSRs':>6} {'created in':>11} {'decided in':>11} {'decisions/s':>12} {'p50':>8} {'p99':>8} "
          f"{'operator CPU/CSR':>17} {'server CPU/CSR':>15}")
    for count in args.count:
        r = asyncio.run(measure(count, args.nodes, args.rate, args.real))
        print(f"{count:>6} {r['creation']:>10.2f}s {r['span']:>10.2f}s {r['rate']:>12.0f} "
              f"{r['p50'] * 1000:>6.0f}ms {r['p99'] * 1000:>6.0f}ms {r['cpu'] * 1000:>15.2f}ms "
              f"{r['server_cpu'] * 1000:>13.2f}ms")


if __name__ == "__main__":
    main()
