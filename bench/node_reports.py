"""What nodes' reports cost the operator and the apiserver, on a real control plane (``../shared/k8s``).

The operator runs as the README installs it, with ``--csr-policy`` naming one ClusterPKI. N Nodes are
created (Node objects alone: no kubelet is needed to report), then every Node gets the report a node
agent writes (``pki.clusterpki.dev/kubelet``) at the bench's concurrency, as all nodes do when a
rotation phase starts. Measured: the time from the first report to ``status.nodesCurrent`` reading
N/N, the operator's CPU and requests for them, its ClusterPKI status patches, then an idle window.

The floor, in the same run: the N patches themselves (what the nodes' agents pay), timed alone.

Usage: python bench/node_reports.py [--nodes N] [--concurrency C]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from harness import Bench, bench, clusterpki

from clusterpki.kube import node_reports
from clusterpki.pki import nodes
from clusterpki.pki.record import Record

NAMESPACE, NAME = "bench-nodes", "cluster"


async def gather_bounded(concurrency: int, calls: list[Any]) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one(call: Any) -> None:
        async with slots:
            await call()
    await asyncio.gather(*(one(c) for c in calls))


async def patch_all(b: Bench, names: list[str], value: str, concurrency: int) -> float:
    started = time.monotonic()

    def patch(name: str) -> Any:
        return lambda: b.api.patch("nodes", name, {"metadata": {"annotations": {node_reports.ANNOTATION: value}}})
    await gather_bounded(concurrency, [patch(n) for n in names])
    return time.monotonic() - started


async def measure(b: Bench, count: int, concurrency: int) -> dict[str, float]:
    await b.create_namespaces([NAMESPACE])
    await b.api.apply_pki(clusterpki(NAMESPACE, NAME))
    operator = await b.start_operator("--csr-policy", f"{NAMESPACE}/{NAME}")
    await b.api.ready(NAMESPACE, NAME, timeout=60)
    names = [f"bench-node-{i:05d}" for i in range(count)]
    await gather_bounded(concurrency, [lambda n=n: b.api.create("nodes", {"apiVersion": "v1", "kind": "Node",
                                                                          "metadata": {"name": n}}) for n in names])
    # The floor: the same patches, with a value no ClusterPKI has (the operator's watch sees them, counts none)
    floor = await patch_all(b, names, "bench-nodes/nobody:0", concurrency)
    await asyncio.sleep(5)

    status = (await b.api.get("clusterpkis", NAME, NAMESPACE))["status"]
    revision = nodes.revision(Record.from_status(status["record"]))
    patches = []
    done = asyncio.Event()

    def seen(kind: str, obj: dict[str, Any], at: float) -> None:
        if obj["metadata"]["name"] == NAME and kind == "MODIFIED":
            patches.append(at)
            if (obj.get("status") or {}).get("nodesCurrent") == f"{count}/{count}":
                done.set()
    watch = await b.watch(f"/apis/pki.clusterpki.dev/v1alpha1/namespaces/{NAMESPACE}/clusterpkis", seen)
    since, cpu = await b.mark(), b.operator_cpu()
    started = time.monotonic()
    reports = await patch_all(b, names, f"{NAMESPACE}/{NAME}:{revision}", concurrency)
    await Bench.until(done, watch, timeout=300)
    counted = time.monotonic() - started
    requests = await b.operator_requests(since)
    used = b.operator_cpu() - cpu

    idle_since, idle_cpu = await b.mark(), b.operator_cpu()
    await asyncio.sleep(20)
    idle = {k: v for k, v in (await b.operator_requests(idle_since)).items() if k[0] not in ("GET", "LIST")}
    idle_cpu_used = b.operator_cpu() - idle_cpu
    watch.cancel()
    rss = operator.peak_rss_mb()
    await operator.stop()
    return {"nodes": count, "floor_s": floor, "reports_s": reports, "counted_s": counted,
            "operator_cpu_s": used, "cpu_ms_per_node": 1000 * used / count,
            "operator_requests": sum(requests.values()), "status_patches": len(patches),
            "idle_writes": sum(idle.values()), "idle": idle, "idle_cpu_s": idle_cpu_used,
            "rss_mb": rss}


async def run(args: argparse.Namespace) -> None:
    async with bench(real=True) as b:
        found = await measure(b, args.nodes, args.concurrency)
    print(f"{found['nodes']} nodes report (concurrency {args.concurrency}), real control plane:")
    print(f"  floor: the {found['nodes']} Node patches alone   {found['floor_s']:.1f} s")
    print(f"  the reports, with the operator counting  {found['reports_s']:.1f} s "
          f"({found['reports_s'] / found['floor_s']:.2f}x the floor)")
    print(f"  status.nodesCurrent {found['nodes']}/{found['nodes']} after {found['counted_s']:.1f} s, "
          f"in {found['status_patches']} status patches")
    print(f"  operator: {found['operator_cpu_s']:.2f} s CPU ({found['cpu_ms_per_node']:.2f} ms per node), "
          f"{found['operator_requests']} requests, peak RSS {found['rss_mb']:.0f} MB")
    print(f"  idle 20 s after: {found['idle_writes']} writes {dict(found['idle'])}, {found['idle_cpu_s']:.2f} s CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
