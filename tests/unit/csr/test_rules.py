"""Every rule of kubelet CSR approval, forged variant by variant."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest
from clusterpki.csr import rules as csr
from clusterpki.pki import engine, spec
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.csr_factory import kubelet_csr, node_body
from tests.helpers import document

NODES = {"node-a": csr.node_of(node_body("node-a", ("node-a.internal",), ("10.0.0.1",))),
         "node-b": csr.node_of(node_body("node-b", ("node-b.internal",), ("10.0.0.2",)))}
POLICY = spec.KubeletPolicy()
YEAR = timedelta(hours=8760)
NOW = datetime(2026, 11, 22, 12, 0, 30, tzinfo=timezone.utc)
BOOTSTRAP = {"username": "system:bootstrap:abcdef", "groups": ["system:bootstrappers", "system:authenticated"]}

CASES = [
    # (id, csr, verdict, reason, message)
    ("client", kubelet_csr("c", "node-a"), "Approved", "AutoApproved", "kubelet client certificate of node node-a"),
    ("client-with-key-encipherment", kubelet_csr(
        "c", usages=["digital signature", "key encipherment", "client auth"]), "Approved", "AutoApproved", None),
    ("client-rsa", kubelet_csr("c", key_kind="rsa2048"), "Approved", "AutoApproved", None),
    ("serving", kubelet_csr("s", serving=True), "Approved", "AutoApproved", "kubelet serving certificate of node node-a"),
    ("serving-with-key-encipherment", kubelet_csr(
        "s", serving=True, usages=["digital signature", "key encipherment", "server auth"]), "Approved", None, None),
    ("bootstrap-for-a-new-node", kubelet_csr("b", "node-new", **BOOTSTRAP), "Approved", "AutoApproved", None),
    ("another-node-s-cn", kubelet_csr("f", cn="system:node:node-b"), "Denied", "NodeNameMismatch",
     "'system:node:node-a' asks for a certificate of node 'node-b'"),
    ("not-a-node", kubelet_csr("f", username="alice", groups=["system:authenticated"]), "Denied",
     "RequesterNotANode", None),
    ("node-user-without-the-group", kubelet_csr("f", groups=["system:authenticated"]), "Denied",
     "RequesterNotANode", None),
    ("san-of-another-node", kubelet_csr("f", serving=True, dns=("node-b.internal",)), "Denied",
     "SANNotOwnedByNode", "node-b.internal is not an address of node-a"),
    ("ip-not-on-the-node", kubelet_csr("f", serving=True, ips=("10.0.0.99",)), "Denied", "SANNotOwnedByNode",
     "10.0.0.99 is not an address of node-a"),
    ("uri-san", kubelet_csr("f", serving=True, uris=("spiffe://x/y",)), "Denied", "SANTypeNotAllowed", None),
    ("email-san", kubelet_csr("f", serving=True, emails=("a@b.c",)), "Denied", "SANTypeNotAllowed", None),
    ("serving-without-sans", kubelet_csr("f", serving=True, dns=(), ips=()), "Denied", "NoSANs", None),
    ("client-with-sans", kubelet_csr("f", dns=("node-a.internal",)), "Denied", "SANsNotAllowed", None),
    ("wrong-o", kubelet_csr("f", orgs=("system:masters",)), "Denied", "SubjectMismatch", None),
    ("extra-o", kubelet_csr("f", orgs=("system:nodes", "system:masters")), "Denied", "SubjectMismatch", None),
    ("extra-usage", kubelet_csr("f", usages=["digital signature", "client auth", "server auth"]), "Denied",
     "UsagesNotAllowed", None),
    ("serving-usage-on-client-signer", kubelet_csr("f", usages=["digital signature", "server auth"]), "Denied",
     "UsagesNotAllowed", None),
    ("weak-rsa-1024", kubelet_csr("f", key_kind="rsa1024"), "Denied", "WeakKey",
     "an RSA key of 1024 bits is shorter than 2048"),
    ("p521", kubelet_csr("f", key_kind="p521"), "Denied", "WeakKey", None),
    ("too-long", kubelet_csr("f", expirationSeconds=2 * 8760 * 3600), "Denied", "ExpirationTooLong", None),
    ("bootstrap-for-an-existing-node", kubelet_csr("f", "node-a", **BOOTSTRAP), "Denied",
     "BootstrapForExistingNode", None),
    ("unknown-node", kubelet_csr("f", "node-z", serving=True), "Pending", "NodeNotFound", None),
    ("garbage-request", kubelet_csr("f", request=base64.b64encode(b"junk").decode()), "Denied", "InvalidRequest",
     None),
]


@pytest.mark.parametrize("request_, verdict, reason, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules(request_, verdict, reason, message):
    decision = csr.decide(request_, NODES, POLICY, YEAR)
    assert decision.verdict == verdict, decision
    if reason:
        assert decision.reason == reason
    if message:
        assert decision.message == message


def test_a_node_without_addresses_yet_makes_a_serving_csr_wait():
    bare = {"node-a": csr.node_of(node_body("node-a"))}
    assert csr.decide(kubelet_csr("s", serving=True), bare, POLICY, YEAR).verdict == "Pending"


def test_other_signers_and_decided_csrs_are_not_concerned():
    other = kubelet_csr("o", signerName="kubernetes.io/kube-apiserver-client")
    assert not csr.concerns(other)
    approved = {**kubelet_csr("a"), "status": {"conditions": [{"type": "Approved", "status": "True"}]}}
    assert not csr.concerns(approved)
    assert csr.concerns(kubelet_csr("n"))


def test_policy_switches_leave_csrs_alone():
    off = spec.KubeletPolicy(approve_client_csrs=False, approve_serving_csrs=False)
    assert csr.decide(kubelet_csr("c"), NODES, off, YEAR) is None
    assert csr.decide(kubelet_csr("s", serving=True), NODES, off, YEAR) is None


def test_an_unknown_node_is_denied_after_a_minute():
    pending = kubelet_csr("f", "node-z", serving=True)
    assert csr.node_not_found(pending, NOW) is None
    late = csr.node_not_found(pending, NOW + timedelta(minutes=1))
    assert (late.verdict, late.reason) == ("Denied", "NodeNotFound")


def test_signing_uses_the_signer_s_usages_and_honours_expiration():
    pki = engine.build(spec.from_resource(document("p")), engine.Existing(), NOW)
    ca = pki.cas["ca"]
    serving = kubelet_csr("s", serving=True, expirationSeconds=3600)
    cert = x509.load_pem_x509_certificate(base64.b64decode(csr.sign(serving, ca, YEAR, NOW)))
    cert.verify_directly_issued_by(ca.cert)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["node-a.internal"]
    assert cert.not_valid_after_utc == NOW.replace(microsecond=0) + timedelta(hours=1)
    client = x509.load_pem_x509_certificate(base64.b64decode(csr.sign(kubelet_csr("c"), ca, YEAR, NOW)))
    assert cert.subject.rfc4514_string() == client.subject.rfc4514_string() == "CN=system:node:node-a,O=system:nodes"
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_needs_signature():
    approved = {**kubelet_csr("a"), "status": {"conditions": [{"type": "Approved", "status": "True"}]}}
    assert csr.needs_signature(approved)
    assert not csr.needs_signature({**approved, "status": {**approved["status"], "certificate": "x"}})
    assert not csr.needs_signature(kubelet_csr("n"))


def test_the_node_wait_counts_from_when_the_operator_first_saw_the_csr():
    pending = kubelet_csr("f", "node-z", serving=True)  # created at 12:00:00
    late = NOW + timedelta(minutes=5)
    assert csr.node_not_found(pending, late, seen_since=late - timedelta(seconds=10)) is None
    assert csr.node_not_found(pending, late, seen_since=late - timedelta(minutes=1)).reason == "NodeNotFound"
