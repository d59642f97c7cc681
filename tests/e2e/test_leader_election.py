"""Two replicas of ``clusterpki run --leader-elect`` on a real kube-apiserver, as the Deployment runs them, with
the ServiceAccount's token and the manifests' Lease RBAC: one leads, the other stands by without a write,
takes over when the leader is killed, and a leader that loses its Lease exits at once.

Failover is timed by ``bench/failover.py --real``; here only that it happens is asserted."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

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
