#!/usr/bin/env python3
"""Kubelet client CSRs approved by three approvers in turn, on the same real control plane
(../shared/k8s) in one run, with the same loads:

- operator: ``clusterpki run --csr-policy`` (its ServiceAccount, its rules);
- kcm: kube-controller-manager's own csrapproving, with kubeadm's binding
  ``kubeadm:node-autoapprove-certificate-rotation`` (selfnodeclient for system:nodes) on, and
  otherwise as kubeadm runs it;
- floor: a lean approver in a process of its own that watches CSRs and PUTs an approval for each,
  checking nothing: as fast as the apiserver takes approvals.

Each CSR is created by its Node (the bench impersonates system:node:<name>), for 250 registered Nodes.
A burst creates all at once (64 concurrent requests); ``--rate R`` creates ``--sustained`` CSRs at R per
second. kube-controller-manager runs csrapproving throughout, as in any cluster: while the others
approve, it looks at each CSR too (a SubjectAccessReview) and approves none. Latency runs from the bench
sending the create to its watch seeing the approval. Reports, per approver and load: decisions/s, p50,
p99, and the approver's CPU per CSR.
Usage: python bench/csr_peers.py [--burst 300] [--rate 200] [--sustained 2000] [--approvers operator kcm floor]
       [--kcm-sustained]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

import aiohttp
from harness import ROOT, Bench, bench, clusterpki, cpu_seconds, percentile
from multidict import CIMultiDict

from tests.csr_factory import kubelet_csr, node_body
from tests.kube import Api

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
BINDINGS = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
SELFNODECLIENT = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"
NODES = 250
# A v1.24 kubelet's client CSR asks for these (its key is ECDSA, but it asks anyway), and kube-controller-
# manager v1.24 approves no other set: without key encipherment, its recognizers pass the CSR by.
USAGES = ["digital signature", "key encipherment", "client auth"]


def as_node(name: str) -> CIMultiDict:
    return CIMultiDict([("Impersonate-User", f"system:node:{name}"), ("Impersonate-Group", "system:nodes"),
                        ("Impersonate-Group", "system:authenticated")])


class Approver:
    """One of the three, started before a load and stopped after it."""

    def __init__(self, b: Bench) -> None:
        self.b = b

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def cpu(self) -> float:
        raise NotImplementedError


class OperatorApprover(Approver):
    async def start(self) -> None:
        self.process = await self.b.start_operator("--csr-policy", "bench/policy")
        await self.b.api.ready("bench", "policy", timeout=60)
        await idle(self.cpu)  # done with its initial lists (Nodes, CSRs, the policy's own PKI)

    async def stop(self) -> None:
        await self.process.stop()
        self.b.operators.remove(self.process)

    def cpu(self) -> float:
        return self.process.cpu_seconds()


class KcmApprover(Approver):
    """kube-controller-manager's csrapproving, with kubeadm's self-renewal binding for system:nodes."""

    name = "bench-kubeadm-node-autoapprove-certificate-rotation"

    async def start(self) -> None:
        async with self.b.session.post(self.b.url + BINDINGS, json={
                "metadata": {"name": self.name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": SELFNODECLIENT},
                "subjects": [{"kind": "Group", "name": "system:nodes", "apiGroup": "rbac.authorization.k8s.io"}]},
        ) as response:
            assert response.status == 201, await response.text()

    async def stop(self) -> None:
        async with self.b.session.delete(f"{self.b.url}{BINDINGS}/{self.name}"):
            pass

    def cpu(self) -> float:
        directory = self.b.plane.directory  # type: ignore[attr-defined]
        return cpu_seconds(int((directory / "kcm-core.pid").read_text()))


class FloorApprover(Approver):
    """``python bench/csr_peers.py --floor KUBECONFIG`` in a process of its own."""

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__)), "--floor", str(self.b.kubeconfig), stdout=asyncio.subprocess.PIPE,
            env={"PYTHONPATH": str(ROOT / "operator")}, cwd=ROOT)
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        assert line.strip() == b"watching", line

    async def stop(self) -> None:
        self.process.terminate()
        await self.process.wait()

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)


APPROVERS = {"operator": OperatorApprover, "kcm": KcmApprover, "floor": FloorApprover}


async def measure(b: Bench, approver: Approver, prefix: str, count: int, rate: float | None) -> dict[str, float]:
    bodies = [kubelet_csr(f"{prefix}-{i}", f"node-{i % NODES}", usages=USAGES) for i in range(count)]
    sent: dict[str, float] = {}
    decided: dict[str, float] = {}
    done = asyncio.Event()

    def on_event(kind: str, obj: dict[str, Any], arrival: float) -> None:
        name = obj["metadata"]["name"]
        conditions = (obj.get("status") or {}).get("conditions") or []
        if name.startswith(prefix) and name not in decided and any(c["type"] == "Approved" for c in conditions):
            decided[name] = arrival
            if len(decided) == count:
                done.set()

    async def create(body: dict[str, Any]) -> None:
        sent[body["metadata"]["name"]] = time.monotonic()
        await b.api.create("certificatesigningrequests", body,
                           headers=as_node(body["spec"]["username"].removeprefix("system:node:")))

    await approver.start()
    try:
        watch = await b.watch(CSRS, on_event)
        cpu = approver.cpu()
        if rate is None:
            await asyncio.gather(*(create(body) for body in bodies))
        else:
            await paced(create, bodies, rate)
        await b.until(done, watch, 600)
        cpu = approver.cpu() - cpu
        watch.cancel()
    finally:
        await approver.stop()
        async with b.session.delete(b.url + CSRS) as response:  # every approver starts from none
            assert response.status == 200, await response.text()
    latencies = [decided[name] - sent[name] for name in decided]
    span = max(decided.values()) - min(sent.values())
    return {"rate": count / span, "p50": median(latencies), "p99": percentile(latencies, 0.99), "cpu": cpu / count}


async def idle(cpu: Any, quiet: float = 0.02) -> None:
    """Return once a process spends less than ``quiet`` CPU seconds in half a second."""
    before = cpu()
    while True:
        await asyncio.sleep(0.5)
        now = cpu()
        if now - before < quiet:
            return
        before = now


async def paced(create: Any, bodies: list[dict], rate: float) -> None:
    start = time.monotonic()
    tasks = []
    for i, body in enumerate(bodies):
        await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        tasks.append(asyncio.create_task(create(body)))
    await asyncio.gather(*tasks)


async def run(args: argparse.Namespace) -> None:
    loads: list[tuple[str, int, float | None]] = [(f"burst of {args.burst}", args.burst, None)]
    if args.rate:
        loads.append((f"{args.sustained} at {args.rate:.0f}/s", args.sustained, args.rate))
    async with bench(real=True) as b:
        await b.create_namespaces(["bench"])
        await b.api.apply_pki(clusterpki("bench", "policy"))
        await asyncio.gather(*(b.api.create_node(node_body(f"node-{i}", (f"node-{i}",), (f"10.0.{i // 250}.{i % 250 + 1}",)))
                               for i in range(NODES)))
        print(f"{'approver':>9} {'load':>16} {'decisions/s':>12} {'p50':>8} {'p99':>8} {'CPU/CSR':>9}", flush=True)
        results: dict[tuple[str, str], dict[str, float]] = {}
        for label, count, rate in loads:
            for name in args.approvers:
                if rate and name == "kcm" and not args.kcm_sustained:
                    print(f"{name:>9} {label:>16}   (skipped: it approves ~10/s, so it cannot sustain {rate:.0f}/s; "
                          "--kcm-sustained runs it anyway)", flush=True)
                    continue
                r = await measure(b, APPROVERS[name](b), f"{name}-{len(results)}", count, rate)
                results[(name, label)] = r
                print(f"{name:>9} {label:>16} {r['rate']:>12.0f} {r['p50'] * 1000:>6.0f}ms {r['p99'] * 1000:>6.0f}ms "
                      f"{r['cpu'] * 1000:>7.2f}ms", flush=True)
                await asyncio.sleep(2)  # kube-controller-manager's last SubjectAccessReviews
        for label, *_ in loads:
            if ("floor", label) in results:
                floor = results[("floor", label)]
                for name in args.approvers:
                    if name == "floor" or (name, label) not in results:
                        continue
                    r = results[(name, label)]
                    print(f"{label}: {name} takes {floor['rate'] / r['rate']:.2f}x the floor's time, "
                          f"p99 {r['p99'] / floor['p99']:.2f}x")


async def floor(kubeconfig: Path) -> None:
    """Approve every undecided kubelet client CSR created from now on, checking nothing."""
    url, session = Api.session_for(kubeconfig, limit=64)
    async with session:
        async with session.get(url + CSRS, params={"limit": "1"}) as response:
            version = (await response.json())["metadata"]["resourceVersion"]
        tasks = set()

        async def approve(obj: dict[str, Any]) -> None:
            obj["status"] = {"conditions": [{"type": "Approved", "status": "True", "reason": "Floor", "message": ""}]}
            async with session.put(f"{url}{CSRS}/{obj['metadata']['name']}/approval", json=obj) as response:
                await response.read()

        params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "36000"}
        async with session.get(url + CSRS, params=params, timeout=aiohttp.ClientTimeout(total=None)) as response:
            print("watching", flush=True)
            while line := await response.content.readline():
                event = json.loads(line)
                obj = event["object"]
                if event["type"] == "ADDED" and not (obj.get("status") or {}).get("conditions"):
                    task = asyncio.create_task(approve(obj))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=300)
    parser.add_argument("--rate", type=float, default=200.0, help="0: no sustained load")
    parser.add_argument("--sustained", type=int, default=2000)
    parser.add_argument("--approvers", nargs="+", choices=list(APPROVERS), default=list(APPROVERS))
    parser.add_argument("--kcm-sustained", action="store_true", help="run kube-controller-manager at --rate too")
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        asyncio.run(floor(args.floor) if args.floor else run(args))
    except KeyboardInterrupt:  # SIGTERM (harness.py turns it into this): the floor's stop, or a user's
        if not args.floor:
            raise


if __name__ == "__main__":
    main()
