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
