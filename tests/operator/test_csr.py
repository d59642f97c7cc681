"""Kubelet CSR approval through the real operator: decisions, zero writes elsewhere, restart, signing."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import pytest
from clusterpki.csr import CLIENT_SIGNER, SERVING_SIGNER
from cryptography import x509
from prometheus_client import REGISTRY

from tests.csr_factory import kubelet_csr, node_body
from tests.operator.conftest import Operator
from tests.operator.test_issuance import pki

BOOTSTRAP = {"username": "system:bootstrap:abcdef", "groups": ["system:bootstrappers", "system:authenticated"]}
MATRIX = [
    # (name, csr, expected condition type, expected reason)
    ("ok-client", kubelet_csr("ok-client", "node-a"), "Approved", "AutoApproved"),
    ("ok-serving", kubelet_csr("ok-serving", "node-a", serving=True), "Approved", "AutoApproved"),
    ("ok-bootstrap", kubelet_csr("ok-bootstrap", "node-new", **BOOTSTRAP), "Approved", "AutoApproved"),
    ("other-cn", kubelet_csr("other-cn", cn="system:node:node-b"), "Denied", "NodeNameMismatch"),
    ("not-a-node", kubelet_csr("not-a-node", username="mallory", groups=["system:authenticated"]), "Denied",
     "RequesterNotANode"),
    ("other-san", kubelet_csr("other-san", serving=True, dns=("node-b.internal",)), "Denied", "SANNotOwnedByNode"),
    ("foreign-ip", kubelet_csr("foreign-ip", serving=True, ips=("10.0.0.99",)), "Denied", "SANNotOwnedByNode"),
    ("uri-san", kubelet_csr("uri-san", serving=True, uris=("spiffe://evil",)), "Denied", "SANTypeNotAllowed"),
    ("email-san", kubelet_csr("email-san", serving=True, emails=("a@evil",)), "Denied", "SANTypeNotAllowed"),
    ("wrong-o", kubelet_csr("wrong-o", orgs=("system:masters",)), "Denied", "SubjectMismatch"),
    ("extra-usage", kubelet_csr("extra-usage", usages=["digital signature", "client auth", "server auth"]),
     "Denied", "UsagesNotAllowed"),
    ("rsa-1024", kubelet_csr("rsa-1024", key_kind="rsa1024"), "Denied", "WeakKey"),
    ("bootstrap-takeover", kubelet_csr("bootstrap-takeover", "node-a", **BOOTSTRAP), "Denied",
     "BootstrapForExistingNode"),
]


@pytest.fixture
async def csr_operator(kubeconfig, api) -> AsyncIterator[Operator]:
    await api.apply_pki(pki("policy", kubelet={"signCSRs": True}))
    for node in (node_body("node-a", ("node-a.internal",), ("10.0.0.1",)),
                 node_body("node-b", ("node-b.internal",), ("10.0.0.2",))):
        await api.create_node(node)
    runner = Operator(csr_policy=("team-a", "policy"))
    await runner.start()
    try:
        await api.ready("team-a", "policy")
        yield runner
    finally:
        await runner.stop()


def condition(emulator, name: str) -> tuple[str, str] | None:
    obj = emulator.get("certificatesigningrequests", name)
    conditions = ((obj or {}).get("status") or {}).get("conditions") or []
    return (conditions[0]["type"], conditions[0]["reason"]) if conditions else None


def csr_writes(emulator, name: str) -> list:
    return [w for w in emulator.writes(f"/certificatesigningrequests/{name}") if w.by_operator]


async def test_the_matrix_is_decided_with_one_write_each(csr_operator, api, emulator):
    before = {(s, d, r): REGISTRY.get_sample_value("clusterpki_csr_decisions_total",
                                                   {"signer": s, "decision": d, "reason": r}) or 0
              for s, d, r in [(CLIENT_SIGNER, "Approved", "AutoApproved"), (SERVING_SIGNER, "Denied",
                                                                             "SANNotOwnedByNode")]}
    other = kubelet_csr("other-signer", signerName="kubernetes.io/kube-apiserver-client")
    for _, body, _, _ in MATRIX:
        await api.create("certificatesigningrequests", body)
    await api.create("certificatesigningrequests", other)

    async def all_decided():
        return all(condition(emulator, name) for name, *_ in MATRIX)
    await api.wait_for(all_decided, timeout=15, what="every CSR decided")
    assert {name: condition(emulator, name) for name, *_ in MATRIX} == \
        {name: (verdict, reason) for name, _, verdict, reason in MATRIX}
    for name, *_ in MATRIX:
        approvals = [w for w in csr_writes(emulator, name) if w.path.endswith("/approval")]
        assert len(approvals) == 1, name
    denied = emulator.get("certificatesigningrequests", "foreign-ip")["status"]["conditions"][0]
    assert denied["message"] == "10.0.0.99 is not an address of node-a"

    await asyncio.sleep(1)
    assert csr_writes(emulator, "other-signer") == [], "another signer's CSR is never written to"
    assert condition(emulator, "other-signer") is None
    after_client = REGISTRY.get_sample_value("clusterpki_csr_decisions_total", {
        "signer": CLIENT_SIGNER, "decision": "Approved", "reason": "AutoApproved"})
    after_san = REGISTRY.get_sample_value("clusterpki_csr_decisions_total", {
        "signer": SERVING_SIGNER, "decision": "Denied", "reason": "SANNotOwnedByNode"})
    assert after_client - before[(CLIENT_SIGNER, "Approved", "AutoApproved")] == 2
    assert after_san - before[(SERVING_SIGNER, "Denied", "SANNotOwnedByNode")] == 2


async def test_approved_csrs_are_signed_with_the_policy_ca(csr_operator, api, emulator):
    await api.create("certificatesigningrequests", kubelet_csr("signed", "node-a", serving=True,
                                                              expirationSeconds=3600))

    async def signed():
        obj = emulator.get("certificatesigningrequests", "signed")
        return ((obj or {}).get("status") or {}).get("certificate")
    certificate = await api.wait_for(signed, what="the signed certificate")
    cert = x509.load_pem_x509_certificate(base64.b64decode(certificate))
    ca_secret = emulator.get("secrets", "policy-ca", "team-a")
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(base64.b64decode(ca_secret["data"]["tls.crt"])))
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() == 3600 + 300
    assert len(csr_writes(emulator, "signed")) == 2  # the decision, then the certificate


async def test_a_serving_csr_waits_for_its_node(csr_operator, api, emulator):
    await api.create("certificatesigningrequests", kubelet_csr("late", "node-c", serving=True, ips=("10.0.0.3",),
                                                              dns=("node-c.internal",)))
    await asyncio.sleep(1)
    assert condition(emulator, "late") is None
    await api.create_node(node_body("node-c", ("node-c.internal",), ("10.0.0.3",)))
    await api.wait_for(lambda: condition(emulator, "late") == ("Approved", "AutoApproved"), what="approval")


async def test_a_restart_redecides_nothing(csr_operator, api, emulator):
    await api.create("certificatesigningrequests", kubelet_csr("once", "node-a"))
    await api.wait_for(lambda: condition(emulator, "once"), what="the decision")
    writes = len(emulator.writes("/certificatesigningrequests"))
    await csr_operator.stop()
    await csr_operator.start()
    await asyncio.sleep(1.5)
    assert len(emulator.writes("/certificatesigningrequests")) == writes


async def test_without_a_policy_no_csr_is_even_read(operator, api, emulator):
    await api.create("certificatesigningrequests", kubelet_csr("untouched", "node-a"))
    await asyncio.sleep(1.5)
    assert condition(emulator, "untouched") is None
    assert not [r for r in emulator.requests if "certificatesigningrequests" in r.path and r.by_operator]


async def test_csrs_seen_before_the_policy_wait_for_it(kubeconfig, api, emulator):
    await api.create_node(node_body("node-a", ("node-a.internal",), ("10.0.0.1",)))
    await api.create("certificatesigningrequests", kubelet_csr("early", "node-a"))
    runner = Operator(csr_policy=("team-a", "policy"))
    await runner.start()
    try:
        await asyncio.sleep(1)
        assert condition(emulator, "early") is None, "no policy, no decision"
        await api.apply_pki(pki("policy"))
        await api.wait_for(lambda: condition(emulator, "early") == ("Approved", "AutoApproved"),
                           what="the decision once the policy exists")
    finally:
        await runner.stop()
