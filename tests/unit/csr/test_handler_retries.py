"""A decision the API did not take is written again: through an apiserver's restart, or a serving
certificate the operator does not trust yet, a node agent's CSR once stayed unapproved for good, and the
node agent waited five minutes for it (a ca rotation taken back then never reached Aborted)."""

from __future__ import annotations

import asyncio

import pytest
from clusterpki.csr import handlers
from clusterpki.kube.api import ApiError

from tests.csr_factory import kubelet_csr, node_body
from tests.helpers import document


class Api:
    def __init__(self, failures: list[ApiError]) -> None:
        self.failures, self.decided = failures, []

    async def decide(self, body):
        if self.failures:
            raise self.failures.pop(0)
        self.decided.append(body["metadata"]["name"])


def state_with(api: Api) -> handlers.CsrState:
    state = handlers.CsrState(api, ("ns", "p"))
    state.policy_body = {**document("p"), "metadata": {"name": "p", "namespace": "ns", "resourceVersion": "1"}}
    state.node_watch.synced.add(None)
    handlers.track_node(state, "ADDED", node_body("node-a", ("node-a",), ("10.0.0.1",)))
    return state


@pytest.mark.parametrize("status, again", [(0, True), (503, True), (409, False), (404, False)])
async def test_a_decision_the_api_did_not_take_is_written_again_unless_the_csr_changed_or_went(
        status, again, monkeypatch):
    monkeypatch.setattr(handlers, "API_RETRY", 0.05)
    api = Api([ApiError("decide", "CSR c", status, "ClientConnectorCertificateError")])
    state = state_with(api)
    runner = asyncio.create_task(state.scheduler.run())
    try:
        await handlers.decide(state, kubelet_csr("c", "node-a"))
        await asyncio.sleep(0.5)
    finally:
        await state.scheduler.stop(runner)
    assert api.decided == (["c"] if again else [])


async def test_an_approved_csr_is_signed_from_the_approval_s_answer_once_without_waiting_for_the_watch():
    """Found by the HA proof: the approval of a node agent's CSR was written on its retry, and the CSR
    watch (through a load balancer, across apiserver restarts) never brought the approved CSR back, so it
    was never signed. The approval's own answer is signed at once; the watch's copy is not signed again."""
    import copy

    from clusterpki.csr.rules import ROTATION_SIGNER

    from tests.unit.controller.world import World, clusterpki

    world = World(clusterpki("p", kubelet={"signCSRs": True}))
    await world.reconcile()

    class Signing:
        def __init__(self) -> None:
            self.signed: list[str] = []

        async def decide(self, body):
            return copy.deepcopy(body)  # the API's answer: the CSR with its condition

        async def secret(self, namespace, name):
            return copy.deepcopy(world.secrets[name])

        async def set_certificate(self, body):
            self.signed.append(body["metadata"]["name"])

    api = Signing()
    state = handlers.CsrState(api, ("ns", "p"))
    state.policy_body = world.body
    state.node_watch.synced.add(None)
    handlers.track_node(state, "ADDED", node_body("node-a", ("node-a",), ("10.0.0.1",)))
    body = kubelet_csr("agent-1", "node-a", signerName=ROTATION_SIGNER)
    await handlers.decide(state, body)
    assert api.signed == ["agent-1"], "signed without any watch event"
    approved = handlers.csr.with_decision(body, handlers.csr.Decision(handlers.csr.APPROVED,
                                                                      next(iter(handlers.csr.Reason)), "x"),
                                          handlers.times.now())
    assert handlers.csr.needs_signature(approved)
    handlers.track_csr(state, "MODIFIED", approved)  # the watch's copy, approved and not signed yet
    await asyncio.gather(*state.tasks)
    assert api.signed == ["agent-1"], "never signed twice"

    again = copy.deepcopy(body)  # the kubelet's CSR made again under the same name, the old one's DELETED missed
    again["metadata"]["uid"] = "another"
    await handlers.decide(state, again)
    assert api.signed == ["agent-1", "agent-1"], "a CSR of the same name but another life is signed"

    failing = copy.deepcopy(body)
    failing["metadata"].update(name="agent-2", uid="u2")
    api.set_certificate = _fails_once(api.set_certificate)
    handlers.API_RETRY = 0.01
    runner = asyncio.create_task(state.scheduler.run())
    try:
        await handlers.decide(state, failing)
        for _ in range(50):
            if "agent-2" in api.signed:
                break
            await asyncio.sleep(0.02)
    finally:
        await state.scheduler.stop(runner)
        handlers.API_RETRY = 2.0
    assert api.signed[-1] == "agent-2", "a signature the API did not take is not taken for done"


def _fails_once(write):
    failed = []

    async def once(body):
        if not failed:
            failed.append(body)
            raise ApiError("sign", "CSR", 503, "unavailable")
        await write(body)
    return once


async def test_the_csrs_are_listed_again_every_so_often_so_a_quiet_watch_leaves_none_unseen():
    state = state_with(Api([]))
    restarts = []
    state.csr_watch.restart = lambda namespace, why="behind": restarts.append((namespace, why))
    relisting = asyncio.create_task(handlers.relist(state, every=0.01))
    await asyncio.sleep(0.1)
    relisting.cancel()
    await asyncio.gather(relisting, return_exceptions=True)
    assert len(restarts) >= 3 and set(restarts) == {("", "")}, "quietly: it was not found behind"
