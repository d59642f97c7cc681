"""Every rule of kubelet CSR approval, forged variant by variant, and signing's second look."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

import pytest
from clusterpki.csr import rules as csr
from clusterpki.csr.names import NodeIndex, bounds_of, node_of
from clusterpki.pki import certificates, engine, spec
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.csr_factory import kubelet_csr, node_body
from tests.helpers import document

NODES = NodeIndex([node_of(node_body("node-a", ("node-a",), ("10.0.0.1",))),
                   node_of(node_body("node-b", ("node-b",), ("10.0.0.2",)))])
SPEC = spec.from_resource(document("p"))
BOUNDS = bounds_of(SPEC)
POLICY = SPEC.kubelet
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
    ("san-of-another-node", kubelet_csr("f", serving=True, dns=("node-b",)), "Denied",
     "SANNotOwnedByNode", "node-b is not an address of node-a"),
    ("ip-not-on-the-node", kubelet_csr("f", serving=True, ips=("10.0.0.99",)), "Denied", "SANNotOwnedByNode",
     "10.0.0.99 is not an address of node-a"),
    ("uri-san", kubelet_csr("f", serving=True, uris=("spiffe://x/y",)), "Denied", "SANTypeNotAllowed", None),
    ("email-san", kubelet_csr("f", serving=True, emails=("a@b.c",)), "Denied", "SANTypeNotAllowed", None),
    ("serving-without-sans", kubelet_csr("f", serving=True, dns=(), ips=()), "Denied", "NoSANs", None),
    ("client-with-sans", kubelet_csr("f", dns=("node-a",)), "Denied", "SANsNotAllowed", None),
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
    decision = csr.decide(request_, NODES, POLICY, BOUNDS)
    assert decision.verdict == verdict, decision
    if reason:
        assert decision.reason == reason
    if message:
        assert decision.message == message


# The attack: node-a's kubelet patches its own Node's status.addresses (NodeRestriction allows it) with
# names that are not its own, then asks for a serving certificate with each.
HOSTILE = node_of(node_body("node-a", ("node-a",), ("10.0.0.1",), extra=(
    ("ExternalIP", "10.0.0.2"), ("InternalIP", "10.96.0.1"), ("InternalIP", "10.100.7.7"),
    ("InternalDNS", "kubernetes.default.svc"), ("ExternalDNS", "*.example.com"), ("Hostname", "node-b"),
    ("InternalDNS", "api.example.com"), ("InternalIP", "192.168.0.10"), ("InternalIP", "10.0.0.5"),
    ("InternalDNS", "cp-1"), ("Hostname", "localhost"), ("InternalIP", "127.0.0.1"),
    ("InternalDNS", "node-a.evil.example"))))
CLUSTER = spec.from_resource(document(
    "p", controlPlaneEndpoint="api.example.com:6443", apiServer={"certSANs": ["192.168.0.10"]},
    etcd={"members": [{"name": "cp-1", "dnsNames": ["cp-1"], "ips": ["10.0.0.5"]}]}))
ATTACKS = [
    # (SAN, reason, message)
    (("ips", "10.0.0.2"), "SANOfAnotherNode", "10.0.0.2 is an address of node node-b too"),
    (("dns", "node-b"), "SANOfAnotherNode", "node-b is an address of node node-b too"),
    (("ips", "10.96.0.1"), "SANReserved", "10.96.0.1 is in the service CIDR 10.96.0.0/12"),
    (("ips", "10.100.7.7"), "SANReserved", "10.100.7.7 is in the service CIDR 10.96.0.0/12"),
    (("dns", "kubernetes.default.svc"), "SANReserved", "kubernetes.default.svc is the apiserver's"),
    (("dns", "*.example.com"), "SANWildcard", "*.example.com is a wildcard, never a kubelet's"),
    (("dns", "api.example.com"), "SANReserved", "api.example.com is the control-plane endpoint"),
    (("ips", "192.168.0.10"), "SANReserved", "192.168.0.10 is the apiserver's"),
    (("ips", "10.0.0.5"), "SANReserved", "10.0.0.5 is etcd member cp-1's"),
    (("dns", "cp-1"), "SANReserved", "cp-1 is etcd member cp-1's"),
    (("dns", "localhost"), "SANReserved", "localhost is every host's own loopback"),
    (("ips", "127.0.0.1"), "SANReserved", "127.0.0.1 is every host's own loopback"),
    (("dns", "node-a.evil.example"), "SANOutsideBounds",
     "node-a.evil.example matches none of spec.kubelet.servingNames.dnsNames ({node})"),
]


@pytest.mark.parametrize("san, reason, message", ATTACKS, ids=[a[0][1] for a in ATTACKS])
def test_a_node_gets_no_name_it_added_to_its_own_status(san, reason, message):
    index = NodeIndex([HOSTILE, node_of(node_body("node-b", ("node-b",), ("10.0.0.2",)))])
    kind, value = san
    request = kubelet_csr("f", serving=True, dns=("node-a", value) if kind == "dns" else ("node-a",),
                          ips=("10.0.0.1", value) if kind == "ips" else ("10.0.0.1",))
    decision = csr.decide(request, index, CLUSTER.kubelet, bounds_of(CLUSTER))
    assert (decision.verdict, decision.reason, decision.message) == ("Denied", reason, message)


def test_its_own_names_still_qualify_beside_the_hostile_ones():
    index = NodeIndex([HOSTILE])
    ok = kubelet_csr("s", serving=True, dns=("node-a",), ips=("10.0.0.1",))
    assert csr.decide(ok, index, CLUSTER.kubelet, bounds_of(CLUSTER)).verdict == "Approved"


def test_an_etcd_member_s_own_node_may_carry_the_member_s_addresses():
    """On a stacked control plane the kubelet, etcd and the apiserver share the node's address."""
    index = NodeIndex([node_of(node_body("cp-1", ("cp-1",), ("10.0.0.5",)))])
    request = kubelet_csr("s", "cp-1", serving=True, dns=("cp-1",), ips=("10.0.0.5",))
    assert csr.decide(request, index, CLUSTER.kubelet, bounds_of(CLUSTER)).verdict == "Approved"


def _bounded(**serving_names):
    bounded = spec.from_resource(document("p", kubelet={"servingNames": serving_names}))
    return bounded.kubelet, bounds_of(bounded)


def test_ip_ranges_bound_the_addresses():
    policy, bounds = _bounded(ipRanges=["10.0.0.0/30"])
    index = NodeIndex([node_of(node_body("node-a", ("node-a",), ("10.0.0.1", "10.0.0.9")))])
    assert csr.decide(kubelet_csr("s", serving=True), index, policy, bounds).verdict == "Approved"
    outside = csr.decide(kubelet_csr("s", serving=True, ips=("10.0.0.9",)), index, policy, bounds)
    assert (outside.reason, outside.message) == (
        "SANOutsideBounds", "10.0.0.9 is outside spec.kubelet.servingNames.ipRanges (10.0.0.0/30)")


def test_dns_patterns_name_the_node_and_one_label_each():
    policy, bounds = _bounded(dnsNames=["{node}", "{node}.*.compute.internal"])
    index = NodeIndex([node_of(node_body("node-a", ("node-a",), ("10.0.0.1",), extra=(
        ("InternalDNS", "node-a.eu-1.compute.internal"), ("InternalDNS", "node-a.x.eu-1.compute.internal"))))])
    fits = kubelet_csr("s", serving=True, dns=("node-a", "node-a.eu-1.compute.internal"))
    assert csr.decide(fits, index, policy, bounds).verdict == "Approved"
    deeper = csr.decide(kubelet_csr("s", serving=True, dns=("node-a.x.eu-1.compute.internal",)), index, policy,
                        bounds)
    assert deeper.reason == "SANOutsideBounds"


def test_no_dns_patterns_means_addresses_only():
    policy, bounds = _bounded(dnsNames=[])
    decision = csr.decide(kubelet_csr("s", serving=True), NODES, policy, bounds)
    assert (decision.reason, decision.message) == (
        "SANOutsideBounds", "node-a matches none of spec.kubelet.servingNames.dnsNames (none)")
    assert csr.decide(kubelet_csr("s", serving=True, dns=()), NODES, policy, bounds).verdict == "Approved"


def test_max_names():
    policy, bounds = _bounded(maxNames=1)
    decision = csr.decide(kubelet_csr("s", serving=True), NODES, policy, bounds)
    assert (decision.reason, decision.message) == (
        "TooManySANs", "2 names are more than spec.kubelet.servingNames.maxNames (1)")


@pytest.mark.parametrize("serving_names, message", [
    ({"ipRanges": ["10.0.0.0"]}, "spec.kubelet.servingNames.ipRanges"),
    ({"ipRanges": ["10.0.0.0/33"]}, "spec.kubelet.servingNames.ipRanges"),
    ({"dnsNames": ["{nod}.x"]}, "spec.kubelet.servingNames.dnsNames"),
    ({"dnsNames": ["a..b"]}, "spec.kubelet.servingNames.dnsNames"),
    ({"maxNames": 0}, "spec.kubelet.servingNames.maxNames"),
    ({"maxNames": True}, "spec.kubelet.servingNames.maxNames"),
    ({"other": 1}, "spec.kubelet.servingNames"),
])
def test_bad_bounds_are_refused_with_their_path(serving_names, message):
    with pytest.raises(spec.SpecError, match=message.replace(".", r"\.")):
        spec.from_resource(document("p", kubelet={"servingNames": serving_names}))


def test_a_node_without_addresses_yet_makes_a_serving_csr_wait():
    bare = NodeIndex([node_of(node_body("node-a"))])
    assert csr.decide(kubelet_csr("s", serving=True), bare, POLICY, BOUNDS).verdict == "Pending"


def test_the_index_forgets_a_node_s_old_addresses():
    index = NodeIndex([node_of(node_body("node-a", ("node-a",), ("10.0.0.1",)))])
    index.put(node_of(node_body("node-a", ("node-a",), ("10.0.0.3",))))
    index.put(node_of(node_body("node-b", ("node-b",), ("10.0.0.1",))))
    assert index.others("10.0.0.1", "node-b") == []
    index.remove("node-b")
    assert index.others("node-b", "node-a") == [] and "node-b" not in index


def test_other_signers_and_decided_csrs_are_not_concerned():
    other = kubelet_csr("o", signerName="kubernetes.io/kube-apiserver-client")
    assert not csr.concerns(other)
    approved = {**kubelet_csr("a"), "status": {"conditions": [{"type": "Approved", "status": "True"}]}}
    assert not csr.concerns(approved)
    assert csr.concerns(kubelet_csr("n"))


def test_policy_switches_leave_csrs_alone():
    off = spec.KubeletPolicy(approve_client_csrs=False, approve_serving_csrs=False)
    assert csr.decide(kubelet_csr("c"), NODES, off, BOUNDS) is None
    assert csr.decide(kubelet_csr("s", serving=True), NODES, off, BOUNDS) is None


def test_an_unknown_node_is_denied_after_a_minute():
    pending = kubelet_csr("f", "node-z", serving=True)
    assert csr.node_not_found(pending, NOW) is None
    late = csr.node_not_found(pending, NOW + timedelta(minutes=1))
    assert (late.verdict, late.reason) == ("Denied", "NodeNotFound")


def _approved(body):
    return {**body, "status": {"conditions": [{"type": "Approved", "status": "True", "reason": "ByAdmin"}]}}


def test_signing_refuses_what_an_admin_approved_by_mistake():
    """Policy approveClientCSRs: false, signCSRs: true, and an admin approves cluster-admin's CSR."""
    mallory = _approved(kubelet_csr("m", cn="mallory", orgs=("system:masters",)))
    assert csr.needs_signature(mallory)
    refused = csr.refusal(mallory, NODES, BOUNDS)
    assert (refused.verdict, refused.reason) == ("Denied", "SubjectMismatch")
    hostile = _approved(kubelet_csr("s", serving=True, ips=("10.96.0.1",)))
    index = NodeIndex([node_of(node_body("node-a", ("node-a",), ("10.0.0.1", "10.96.0.1")))])
    assert csr.refusal(hostile, index, BOUNDS).reason == "SANReserved"
    assert csr.refusal(_approved(kubelet_csr("s", serving=True)), NODES, BOUNDS) is None
    assert csr.refusal(_approved(kubelet_csr("s", "node-z", serving=True)), NODES, BOUNDS).verdict == "Pending"


def test_signing_uses_the_signer_s_usages_and_honours_expiration():
    pki = engine.build(SPEC, engine.Existing(), NOW)
    ca = pki.cas["ca"]
    year = SPEC.cert_validity
    serving = kubelet_csr("s", serving=True, expirationSeconds=3600)
    cert = x509.load_pem_x509_certificate(base64.b64decode(csr.sign(serving, ca, year, NOW)))
    cert.verify_directly_issued_by(ca.cert)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName) == ["node-a"]
    assert cert.not_valid_after_utc == NOW.replace(microsecond=0) + timedelta(hours=1)
    client = x509.load_pem_x509_certificate(base64.b64decode(csr.sign(kubelet_csr("c"), ca, year, NOW)))
    assert cert.subject.rfc4514_string() == client.subject.rfc4514_string() == "CN=system:node:node-a,O=system:nodes"
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_during_a_rotation_a_signed_certificate_presents_the_new_ca_cross_signed_by_the_old():
    old, new = (engine.build(SPEC, engine.Existing(), NOW).cas["ca"] for _ in range(2))
    crossed = certificates.cross_sign(new.cert, old, NOW)
    signed = x509.load_pem_x509_certificates(base64.b64decode(
        csr.sign(kubelet_csr("c"), new._replace(chain=(crossed,)), SPEC.cert_validity, NOW)))
    assert len(signed) == 2 and signed[1] == crossed
    signed[0].verify_directly_issued_by(new.cert)
    signed[1].verify_directly_issued_by(old.cert)


def test_needs_signature():
    approved = _approved(kubelet_csr("a"))
    assert csr.needs_signature(approved)
    assert not csr.needs_signature({**approved, "status": {**approved["status"], "certificate": "x"}})
    assert not csr.needs_signature(kubelet_csr("n"))


def test_the_node_wait_counts_from_when_the_operator_first_saw_the_csr():
    pending = kubelet_csr("f", "node-z", serving=True)  # created at 12:00:00
    late = NOW + timedelta(minutes=5)
    assert csr.node_not_found(pending, late, seen_since=late - timedelta(seconds=10)) is None
    assert csr.node_not_found(pending, late, seen_since=late - timedelta(minutes=1)).reason == "NodeNotFound"


ROTATION = {"signerName": csr.ROTATION_SIGNER}
ROTATION_CASES = [
    ("its-own-client-certificate", kubelet_csr("r", **ROTATION), "Approved", "AutoApproved"),
    ("another-node-s", kubelet_csr("r", cn="system:node:node-b", **ROTATION), "Denied", "NodeNameMismatch"),
    ("with-a-bootstrap-token", kubelet_csr("r", "node-new", **BOOTSTRAP, **ROTATION), "Denied", "RequesterNotANode"),
    ("cluster-admin", kubelet_csr("r", cn="mallory", orgs=("system:masters",), **ROTATION), "Denied",
     "SubjectMismatch"),
    ("with-names", kubelet_csr("r", dns=("node-a",), **ROTATION), "Denied", "SANsNotAllowed"),
    ("serving", kubelet_csr("r", usages=["digital signature", "server auth"], **ROTATION), "Denied",
     "UsagesNotAllowed"),
]


@pytest.mark.parametrize("request_, verdict, reason", [c[1:] for c in ROTATION_CASES], ids=[c[0] for c in ROTATION_CASES])
def test_the_rotation_signer_holds_a_node_to_its_own_client_certificate(request_, verdict, reason):
    """A node agent's request during a ca rotation: decided whatever the policy says of Kubernetes'
    signers (the operator is its only signer), by the client rules, bootstrap tokens excluded."""
    off = spec.KubeletPolicy(approve_client_csrs=False, approve_serving_csrs=False)
    decision = csr.decide(request_, NODES, off, BOUNDS)
    assert (decision.verdict, decision.reason) == (verdict, reason)
    assert csr.concerns(request_)


def test_the_rotation_signer_signs_a_client_certificate():
    ca = engine.build(SPEC, engine.Existing(), NOW).cas["ca"]
    signed = x509.load_pem_x509_certificate(base64.b64decode(
        csr.sign(kubelet_csr("r", **ROTATION), ca, SPEC.cert_validity, NOW)))
    signed.verify_directly_issued_by(ca.cert)
    assert signed.subject.rfc4514_string() == "CN=system:node:node-a,O=system:nodes"
    assert list(signed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
