"""What only the emulator can show: every request each client made, and a watch held back.

A real apiserver counts requests only in aggregate (``apiserver_request_total``, shared with every
other client); the emulator logs each request with its client, so these tests can assert that a
reconcile made exactly one LIST, or that the operator never even read a CSR. And only the emulator
can delay watch events on purpose, as a busy apiserver does.
"""

from __future__ import annotations

import asyncio

from tests.csr_factory import kubelet_csr
from tests.operator.conftest import pki
from tests.runners import Operator


def secret_lists(emulator, name: str, since: int = 0) -> int:
    """The reconciles of ClusterPKI ``name`` after request ``since``: each one of a ClusterPKI whose Secrets
    exist starts with one LIST of them by label (a new one's, which its watch has not seen, are not listed)."""
    return sum(r.method == "GET" and r.path == "/api/v1/namespaces/team-a/secrets" and r.query.get("watch") != "true"
               and r.query.get("labelSelector", "").startswith(f"pki.clusterpki.dev/cluster-pki={name},")
               for r in emulator.requests[since:])


def committed(emulator, name: str) -> int:
    """The index of the request that committed the first issuance: the ClusterPKI's last status PATCH."""
    return max(i for i, r in enumerate(emulator.requests)
               if r.method == "PATCH" and r.path.endswith(f"/clusterpkis/{name}/status"))


async def test_the_operator_s_own_writes_do_not_trigger_reconciles(operator, api, emulator):
    await api.apply_pki(pki("alpha"), defaults=True)
    await api.ready("team-a", "alpha")
    await asyncio.sleep(1.5)
    assert secret_lists(emulator, "alpha", committed(emulator, "alpha")) == 0, \
        "no reconcile after the operator's own writes"


async def test_a_lagging_watch_does_not_run_the_create_handler_twice(operator, api, emulator):
    """A busy fleet's watch can lag behind the operator's writes by more than Kopf's default 5 s of
    consistency waiting; the status patch's event (older than Kopf's own annotation patch) must then
    not pass for a new, unhandled object."""
    emulator.watch_lag = 6.0
    await api.apply_pki(pki("alpha"), defaults=True)
    await api.ready("team-a", "alpha")
    await asyncio.sleep(9.0)  # the status patch's event has arrived; a second create would have run
    assert secret_lists(emulator, "alpha", committed(emulator, "alpha")) == 0


async def test_reconciles_beyond_the_bound_wait_their_turn(kubeconfig, api, emulator, monkeypatch):
    """A fleet-wide wave must not hold every ClusterPKI's Secrets and keys in memory at once: with one
    slot, the second reconcile's first request comes after the first one's last."""
    from clusterpki.controller import settings

    monkeypatch.setattr(settings, "CONCURRENT_RECONCILES", 1)
    operator = Operator()
    await operator.start()
    try:
        await asyncio.gather(*(api.apply_pki(pki(name), defaults=True) for name in ("one", "two")))
        await api.ready("team-a", "one")
        await api.ready("team-a", "two")
    finally:
        await operator.stop()

    def span(name: str) -> tuple[int, int]:
        """From the reconcile's claim to its commit (its first and last status PATCH), in request order."""
        patches = [i for i, r in enumerate(emulator.requests)
                   if r.method == "PATCH" and r.path.endswith(f"/clusterpkis/{name}/status")]
        return patches[0], patches[-1]

    first, second = sorted([span("one"), span("two")])
    assert first[1] < second[0], "the two reconciles ran at the same time"


async def test_without_a_policy_no_csr_is_even_read(operator, api, emulator):
    await api.create("certificatesigningrequests", kubelet_csr("untouched", "node-a"))
    await asyncio.sleep(1.5)
    assert not (emulator.get("certificatesigningrequests", "untouched").get("status") or {}).get("conditions")
    assert not [r for r in emulator.requests if "certificatesigningrequests" in r.path and r.by_operator]
