"""The kubelet CSR triggers: a Node index, and one decision (one API write) per CSR.

Registered only with ``clusterpki run --csr-policy NS/NAME``: that ClusterPKI's ``spec.kubelet``
and ``validity.certificate`` govern the decisions, and its ``ca`` signs when ``signCSRs`` is on.
The watches are ``on.event`` handlers: nothing is ever written onto a CSR but its decision.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

import kopf

from clusterpki import certificates, csr, metrics, secrets, spec
from clusterpki.store import ApiError

if TYPE_CHECKING:
    from clusterpki.handlers import State

NODE_RECHECK = 2.0  # seconds between looks at a serving CSR whose Node is not seen yet
LOGGER = logging.getLogger("clusterpki.csr")


class CsrKey(NamedTuple):
    """A CSR to look at again, in the same scheduler as the ClusterPKIs."""

    name: str


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.on.event("", "v1", "nodes", registry=registry)(track_node)
    kopf.on.event("certificates.k8s.io", "v1", "certificatesigningrequests", registry=registry)(track_csr)


def track_node(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    state: State = memo.state
    name = event["object"]["metadata"]["name"]
    if event["type"] == "DELETED":
        state.nodes.pop(name, None)
        return
    state.nodes[name] = csr.node_of(event["object"])
    for pending, body in state.waiting.items():  # its serving CSRs need not wait any longer
        if body["spec"].get("username") == f"{csr.NODE_PREFIX}{name}":
            state.scheduler.after(CsrKey(pending), 0)


async def track_csr(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    state: State = memo.state
    body = event["object"]
    name = body["metadata"]["name"]
    if event["type"] == "DELETED" or not (body.get("spec") or {}).get("signerName") in csr.SIGNERS:
        state.waiting.pop(name, None)
        state.first_seen.pop(name, None)
        return
    if csr.concerns(body):
        await decide(state, body)
    elif csr.needs_signature(body):
        state.waiting.pop(name, None)
        await sign(state, body)


async def decide(state: State, body: dict[str, Any]) -> None:
    name = body["metadata"]["name"]
    now = certificates.utcnow()
    state.first_seen.setdefault(name, now)
    policy = _policy(state)
    if policy is None:  # looked at again when the policy ClusterPKI arrives
        state.waiting[name] = body
        return
    if name in state.deciding:
        return
    decision = csr.decide(body, state.nodes, policy.kubelet, policy.cert_validity)
    if decision is None:
        return
    if decision.verdict == csr.PENDING:
        decision = csr.node_not_found(body, now, state.first_seen[name])
        if decision is None:
            state.waiting[name] = body
            state.scheduler.after(CsrKey(name), NODE_RECHECK)
            return
    state.waiting.pop(name, None)
    state.first_seen.pop(name, None)
    state.deciding.add(name)
    try:
        await state.store.decide_csr(csr.with_decision(body, decision, now))
    except ApiError as exc:  # e.g. 409: the CSR changed meanwhile; its next event brings it back
        LOGGER.warning(f"CSR {name}: could not record {decision.verdict} ({decision.reason}): {exc}")
        return
    finally:
        state.deciding.discard(name)
    signer = body["spec"]["signerName"]
    metrics.CSR_DECISIONS.labels(signer=signer, decision=decision.verdict, reason=decision.reason).inc()
    LOGGER.info(f"CSR {name} ({signer}, {body['spec'].get('username')}): {decision.verdict}, "
                f"{decision.reason}: {decision.message}")


async def sign(state: State, body: dict[str, Any]) -> None:
    policy = _policy(state)
    if policy is None or not policy.kubelet.sign_csrs:
        return
    name = body["metadata"]["name"]
    namespace, pki_name = state.csr_policy
    try:
        ca_secret = await state.store.get(namespace, secrets.secret_name(pki_name, "ca"))
        if ca_secret is None:
            LOGGER.warning(f"CSR {name}: not signed, the policy's CA Secret does not exist yet")
            return
        ca = secrets.read_pair(ca_secret)
        certificate = csr.sign(body, ca, policy.cert_validity, certificates.utcnow())
        await state.store.set_certificate({**body, "status": {**(body.get("status") or {}),
                                                              "certificate": certificate}})
    except (ApiError, ValueError) as exc:
        LOGGER.warning(f"CSR {name}: could not sign it: {exc}")
        return
    LOGGER.info(f"CSR {name}: signed with the CA of ClusterPKI {namespace}/{pki_name}")


def policy_arrived(state: State) -> None:
    """The policy ClusterPKI is known now: look again at every CSR that waited for it."""
    for name in state.waiting:
        state.scheduler.after(CsrKey(name), 0)


def _policy(state: State) -> spec.Spec | None:
    """The policy's spec, parsed once per version of the policy ClusterPKI, not once per CSR."""
    body = state.bodies.get(state.csr_policy)
    if body is None:
        LOGGER.warning(f"The CSR policy ClusterPKI {'/'.join(state.csr_policy)} is not known (yet): "
                       "CSRs wait")
        return None
    version = body["metadata"].get("resourceVersion")
    cached = state.policy_cache
    if cached is not None and cached[0] == version:
        return cached[1]
    try:
        parsed = spec.from_resource(body)
    except spec.SpecError as exc:
        LOGGER.warning(f"The CSR policy ClusterPKI is invalid, CSRs wait: {exc}")
        parsed = None
    state.policy_cache = (version, parsed)
    return parsed
