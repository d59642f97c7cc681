"""Two replicas of ``clusterpki run --leader-elect`` on a real kube-apiserver, as the Deployment runs them, with
the ServiceAccount's token and the manifests' Lease RBAC: one leads, the other stands by without a write,
takes over when the leader is killed or at once when it is stopped (it gives the Lease back), and a
leader that loses its Lease exits at once. A fleet in two
parts (``--shards 2``) is led by two replicas, one each, and a third takes over a part.

Failover is timed by ``bench/failover.py --real``; here only that it happens is asserted."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from clusterpki.kube.parts import lease_names, shard_of

from tests.e2e.conftest import pki
from tests.kube import Api
from tests.runners import OperatorProcess

LEASE_NAMESPACE, LEASE = "clusterpki-system", "clusterpki"


class Replicas:
    """Two operator processes campaigning for the one Lease, as the Deployment's two pods do."""

    def __init__(self, kubeconfig: Path, directory: Path, namespace: str) -> None:
        self.replicas = [OperatorProcess(kubeconfig, directory / f"replica-{i}.log", "-n", namespace,
                                         "--leader-elect", "--leader-election-namespace", LEASE_NAMESPACE)
                         for i in range(2)]

    async def start(self) -> None:
        for replica in self.replicas:
            await asyncio.to_thread(replica.start)

    async def leader(self, api: Api, exclude: OperatorProcess | None = None) -> OperatorProcess:
        def leading() -> OperatorProcess | None:
            return next((r for r in self.replicas if r is not exclude and r.process is not None
                         and "Leading: holding the Lease" in r.log()), None)
        return await api.wait_for(leading, 30, "a replica leading")

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


@pytest.fixture
async def replicas(operator_kubeconfig: Path, namespace: str, api: Api, tmp_path: Path
                   ) -> AsyncIterator[Replicas]:
    await api.delete("leases", LEASE, LEASE_NAMESPACE, missing_ok=True)
    pair = Replicas(operator_kubeconfig, tmp_path, namespace)
    await pair.start()
    try:
        yield pair
    finally:
        await asyncio.to_thread(pair.stop)
        await api.delete("leases", LEASE, LEASE_NAMESPACE, missing_ok=True)


async def test_one_replica_leads_the_other_stands_by_and_takes_over_when_it_is_killed(replicas, api, namespace):
    leader = await replicas.leader(api)
    standby = next(r for r in replicas.replicas if r is not leader)
    lease = await api.get("leases", LEASE, LEASE_NAMESPACE)
    assert lease["spec"]["holderIdentity"] in leader.log()
    assert lease["spec"]["leaseDurationSeconds"] == 10

    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    assert "Leading:" not in standby.log()
    assert "Activity 'start'" not in standby.log() and "alpha" not in standby.log(), \
        "a standby runs no handler and writes nothing"

    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait()
    leader.process = None
    await api.apply_pki(pki("beta", namespace))
    assert await replicas.leader(api, exclude=leader) is standby
    await api.ready(namespace, "beta", timeout=40)
    lease = await api.get("leases", LEASE, LEASE_NAMESPACE)
    assert lease["spec"]["holderIdentity"] in standby.log()


async def test_a_leader_stopped_as_a_pod_is_gives_its_lease_back_and_the_standby_leads_at_once(replicas, api):
    """SIGTERM (a rollout, a drain): the leader stops its work, then gives the Lease back, so that the
    standby leads within a retry period, not once the Lease lapses (10 s)."""
    leader = await replicas.leader(api)
    standby = next(r for r in replicas.replicas if r is not leader)
    await asyncio.to_thread(leader.stop)
    leader.process = None
    assert f"Gave the Lease {LEASE_NAMESPACE}/{LEASE} back." in leader.log()
    started = asyncio.get_running_loop().time()
    assert await replicas.leader(api, exclude=leader) is standby
    assert asyncio.get_running_loop().time() - started < 5, "taken at the next retry, not after the lease lapsed"


async def test_a_standby_says_so_and_stopped_ends_at_once_and_cleanly(replicas, api):
    leader = await replicas.leader(api)
    standby = next(r for r in replicas.replicas if r is not leader)
    said = f"Standing by: the Lease {LEASE_NAMESPACE}/{LEASE} is held by another replica."
    await api.wait_for(lambda: said in standby.log(), 15, "the standby saying so")
    standby.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(standby.process.wait, 10) == 0
    standby.process = None
    assert "Stopped while standing by." in standby.log()


async def test_a_leader_that_loses_its_lease_exits_at_once(replicas, api):
    leader = await replicas.leader(api)
    lease = await api.get("leases", LEASE, LEASE_NAMESPACE)
    lease["spec"]["holderIdentity"] = "an-intruder"
    await api.replace("leases", lease, LEASE_NAMESPACE)

    def exited() -> int | None:
        return leader.process.poll()
    assert await api.wait_for(exited, 30, "the deposed leader to exit") == 1
    assert "Lost the Lease clusterpki-system/clusterpki" in leader.log()
    assert "Exiting, to restart as a standby." in leader.log()
    leader.process = None


async def test_a_fleet_in_two_parts_is_led_by_one_replica_each_and_a_standby_takes_over_a_part(
        operator_kubeconfig, api, namespace, tmp_path):
    """Three replicas of ``run --leader-elect --shards 2``: two lead a part each (by namespace), each
    handles only its own part's ClusterPKIs, and the third takes over the part whose leader is killed."""
    other = next(f"{namespace}-{i}" for i in range(100) if shard_of(f"{namespace}-{i}", 2) != shard_of(namespace, 2))
    leases = lease_names(2)
    await api.create("namespaces", {"metadata": {"name": other, "labels": {"clusterpki-e2e": "true"}}})
    for lease in leases:
        await api.delete("leases", lease, LEASE_NAMESPACE, missing_ok=True)
    replicas = [OperatorProcess(operator_kubeconfig, tmp_path / f"replica-{i}.log", "-n", namespace, "-n", other,
                                "--leader-elect", "--leader-election-namespace", LEASE_NAMESPACE, "--shards", "2")
                for i in range(3)]
    try:
        for replica in replicas:
            await asyncio.to_thread(replica.start)

        def leading() -> dict[str, OperatorProcess] | None:
            held = {lease: r for r in replicas if r.process is not None for lease in leases
                    if f"Leading: holding the Lease {LEASE_NAMESPACE}/{lease} " in r.log()}
            return held if len(held) == 2 else None
        held = await api.wait_for(leading, 30, "both parts led")
        mine, theirs = held[leases[shard_of(namespace, 2)]], held[leases[shard_of(other, 2)]]
        standby = next(r for r in replicas if r not in (mine, theirs))
        await api.wait_for(lambda: "are held by other replicas." in standby.log(), 15, "the standby saying so")
        await api.apply_pki(pki("alpha", namespace))
        await api.apply_pki(pki("beta", other))
        await api.ready(namespace, "alpha")
        await api.ready(other, "beta")
        assert f"{namespace}/alpha" in mine.log() and f"{other}/beta" not in mine.log()
        assert f"{other}/beta" in theirs.log() and f"{namespace}/alpha" not in theirs.log()
        assert "Leading:" not in standby.log() and "alpha" not in standby.log(), "a standby writes nothing"

        mine.process.send_signal(signal.SIGKILL)
        mine.process.wait()
        mine.process = None
        await api.apply_pki(pki("gamma", namespace))
        await api.ready(namespace, "gamma", timeout=40)
        assert f"Leading: holding the Lease {LEASE_NAMESPACE}/{leases[shard_of(namespace, 2)]} " in standby.log()
        assert f"{namespace}/gamma" not in theirs.log(), "the other part's leader never handles this part"
    finally:
        for replica in replicas:
            await asyncio.to_thread(replica.stop)
        for lease in leases:
            await api.delete("leases", lease, LEASE_NAMESPACE, missing_ok=True)
        await api.delete("namespaces", other, missing_ok=True)
