#!/usr/bin/env python3
"""A hosted-control-plane fleet on one operator: issuance at scale, steady state, and a renewal wave.

`clusterpki run -A` and the API server (the HTTP API emulator, or with --real a real control plane
from ../shared/k8s) each run in processes of their own. For each count:
1. Issuance: create N ClusterPKIs at once and time apply→Ready (sending the create request to the watch
   event that shows Ready for that generation), the operator's API requests per ClusterPKI and its
   peak RSS.
2. Steady state (--steady S seconds, 0 to skip): once the operator has settled (worked off the
   tail of issuance's watch events), nothing is due; count its requests beyond watches, every write
   the API server served (from any client), and the operator's CPU over S seconds.
3. Resume (--no-resume to skip): stop the operator and start another over the Ready fleet; time from
   starting it until it has checked every ClusterPKI (its clusterpki_reconcile_total), and count
   the operator's writes meanwhile (there should be none).
4. Renewal wave: set every ClusterPKI's spec.renewBefore so that all its leaf certificates fall due
   at the same moment, a minute after the first patch; time from that moment until every ClusterPKI
   reports only new leaf certificates, and the peak RSS during the wave.
The floors, in the same run and just before (--no-floor to skip), each by a lean client from precomputed
bodies at the operator's concurrency (CONCURRENT_RECONCILES at once) on the same server, then deleted:
- the Secrets alone: the same number, as large (one ClusterPKI's, made by the engine, under other names);
- the 19 requests: for as many ClusterPKIs (made first, no operator running), the operator's own requests
  in its order, with the claim, the status and the Secrets it writes for one (see api_floor).
The operator's all-Ready time is printed as a ratio to each.
With --replicas N, the operator is N replicas of `run -A --leader-elect --shards N`, each leading one part
of the fleet (its namespaces); CPU is their sum, peak RSS the largest one's.
Usage: python bench/fleet.py [--real] [--count N ...] [--algorithm ECDSA-P256] [--steady 60] [--no-resume]
       [--no-wave] [--no-floor] [--replicas N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from statistics import median
from typing import Any

from clusterpki.controller.settings import CONCURRENT_RECONCILES
from clusterpki.controller.wanted import of_pki
from clusterpki.kube import secrets
from clusterpki.kube.api import PARTIAL_METADATA
from clusterpki.pki import catalog, engine, spec, times
from harness import Bench, OperatorProcess, bench, clusterpki, percentile

from tests.kube import GROUP_PATH

NAMESPACES = 50
LEASES = "clusterpki-system"  # the replicas' Leases: where the manifests' Role lets its ServiceAccount take them
WAVE_LEAD = 20.0  # seconds between the last renewBefore patch and the moment everything falls due


def ready(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("observedGeneration") == obj["metadata"]["generation"] and any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])


def leaf_entries(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in obj["status"]["certificates"] if e["issuer"] not in ("self-signed", "external")]


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def issuance(b: Bench, count: int, algorithm: str) -> dict[str, float]:
    names = [(f"ns-{i % NAMESPACES}", f"pki-{i}") for i in range(count)]
    await b.create_namespaces(sorted({ns for ns, _ in names}))
    readied: dict[tuple[str, str], float] = {}
    sent: dict[tuple[str, str], float] = {}
    all_ready = asyncio.Event()

    def on_event(kind: str, obj: dict[str, Any], arrival: float) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind != "DELETED" and ready(obj) and key not in readied:
            readied[key] = arrival
            if len(readied) == count:
                all_ready.set()

    async def apply(namespace: str, name: str) -> None:
        sent[(namespace, name)] = time.monotonic()
        await b.api.apply_pki(clusterpki(namespace, name, keyAlgorithm=algorithm), defaults=not b.real)

    watch = await b.watch(f"{GROUP_PATH}/clusterpkis", on_event)
    since = await b.mark()
    server_cpu, operator_cpu = b.server_cpu(), b.operator_cpu()
    try:
        await asyncio.gather(*(apply(ns, name) for ns, name in names))
        await b.until(all_ready, watch, 1800)
    finally:
        watch.cancel()
    server_cpu, operator_cpu = b.server_cpu() - server_cpu, b.operator_cpu() - operator_cpu
    await asyncio.sleep(2)  # let the trailing writes (Events) land before counting
    requests = await b.operator_requests(since)
    latencies = [readied[key] - sent[key] for key in names]
    return {"all_ready": max(readied.values()) - min(sent.values()), "p50": median(latencies),
            "p99": percentile(latencies, 0.99), "requests": sum(requests.values()) / count,
            "request_kinds": requests, "server_cpu": server_cpu, "operator_cpu": operator_cpu}


async def floor(b: Bench, count: int, algorithm: str) -> dict[str, float]:
    """The Secrets of ``count`` ClusterPKIs, created by a lean client at the operator's concurrency: the
    time the server itself takes to store them; then they are deleted."""
    made = engine.build(spec.from_resource(clusterpki("floor", "floor", keyAlgorithm=algorithm)), engine.Existing(),
                        times.now())
    namespaces = [f"floor-{i}" for i in range(NAMESPACES)]
    bodies = []
    for i in range(count):
        namespace = namespaces[i % NAMESPACES]
        for component, wanted in of_pki(made).items():
            obj = secrets.secret_object(namespace, f"floor-{i}", component, wanted.kind, wanted.data, None, None, False)
            bodies.append((namespace, json.dumps(obj).encode()))
    await b.create_namespaces(namespaces)
    slots = asyncio.Semaphore(CONCURRENT_RECONCILES)
    headers = {"Content-Type": "application/json"}

    async def create(namespace: str, body: bytes) -> None:
        async with slots, b.session.post(f"{b.url}/api/v1/namespaces/{namespace}/secrets", data=body,
                                         headers=headers) as response:
            if response.status != 201:
                raise RuntimeError(f"the floor's create got {response.status}: {await response.text()}")

    start, server_cpu = time.monotonic(), b.server_cpu()
    await asyncio.gather(*(create(namespace, body) for namespace, body in bodies))
    took, server_cpu = time.monotonic() - start, b.server_cpu() - server_cpu

    async def delete(namespace: str, name: str) -> None:
        async with slots, b.session.delete(f"{b.url}/api/v1/namespaces/{namespace}/secrets/{name}") as response:
            response.raise_for_status()

    # gone before the operator's run, so that it competes with nothing
    await asyncio.gather(*(delete(namespace, json.loads(body)["metadata"]["name"]) for namespace, body in bodies))
    return {"floor": took, "floor_server_cpu": server_cpu, "floor_secrets": len(bodies),
            "floor_bytes": sum(len(body) for _, body in bodies) / len(bodies)}


async def api_floor(b: Bench, count: int, algorithm: str) -> dict[str, float]:
    """The operator's own 19 requests for each of ``count`` fresh ClusterPKIs, made by a lean client from
    precomputed bodies at the operator's concurrency (each ClusterPKI's in the operator's order: the
    metadata LIST of the namespace's other Secrets, the claim, the CA Secrets, the other Secrets, the
    status and the Event): what the API itself takes to issue the fleet, the operator's computation
    aside. The ClusterPKIs (made first, with no operator running) and their Secrets are deleted after."""
    claim, final, made = await _statuses(algorithm)
    pkis = [(f"api-floor-{i % NAMESPACES}", f"api-floor-{i}") for i in range(count)]
    await b.create_namespaces(sorted({namespace for namespace, _ in pkis}))
    for batch in range(0, count, 100):
        await asyncio.gather(*(b.api.apply_pki(clusterpki(namespace, name, keyAlgorithm=algorithm))
                               for namespace, name in pkis[batch:batch + 100]))
    slots = asyncio.Semaphore(CONCURRENT_RECONCILES)
    json_body, merge = {"Content-Type": "application/json"}, {"Content-Type": "application/merge-patch+json"}

    async def send(method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                   params: dict[str, str] | None = None) -> None:
        async with b.session.request(method, b.url + path, data=body, headers=headers, params=params) as response:
            await response.read()
            if response.status >= 300:
                raise RuntimeError(f"the API floor's {method} {path} got {response.status}")

    async def issue(namespace: str, name: str) -> None:
        pki_path = f"{GROUP_PATH}/namespaces/{namespace}/clusterpkis/{name}/status"
        secret_path = f"/api/v1/namespaces/{namespace}/secrets"
        bodies = [(component in catalog.CA_BY_COMPONENT, json.dumps({
            "apiVersion": "v1", "kind": "Secret", "type": kind, "data": data,
            "metadata": {"name": secrets.secret_name(name, component), "namespace": namespace,
                         "labels": secrets.labels(name, component)}}).encode())
            for component, (kind, data) in made.items()]
        event = json.dumps({"metadata": {"generateName": f"{name}."}, "type": "Normal", "reason": "Issued",
                            "message": "Issued 19", "involvedObject": {"apiVersion": f"{GROUP_PATH[6:]}",
                            "kind": "ClusterPKI", "namespace": namespace, "name": name}}).encode()
        async with slots:
            await send("GET", secret_path, params={"labelSelector": f"{secrets.LABEL_MANAGED_BY}!={secrets.MANAGER}",
                                                   "resourceVersion": "0"}, headers={"Accept": PARTIAL_METADATA})
            await send("PATCH", pki_path, claim, merge)
            for first in (True, False):
                await asyncio.gather(*(send("POST", secret_path, body, json_body) for ca, body in bodies if ca is first))
            await send("PATCH", pki_path, final, merge)
            await send("POST", f"/api/v1/namespaces/{namespace}/events", event, json_body)

    start, server_cpu = time.monotonic(), b.server_cpu()
    await asyncio.gather(*(issue(namespace, name) for namespace, name in pkis))
    took, server_cpu = time.monotonic() - start, b.server_cpu() - server_cpu
    await asyncio.gather(*(send("DELETE", f"{GROUP_PATH}/namespaces/{namespace}/clusterpkis/{name}")
                           for namespace, name in pkis))
    for batch in range(0, count, 100):
        await asyncio.gather(*(send("DELETE", f"/api/v1/namespaces/{namespace}/secrets/{name}-{component}")
                               for namespace, name in pkis[batch:batch + 100] for component in made))
    return {"api_floor": took, "api_floor_server_cpu": server_cpu}


async def _statuses(algorithm: str) -> tuple[bytes, bytes, dict[str, tuple[str, dict[str, str]]]]:
    """The claim and the status the operator patches onto a new ClusterPKI, and its Secrets (component ->
    type and data): one ClusterPKI issued by the controller's own loop on the unit tests' in-memory API."""
    from tests.unit.controller.world import World
    from tests.unit.controller.world import clusterpki as body

    world = World(body(keyAlgorithm=algorithm))
    patches: list[dict[str, Any]] = []
    patch_status = world.patch_status

    async def recorded(namespace: str, name: str, status: dict[str, Any], resource_version: str | None = None):
        patches.append(status)
        return await patch_status(namespace, name, status, resource_version)
    world.patch_status = recorded  # type: ignore[method-assign]
    await world.reconcile()
    claim, final = patches
    made = {s["metadata"]["labels"][secrets.LABEL_COMPONENT]: (s["type"], s["data"]) for s in world.secrets.values()}
    return json.dumps({"status": claim}).encode(), json.dumps({"status": final}).encode(), made


async def settle(operator_cpu: Any, window: float = 5.0, limit: float = 300.0) -> float:
    """Wait until the operator has worked off what issuance left (the tail of watch events): less
    than 1% of a core over ``window`` seconds. Returns how long that took."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        cpu = operator_cpu()
        await asyncio.sleep(window)
        if operator_cpu() - cpu < window / 100:
            break
    return time.monotonic() - start


async def steady(b: Bench, operator_cpu: Any, count: int, seconds: float) -> dict[str, Any]:
    settled = await settle(operator_cpu)
    since = await b.mark()
    writes_before = await asyncio.to_thread(b.plane.requests) if b.real else None
    cpu = operator_cpu()
    await asyncio.sleep(seconds)
    requests = await b.operator_requests(since)
    per_hour = 3600 / seconds
    result = {"settled": settled, "requests_per_pki_hour": sum(requests.values()) * per_hour / count,
              "cpu_per_hour": (operator_cpu() - cpu) * per_hour, "kinds": sorted(" ".join(k) for k in requests)[:5]}
    if b.real:  # every write the apiserver served in the window, whoever made it
        from tests.controlplane import WRITE_VERBS, difference

        served = difference(writes_before, await asyncio.to_thread(b.plane.requests))
        result["writes_per_minute"] = sum(n for k, n in served.items() if k[0] in WRITE_VERBS) * 60 / seconds
    return result


class Replicas:
    """The operator: one ``run -A``, or ``replicas`` of ``run -A --leader-elect --shards N``, each leading
    one part of the fleet."""

    def __init__(self, b: Bench, replicas: int) -> None:
        self.b, self.count = b, replicas
        self.members: list[OperatorProcess] = []
        self.args = ["--leader-elect", "--leader-election-namespace", LEASES, "--shards", str(replicas)] \
            if replicas > 1 else []

    async def start(self) -> Replicas:
        self.members = [await self.b.start_operator(*self.args) for _ in range(self.count)]
        return self

    async def stop(self) -> None:
        await asyncio.gather(*(member.stop() for member in self.members))

    async def reconciles(self) -> float:
        return sum([await member.reconciles() for member in self.members])

    def peak_rss_mb(self) -> float:
        """The largest replica's high-water mark."""
        return max(member.peak_rss_mb() for member in self.members)

    def cpu_seconds(self) -> float:
        return sum(member.cpu_seconds() for member in self.members)

    def reset_peak_rss(self) -> None:
        for member in self.members:
            member.reset_peak_rss()


async def resume(b: Bench, operator: Replicas, count: int) -> dict[str, Any]:
    """Replace the operator by a new one, and time its look at every ClusterPKI."""
    await operator.stop()
    since = await b.mark()
    start = time.monotonic()
    await operator.start()
    while await operator.reconciles() < count:
        await asyncio.sleep(0.1)
    checked = time.monotonic() - start
    await asyncio.sleep(2)  # anything the look would write has been written by now
    requests = await b.operator_requests(since)
    writes = sum(n for (verb, _, _), n in requests.items() if verb in ("POST", "PUT", "PATCH", "DELETE"))
    return {"resumed": checked, "resume_writes": writes, "resume_requests": sum(requests.values()) / count,
            "rss_resume": operator.peak_rss_mb()}


async def wave(b: Bench, count: int) -> dict[str, float]:
    async with b.session.get(f"{b.url}{GROUP_PATH}/clusterpkis") as response:
        fleet = (await response.json())["items"]
    due = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=60)
    serials = {(o["metadata"]["namespace"], o["metadata"]["name"]): {e["serialNumber"] for e in leaf_entries(o)}
               for o in fleet}
    renewed: dict[tuple[str, str], float] = {}
    done = asyncio.Event()

    def on_event(kind: str, obj: dict[str, Any], arrival: float) -> None:
        key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
        if kind != "DELETED" and ready(obj) and key not in renewed and \
                not serials[key] & {e["serialNumber"] for e in leaf_entries(obj)}:
            renewed[key] = arrival
            if len(renewed) == count:
                done.set()

    watch = await b.watch(f"{GROUP_PATH}/clusterpkis", on_event)
    try:
        async def patch(obj: dict[str, Any]) -> None:
            not_after = min(parse(e["notAfter"]) for e in leaf_entries(obj))
            renew_before = int((not_after - due).total_seconds())
            await b.api.patch("clusterpkis", obj["metadata"]["name"], {"spec": {"renewBefore": f"{renew_before}s"}},
                              obj["metadata"]["namespace"])
        await asyncio.gather(*(patch(obj) for obj in fleet))
        wait = (due - datetime.now(timezone.utc)).total_seconds()
        if wait < WAVE_LEAD:
            raise RuntimeError(f"the renewBefore patches took too long: only {wait:.0f}s are left before the wave")
        due_monotonic = time.monotonic() + wait
        await b.until(done, watch, wait + 1800)
    finally:
        watch.cancel()
    return {"renewed_all": max(renewed.values()) - due_monotonic}


async def measure(count: int, algorithm: str, steady_seconds: float, with_resume: bool, with_wave: bool,
                  real: bool, with_floor: bool = True, replicas: int = 1) -> dict[str, Any]:
    async with bench(real) as b:
        lower = {**await floor(b, count, algorithm), **await api_floor(b, count, algorithm)} if with_floor else {}
        if lower:
            print(f"{count}, floor: {lower}", file=sys.stderr)
        operator = await Replicas(b, replicas).start()
        try:
            result = {**lower, **await issuance(b, count, algorithm)}
            result["rss_issuance"] = operator.peak_rss_mb()
            print(f"{count}, issuance: {result}", file=sys.stderr)
            if steady_seconds:
                result.update(await steady(b, operator.cpu_seconds, count, steady_seconds))
            if with_resume:
                result.update(await resume(b, operator, count))
            if with_wave:
                operator.reset_peak_rss()
                result.update(await wave(b, count))
                result["rss_wave"] = operator.peak_rss_mb()
        finally:
            await operator.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, nargs="+", default=[1, 100, 500])
    parser.add_argument("--algorithm", default="ECDSA-P256")
    parser.add_argument("--steady", type=float, default=60, help="seconds of steady state to measure (0: skip)")
    parser.add_argument("--no-resume", dest="resume", action="store_false", help="skip the restart")
    parser.add_argument("--no-wave", dest="wave", action="store_false", help="skip the renewal wave")
    parser.add_argument("--real", action="store_true", help="on a real control plane (../shared/k8s), not the emulator")
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the floor")
    parser.add_argument("--replicas", type=int, default=1,
                        help="operator replicas, each leading a part of the fleet (run --leader-elect --shards N)")
    args = parser.parse_args()
    results = []
    for count in args.count:
        results.append((count, asyncio.run(measure(count, args.algorithm, args.steady, args.resume, args.wave,
                                                   args.real, args.floor, args.replicas))))
    print(f"Issuance ({args.algorithm}, {'a real control plane' if args.real else 'the emulator'}, "
          f"{args.replicas} operator replica{'s' if args.replicas > 1 else ''})")
    print(f"{'ClusterPKIs':>11} {'all Ready':>10} {'floor':>8} {'ratio':>6} {'p50':>8} {'p99':>8} {'requests/PKI':>13} "
          f"{'peak RSS':>9} {'operator CPU':>13} {'server CPU':>11}")
    for count, r in results:
        lower = f"{r['floor']:>7.1f}s {r['all_ready'] / r['floor']:>5.2f}x" if "floor" in r else f"{'-':>8} {'-':>6}"
        print(f"{count:>11} {r['all_ready']:>9.1f}s {lower} {r['p50']:>7.2f}s {r['p99']:>7.2f}s "
              f"{r['requests']:>13.1f} {r['rss_issuance']:>6.0f}MiB {r['operator_cpu']:>12.1f}s "
              f"{r['server_cpu']:>10.1f}s")
    if any("floor" in r for _, r in results):
        print("\nFloors (a lean client from precomputed bodies, at the operator's concurrency, on the same server)")
        print(f"{'ClusterPKIs':>11} {'Secrets alone':>14} {'server CPU':>11} {'the 19 requests':>16} {'server CPU':>11} "
              f"{'operator vs those':>18}")
        for count, r in results:
            if "floor" in r:
                print(f"{count:>11} {r['floor']:>13.1f}s {r['floor_server_cpu']:>10.1f}s {r['api_floor']:>15.1f}s "
                      f"{r['api_floor_server_cpu']:>10.1f}s {r['all_ready'] / r['api_floor']:>17.2f}x")
    if args.steady:
        print(f"\nSteady state (measured over {args.steady:.0f}s, scaled to an hour)")
        print(f"{'ClusterPKIs':>11} {'settled after':>14} {'requests/PKI/h':>15} {'CPU s/h':>8} "
              f"{'API writes/min':>15}  requests seen")
        for count, r in results:
            writes = f"{r['writes_per_minute']:.1f}" if "writes_per_minute" in r else "-"
            print(f"{count:>11} {r['settled']:>13.0f}s {r['requests_per_pki_hour']:>15.2f} {r['cpu_per_hour']:>8.1f} "
                  f"{writes:>15}  {', '.join(r['kinds']) or '-'}")
    if args.resume:
        print("\nResume (a new operator over the Ready fleet)")
        print(f"{'ClusterPKIs':>11} {'all checked':>12} {'writes':>7} {'requests/PKI':>13} {'peak RSS':>9}")
        for count, r in results:
            print(f"{count:>11} {r['resumed']:>11.1f}s {r['resume_writes']:>7} {r['resume_requests']:>13.1f} "
                  f"{r['rss_resume']:>6.0f}MiB")
    if args.wave:
        print("\nRenewal wave (every leaf of every ClusterPKI due at the same moment)")
        print(f"{'ClusterPKIs':>11} {'all renewed':>12} {'peak RSS':>9}")
        for count, r in results:
            print(f"{count:>11} {r['renewed_all']:>11.1f}s {r['rss_wave']:>6.0f}MiB")


if __name__ == "__main__":
    main()
