"""Kubelet CSR decisions on a real kube-apiserver, against the real Nodes' addresses.

CSRs are created as the kubelet would create them, by impersonating ``system:node:<name>`` in
``system:nodes`` (so ``spec.username`` and ``spec.groups`` are set by the apiserver, not by the test),
and the apiserver enforces its own rules on the operator's approval and signing (the ``approve`` and
``sign`` verbs on exactly the kubelet signers). Writes are counted from a watch: each write to a CSR
is one MODIFIED event. Every CSR, Node and binding these tests create, they delete.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from clusterpki.csr.metrics import CSR_SIGNING_REFUSED
from clusterpki.csr.rules import CLIENT_SIGNER, ROTATION_SIGNER, SERVING_SIGNER
from cryptography import x509
from multidict import CIMultiDict

from tests.csr_factory import node_body, request_pem
from tests.e2e.conftest import pki
from tests.kube import Api, Recorder, cert_of
from tests.runners import Operator

PREFIX = f"cpki-e2e-{secrets.token_hex(3)}"
CLIENT = ["digital signature", "client auth"]
SERVING = ["digital signature", "server auth"]
# node-a as the control-plane harness registers it: what its kubelet may put in a serving certificate.
NODE, NODE_HOST, NODE_IP = "node-a", "node-a", "127.0.1.5"


def as_user(user: str, *groups: str) -> CIMultiDict:
    headers = CIMultiDict({"Impersonate-User": user})
    for group in (*groups, "system:authenticated"):
        headers.add("Impersonate-Group", group)
    return headers


def as_node(node: str) -> CIMultiDict:
    return as_user(f"system:node:{node}", "system:nodes")


class Csrs:
    """Creates CSRs under unique names, and deletes them (cluster-scoped) at the end."""

    def __init__(self, api: Api) -> None:
        self.api, self.names = api, []

    async def submit(self, suffix: str, signer: str, usages: list[str], headers: CIMultiDict | None,
                     expiration: int | None = None, **request) -> str:
        name = f"{PREFIX}-{suffix}"
        spec = {"signerName": signer, "usages": usages, "request": request_pem(**request)}
        if expiration:
            spec["expirationSeconds"] = expiration
        self.names.append(name)
        await self.api.create("certificatesigningrequests", {"metadata": {"name": name}, "spec": spec},
                              headers=headers)
        return name

    async def decision(self, name: str) -> tuple[str, str] | None:
        obj = await self.api.get("certificatesigningrequests", name)
        decided = [c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                   if c["type"] in ("Approved", "Denied")]
        return (decided[0]["type"], decided[0].get("reason", "")) if decided else None

    async def cleanup(self) -> None:
        for name in self.names:
            async with self.api.session.delete(self.api.url + self.api.path("certificatesigningrequests", None, name)):
                pass


@pytest.fixture
async def csrs(api: Api) -> AsyncIterator[Csrs]:
    made = Csrs(api)
    try:
        yield made
    finally:
        await made.cleanup()


@pytest.fixture
async def policy_operator(as_operator, api: Api, namespace: str, csrs: Csrs
                          ) -> AsyncIterator[Callable[..., Awaitable[Operator]]]:
    """Starts the operator with ClusterPKI ``policy`` of this ``spec.kubelet`` as its CSR policy."""
    runners: list[Operator] = []

    async def start(**kubelet: Any) -> Operator:
        await api.apply_pki(pki("policy", namespace, kubelet=kubelet))
        runner = Operator(csr_policy=(namespace, "policy"), namespaces=(namespace,))
        await runner.start()
        runners.append(runner)
        await api.ready(namespace, "policy")
        return runner
    try:
        yield start
    finally:
        for runner in runners:
            await runner.stop()


@pytest.fixture
async def csr_operator(policy_operator) -> Operator:
    return await policy_operator(signCSRs=True)


@pytest.fixture
async def bootstrappers(api: Api) -> AsyncIterator[None]:
    """kubeadm's binding that lets bootstrap tokens create CSRs (the harness has none)."""
    name = f"{PREFIX}-bootstrappers"
    async with api.session.post(api.url + "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json={
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:node-bootstrapper"},
            "subjects": [{"kind": "Group", "name": "system:bootstrappers",
                          "apiGroup": "rbac.authorization.k8s.io"}]}) as response:
        assert response.status == 201, await response.text()
    try:
        yield
    finally:
        async with api.session.delete(f"{api.url}/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}"):
            pass


BOOTSTRAP = as_user("system:bootstrap:abcdef", "system:bootstrappers")
NODE_CN = f"system:node:{NODE}"
MATRIX = [
    # (suffix, signer, usages, requester, request, expected decision)
    ("ok-client", CLIENT_SIGNER, CLIENT, as_node(NODE), {"cn": NODE_CN}, ("Approved", "AutoApproved")),
    ("ok-serving", SERVING_SIGNER, SERVING, as_node(NODE), {"cn": NODE_CN, "dns": (NODE_HOST,), "ips": (NODE_IP,)},
     ("Approved", "AutoApproved")),
    ("ok-bootstrap", CLIENT_SIGNER, CLIENT, BOOTSTRAP, {"cn": "system:node:node-new"}, ("Approved", "AutoApproved")),
    ("other-cn", CLIENT_SIGNER, CLIENT, as_node(NODE), {"cn": "system:node:node-b"}, ("Denied", "NodeNameMismatch")),
    ("not-a-node", CLIENT_SIGNER, CLIENT, None, {"cn": NODE_CN}, ("Denied", "RequesterNotANode")),
    ("other-node-san", SERVING_SIGNER, SERVING, as_node(NODE), {"cn": NODE_CN, "dns": ("node-b",)},
     ("Denied", "SANNotOwnedByNode")),
    ("other-node-ip", SERVING_SIGNER, SERVING, as_node(NODE), {"cn": NODE_CN, "ips": ("127.0.1.6",)},
     ("Denied", "SANNotOwnedByNode")),
    ("uri-san", SERVING_SIGNER, SERVING, as_node(NODE), {"cn": NODE_CN, "uris": ("spiffe://evil/x",)},
     ("Denied", "SANTypeNotAllowed")),
    ("email-san", SERVING_SIGNER, SERVING, as_node(NODE), {"cn": NODE_CN, "emails": ("a@evil.example",)},
     ("Denied", "SANTypeNotAllowed")),
    ("wrong-o", CLIENT_SIGNER, CLIENT, as_node(NODE), {"cn": NODE_CN, "orgs": ("system:masters",)},
     ("Denied", "SubjectMismatch")),
    ("extra-usage", CLIENT_SIGNER, [*CLIENT, "server auth"], as_node(NODE), {"cn": NODE_CN},
     ("Denied", "UsagesNotAllowed")),
    ("rsa-1024", CLIENT_SIGNER, CLIENT, as_node(NODE), {"cn": NODE_CN, "key_kind": "rsa1024"}, ("Denied", "WeakKey")),
    ("bootstrap-takeover", CLIENT_SIGNER, CLIENT, BOOTSTRAP, {"cn": NODE_CN}, ("Denied", "BootstrapForExistingNode")),
    # The operator's own signer, which node agents ask in a ca rotation: the node itself, nobody else
    ("rotation-own", ROTATION_SIGNER, CLIENT, as_node(NODE), {"cn": NODE_CN}, ("Approved", "AutoApproved")),
    ("rotation-other-cn", ROTATION_SIGNER, CLIENT, as_node(NODE), {"cn": "system:node:node-b"},
     ("Denied", "NodeNameMismatch")),
    ("rotation-bootstrap", ROTATION_SIGNER, CLIENT, BOOTSTRAP, {"cn": "system:node:node-new"},
     ("Denied", "RequesterNotANode")),
    ("rotation-masters", ROTATION_SIGNER, CLIENT, as_node(NODE), {"cn": NODE_CN, "orgs": ("system:masters",)},
     ("Denied", "SubjectMismatch")),
]


async def test_the_matrix_is_decided_with_one_write_each(csr_operator, api, csrs, bootstrappers):
    async with Recorder(api, "certificatesigningrequests") as recorder:
        names = {}
        for suffix, signer, usages, requester, request, _ in MATRIX:
            names[suffix] = await csrs.submit(suffix, signer, usages, requester, **request)
        other = await csrs.submit("other-signer", "kubernetes.io/kube-apiserver-client", CLIENT, None,
                                  cn="someone", orgs=())

        async def decided():
            return all([await csrs.decision(n) for n in names.values()])
        await api.wait_for(decided, timeout=30, what="every CSR decided")
        assert {s: await csrs.decision(names[s]) for s, *_ in MATRIX} == {s: row[-1] for s, *row in MATRIX}
        denied = await api.get("certificatesigningrequests", names["other-node-ip"])
        assert denied["status"]["conditions"][0]["message"] == f"127.0.1.6 is not an address of {NODE}"
        await asyncio.sleep(1)
    # The decision is the operator's one write to a denied CSR; an approved one is signed too (signCSRs).
    for suffix, *_, (verdict, _) in MATRIX:
        assert len(recorder.of(names[suffix], "MODIFIED")) == (2 if verdict == "Approved" else 1), suffix
    assert recorder.of(other, "MODIFIED") == [], "another signer's CSR is never written to"


async def test_approved_csrs_are_signed_with_the_policy_ca(csr_operator, api, csrs, namespace):
    name = await csrs.submit("signed", SERVING_SIGNER, SERVING, as_node(NODE), expiration=3600,
                             cn=NODE_CN, dns=(NODE_HOST,), ips=(NODE_IP,))

    async def signed():
        obj = await api.get("certificatesigningrequests", name)
        return ((obj or {}).get("status") or {}).get("certificate")
    certificate = x509.load_pem_x509_certificate(base64.b64decode(await api.wait_for(signed, what="the certificate")))
    certificate.verify_directly_issued_by(cert_of(await api.get("secrets", "policy-ca", namespace)))
    assert (certificate.not_valid_after_utc - certificate.not_valid_before_utc).total_seconds() == 3600 + 300
    assert certificate.subject.rfc4514_string() == f"CN={NODE_CN},O=system:nodes"


async def test_a_serving_csr_waits_for_its_node(csr_operator, api, csrs):
    node = f"{PREFIX}-late"
    name = await csrs.submit("late", SERVING_SIGNER, SERVING, as_node(node), cn=f"system:node:{node}",
                             dns=(node,), ips=("127.0.1.9",))
    await asyncio.sleep(2)
    assert await csrs.decision(name) is None, "no decision while the Node is not registered"
    await api.create_node(node_body(node, (node,), ("127.0.1.9",)))
    try:
        await api.wait_for(lambda: _is(csrs, name, ("Approved", "AutoApproved")), what="approval")
    finally:
        await api.delete("nodes", node)


async def _is(csrs: Csrs, name: str, expected: tuple[str, str]) -> bool:
    return await csrs.decision(name) == expected


async def test_a_restart_redecides_nothing(csr_operator, api, csrs):
    name = await csrs.submit("once", SERVING_SIGNER, SERVING, as_node(NODE), cn=NODE_CN, ips=("10.9.9.9",))
    await api.wait_for(lambda: _is(csrs, name, ("Denied", "SANNotOwnedByNode")), what="the decision")
    async with Recorder(api, "certificatesigningrequests") as recorder:
        await csr_operator.restart()
        await asyncio.sleep(1.5)
    assert recorder.of(name) == []


async def test_csrs_seen_before_the_policy_wait_for_it(as_operator, api, namespace, csrs):
    name = await csrs.submit("early", SERVING_SIGNER, SERVING, as_node(NODE), cn=NODE_CN, dns=(NODE_HOST,))
    runner = Operator(csr_policy=(namespace, "policy"), namespaces=(namespace,))
    await runner.start()
    try:
        await asyncio.sleep(1)
        assert await csrs.decision(name) is None, "no policy, no decision"
        await api.apply_pki(pki("policy", namespace))
        await api.wait_for(lambda: _is(csrs, name, ("Approved", "AutoApproved")), what="the decision")
    finally:
        await runner.stop()


async def test_signing_refuses_what_an_admin_approved_by_mistake(policy_operator, api, csrs, namespace):
    """The operator approves no client CSR, but signs what others approve: a node asks for cluster-admin's
    certificate on the kubelet client signer, an admin approves it, and it is refused, not signed."""
    await policy_operator(approveClientCSRs=False, signCSRs=True)
    before = CSR_SIGNING_REFUSED.labels(signer=CLIENT_SIGNER, reason="SubjectMismatch")._value.get()
    name = await csrs.submit("mallory", CLIENT_SIGNER, CLIENT, as_node(NODE), cn="mallory", orgs=("system:masters",))
    await asyncio.sleep(0.5)
    assert await csrs.decision(name) is None, "approveClientCSRs: false leaves it to others"
    body = await api.get("certificatesigningrequests", name)
    body["status"] = {"conditions": [{"type": "Approved", "status": "True", "reason": "ByMistake",
                                      "message": "kubectl certificate approve"}]}
    await api.replace_subresource("certificatesigningrequests", body, "approval")

    async def failed():
        obj = await api.get("certificatesigningrequests", name)
        return [c for c in obj["status"].get("conditions") or [] if c["type"] == "Failed"]
    (condition,) = await api.wait_for(failed, what="the Failed condition")
    assert condition["reason"] == "SigningRefused"
    assert "SubjectMismatch: the subject 'CN=mallory,O=system:masters' is not exactly" in condition["message"]
    await asyncio.sleep(0.5)
    assert not (await api.get("certificatesigningrequests", name))["status"].get("certificate")
    assert await api.has_event(namespace, "SigningRefused", f"CSR {name}")
    assert CSR_SIGNING_REFUSED.labels(signer=CLIENT_SIGNER, reason="SubjectMismatch")._value.get() == before + 1


async def test_serving_names_are_bounded_by_the_policy(policy_operator, api, csrs):
    node = f"{PREFIX}-bounded"
    await api.create_node(node_body(node, (node, f"{node}.nodes.example"), ("127.0.1.9", "192.0.2.9")))
    try:
        await policy_operator(servingNames={"ipRanges": ["127.0.1.0/24"], "dnsNames": ["{node}.nodes.example"],
                                            "maxNames": 2})
        cn = f"system:node:{node}"
        names = {
            "fits": await csrs.submit("fits", SERVING_SIGNER, SERVING, as_node(node), cn=cn,
                                      dns=(f"{node}.nodes.example",), ips=("127.0.1.9",)),
            "ip": await csrs.submit("ip", SERVING_SIGNER, SERVING, as_node(node), cn=cn, ips=("192.0.2.9",)),
            "dns": await csrs.submit("dns", SERVING_SIGNER, SERVING, as_node(node), cn=cn, dns=(node,)),
            "many": await csrs.submit("many", SERVING_SIGNER, SERVING, as_node(node), cn=cn,
                                      dns=(f"{node}.nodes.example",), ips=("127.0.1.9", "192.0.2.9")),
        }

        async def decided():
            return all([await csrs.decision(n) for n in names.values()])
        await api.wait_for(decided, what="every CSR decided")
        assert {k: await csrs.decision(n) for k, n in names.items()} == {
            "fits": ("Approved", "AutoApproved"), "ip": ("Denied", "SANOutsideBounds"),
            "dns": ("Denied", "SANOutsideBounds"), "many": ("Denied", "TooManySANs")}
    finally:
        await api.delete("nodes", node)
