"""The engine, checked with ``cryptography``: every certificate of the contract's table, for each key
algorithm, plus the engine's idempotence rules."""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta, timezone

import pytest
from clusterpki.pki import catalog, certificates, engine, keys, spec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID

from tests.helpers import document

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)
SERVER, CLIENT = EKU.SERVER_AUTH, EKU.CLIENT_AUTH

# The contract's identity table, written out independently of the catalog so that a wrong row fails.
EXPECTED = {
    "apiserver": ("ca", "kube-apiserver", [], [SERVER]),
    "apiserver-kubelet-client": ("ca", "kube-apiserver-kubelet-client", ["system:masters"], [CLIENT]),
    "apiserver-etcd-client": ("etcd-ca", "kube-apiserver-etcd-client", [], [CLIENT]),
    "front-proxy-client": ("front-proxy-ca", "front-proxy-client", [], [CLIENT]),
    "etcd-server-m1": ("etcd-ca", "m1", [], [SERVER, CLIENT]),
    "etcd-peer-m1": ("etcd-ca", "m1", [], [SERVER, CLIENT]),
    "etcd-server-m2": ("etcd-ca", "m2", [], [SERVER, CLIENT]),
    "etcd-peer-m2": ("etcd-ca", "m2", [], [SERVER, CLIENT]),
    "etcd-healthcheck-client": ("etcd-ca", "kube-etcd-healthcheck-client", [], [CLIENT]),
    "admin": ("ca", "kubernetes-admin", ["system:masters"], [CLIENT]),
    "kube-scheduler": ("ca", "system:kube-scheduler", [], [CLIENT]),
    "kube-controller-manager": ("ca", "system:kube-controller-manager", [], [CLIENT]),
    "kube-proxy": ("ca", "system:kube-proxy", [], [CLIENT]),
}
SPEC_FIELDS = dict(
    clusterDomain="corp.local", serviceCIDR="10.100.0.0/16", controlPlaneEndpoint="api.corp.example:443",
    apiServer={"certSANs": ["lb.corp.example", "192.0.2.1"]},
    etcd={"members": [{"name": "m1", "dnsNames": ["m1.corp"], "ips": ["192.0.2.11"]},
                      {"name": "m2", "dnsNames": ["m2.corp"], "ips": ["192.0.2.12"]}]},
)


def make_spec(algorithm: str = "ECDSA-P256", **fields) -> spec.Spec:
    return spec.from_resource(document("t", keyAlgorithm=algorithm, **{**SPEC_FIELDS, **fields}))


@pytest.fixture(scope="module", params=["ECDSA-P256", "RSA-2048"])
def pki(request) -> engine.PKI:
    return engine.build(make_spec(request.param), engine.Existing(), NOW)


def sans_of(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(san.get_values_for_type(x509.DNSName)), {str(i) for i in san.get_values_for_type(x509.IPAddress)}


def test_every_component_of_the_contract_is_issued(pki):
    assert set(pki.leaves) == set(EXPECTED)
    assert set(pki.cas) == {"ca", "etcd-ca", "front-proxy-ca"}
    assert set(pki.issued) == set(EXPECTED) | set(pki.cas) | {"sa"}


@pytest.mark.parametrize("component", sorted(EXPECTED))
def test_leaf_identity_chain_and_extensions(pki, component):
    issuer, cn, orgs, usages = EXPECTED[component]
    cert, key = pki.leaves[component].cert, pki.leaves[component].key
    ca = pki.cas[issuer].cert
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == orgs
    assert keys.same_public_key(cert.public_key(), key)

    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == usages
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert ku.value.key_encipherment == isinstance(key, rsa.RSAPrivateKey)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    assert cert.serial_number > 0 and cert.serial_number.bit_length() > 64
    assert cert.not_valid_after_utc == NOW + timedelta(hours=8760)
    assert cert.not_valid_before_utc <= NOW


def test_apiserver_sans(pki):
    dns, ips = sans_of(pki.leaves["apiserver"].cert)
    assert dns == {"kubernetes", "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.corp.local", "api.corp.example", "lb.corp.example"}
    assert ips == {"10.100.0.1", "192.0.2.1"}


@pytest.mark.parametrize("kind", ["server", "peer"])
def test_etcd_member_sans(pki, kind):
    assert sans_of(pki.leaves[f"etcd-{kind}-m1"].cert) == ({"m1.corp", "localhost"}, {"192.0.2.11", "127.0.0.1", "::1"})
    assert sans_of(pki.leaves[f"etcd-{kind}-m2"].cert) == ({"m2.corp", "localhost"}, {"192.0.2.12", "127.0.0.1", "::1"})


@pytest.mark.parametrize("component", ["apiserver-kubelet-client", "admin", "kube-proxy", "etcd-healthcheck-client"])
def test_clients_have_no_sans(pki, component):
    with pytest.raises(x509.ExtensionNotFound):
        pki.leaves[component].cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize("component, cn", [("ca", "kubernetes"), ("etcd-ca", "etcd-ca"),
                                           ("front-proxy-ca", "front-proxy-ca")])
def test_certificate_authorities(pki, component, cn):
    cert = pki.cas[component].cert
    cert.verify_directly_issued_by(cert)
    assert cert.subject.rfc4514_string() == f"CN={cn}"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.not_valid_after_utc == NOW + timedelta(hours=87600)


def test_cas_have_distinct_keys(pki):
    pems = {keys.public_pem(pair.key) for pair in pki.cas.values()}
    assert len(pems) == 3


@pytest.mark.parametrize("algorithm, kind, size", [
    ("RSA-2048", rsa.RSAPrivateKey, 2048), ("RSA-3072", rsa.RSAPrivateKey, 3072),
    ("RSA-4096", rsa.RSAPrivateKey, 4096), ("ECDSA-P256", ec.EllipticCurvePrivateKey, 256),
    ("ECDSA-P384", ec.EllipticCurvePrivateKey, 384),
])
def test_each_key_algorithm(algorithm, kind, size):
    alg = spec.KeyAlgorithm(algorithm)
    ca_key, leaf_key = keys.generate_many(alg, 2)
    assert isinstance(ca_key, kind) and ca_key.key_size == size
    assert keys.algorithm_of(leaf_key) is alg
    ca = certificates.KeyPair(certificates.create_ca("kubernetes", ca_key, timedelta(days=1), NOW), ca_key)
    identity = certificates.Identity("kube-apiserver", usages=(SERVER,), dns_names=("kubernetes",))
    leaf = certificates.sign_leaf(identity, leaf_key.public_key(), ca, timedelta(hours=1), NOW)
    leaf.verify_directly_issued_by(ca.cert)
    assert certificates.identity_of(leaf).differences(identity) == []


def test_leaf_never_outlives_its_ca():
    s = make_spec(validity={"ca": "1000h", "certificate": "1000h"})
    first = engine.build(s, engine.Existing(), NOW)
    later = NOW + timedelta(hours=500)
    existing = engine.Existing(cas=first.cas)
    again = engine.build(s, existing, later, force={"apiserver": engine.FORCED})
    assert again.leaves["apiserver"].cert.not_valid_after_utc == first.cas["ca"].cert.not_valid_after_utc


def test_rebuilding_keeps_everything_valid():
    s = make_spec()
    first = engine.build(s, engine.Existing(), NOW)
    existing = engine.Existing(first.cas, first.leaves, first.service_account)
    again = engine.build(s, existing, NOW + timedelta(days=1))
    assert again.issued == {}
    assert {c: p.cert.serial_number for c, p in again.leaves.items()} == \
        {c: p.cert.serial_number for c, p in first.leaves.items()}


def test_spec_change_reissues_only_what_it_affects():
    s = make_spec()
    first = engine.build(s, engine.Existing(), NOW)
    existing = engine.Existing(first.cas, first.leaves, first.service_account)
    more_sans = make_spec(apiServer={"certSANs": ["lb.corp.example", "192.0.2.1", "new.corp.example"]})
    again = engine.build(more_sans, existing, NOW)
    assert list(again.issued) == ["apiserver"]
    assert "dns names" in again.issued["apiserver"].message and "new.corp.example" in again.issued["apiserver"].message

    members = SPEC_FIELDS["etcd"]["members"] + [{"name": "m3"}]
    with_member = engine.build(make_spec(etcd={"members": members}), existing, NOW)
    assert with_member.issued == {"etcd-server-m3": engine.NEW, "etcd-peer-m3": engine.NEW}


def test_reordered_sans_are_not_a_change():
    first = engine.build(make_spec(), engine.Existing(), NOW)
    existing = engine.Existing(first.cas, first.leaves, first.service_account)
    reordered = make_spec(apiServer={"certSANs": ["192.0.2.1", "LB.corp.example"]})
    assert engine.build(reordered, existing, NOW).issued == {}


def test_key_algorithm_change_reissues_leaves_but_keeps_cas():
    first = engine.build(make_spec(), engine.Existing(), NOW)
    existing = engine.Existing(first.cas, first.leaves, first.service_account)
    again = engine.build(make_spec("ECDSA-P384"), existing, NOW)
    assert set(again.issued) == set(EXPECTED)
    assert again.issued["admin"].message == "its key is ECDSA-P256, the spec asks for ECDSA-P384"
    assert again.cas == first.cas


@pytest.mark.parametrize("tamper, reason", [
    (lambda pki, other: certificates.KeyPair(pki.leaves["admin"].cert, other.leaves["admin"].key),
     "its private key does not match the certificate"),
    (lambda pki, other: other.leaves["admin"], "it is not signed by its CA"),
])
def test_broken_leaves_are_reissued(tamper, reason):
    s = make_spec()
    first = engine.build(s, engine.Existing(), NOW)
    other = engine.build(s, engine.Existing(), NOW)
    leaves = dict(first.leaves, admin=tamper(first, other))
    again = engine.build(s, engine.Existing(first.cas, leaves, first.service_account), NOW)
    assert {c: i.message for c, i in again.issued.items()} == {"admin": reason}
    again.leaves["admin"].cert.verify_directly_issued_by(first.cas["ca"].cert)


def test_expired_leaf_is_reissued_and_renewal_window_is_opt_in():
    s = make_spec(validity={"certificate": "2m"}, renewBefore="90s")
    first = engine.build(s, engine.Existing(), NOW)
    existing = engine.Existing(first.cas, first.leaves, first.service_account)
    pair = first.leaves["admin"]
    leaf = {p.component: p for p in catalog.plan(s)}["admin"]
    in_window = NOW + timedelta(seconds=45)
    assert engine.problem_with(pair, leaf, s, first.cas["ca"], in_window) is None
    assert engine.problem_with(pair, leaf, s, first.cas["ca"], in_window, renew_due=True) == engine.DUE
    expired = engine.build(s, existing, NOW + timedelta(minutes=3))
    assert set(expired.issued) == set(EXPECTED) and expired.issued["admin"].message == "it has expired"


def test_check_ca():
    first = engine.build(make_spec(), engine.Existing(), NOW)
    ca, other = first.cas["ca"], first.cas["etcd-ca"]
    assert engine.check_ca(ca, NOW) is None
    assert engine.check_ca(certificates.KeyPair(ca.cert, other.key), NOW) == \
        "its private key does not match its certificate"
    leaf = first.leaves["admin"]
    assert engine.check_ca(leaf, NOW) == "its certificate is not a CA (basicConstraints CA:TRUE is missing)"
    assert engine.check_ca(ca, NOW + timedelta(days=36600)) == "its certificate has expired"


def test_first_service_ip_for_ipv6():
    s = make_spec(serviceCIDR="fd00:10:96::/112")
    dns, ips = catalog.apiserver_sans(s, None)
    assert ipaddress.ip_address("fd00:10:96::1") in ips


def test_a_renewal_keeps_the_key_and_a_renewal_asked_for_makes_a_new_one():
    """As ``kubeadm certs renew``: readers of the files never see a new certificate beside an old key."""
    s = make_spec(validity={"certificate": "2m"}, renewBefore="90s")
    first = engine.build(s, engine.Existing(), NOW)
    existing = engine.Existing(first.cas, first.leaves, first.service_account)
    due = engine.build(s, existing, NOW + timedelta(seconds=45), renew_due=True)
    assert set(due.issued) == set(EXPECTED) and due.issued["admin"] == engine.DUE
    for component in EXPECTED:
        assert due.leaves[component].cert.serial_number != first.leaves[component].cert.serial_number
        assert due.leaves[component].key is first.leaves[component].key, component

    asked = engine.build(s, existing, NOW, force={"admin": engine.FORCED})
    assert not keys.same_public_key(asked.leaves["admin"].key, first.leaves["admin"].key)
    more_sans = engine.build(make_spec(validity={"certificate": "2m"}, renewBefore="90s",
                                       apiServer={"certSANs": ["new.corp.example"]}), existing, NOW)
    assert more_sans.leaves["apiserver"].key is first.leaves["apiserver"].key
    other_algorithm = engine.build(make_spec("ECDSA-P384", validity={"certificate": "2m"}, renewBefore="90s"),
                                   existing, NOW)
    assert keys.algorithm_of(other_algorithm.leaves["admin"].key) is spec.KeyAlgorithm.ECDSA_P384


def test_a_repaired_pair_gets_a_new_key():
    s = make_spec()
    first = engine.build(s, engine.Existing(), NOW)
    other = engine.build(s, engine.Existing(), NOW)
    mismatched = certificates.KeyPair(first.leaves["admin"].cert, other.leaves["admin"].key)
    again = engine.build(s, engine.Existing(first.cas, dict(first.leaves, admin=mismatched), first.service_account),
                         NOW)
    assert again.leaves["admin"].key is not other.leaves["admin"].key
    assert again.leaves["admin"].key is not first.leaves["admin"].key


def test_a_signature_remembered_is_remembered_for_that_pair_of_certificates_only(pki):
    leaf, ca, other = pki.leaves["apiserver"].cert, pki.cas["ca"].cert, pki.cas["etcd-ca"].cert
    for _ in range(2):  # the second time from memory
        assert certificates.signed_by(leaf, ca) and not certificates.signed_by(leaf, other)
    forged = x509.CertificateBuilder(leaf.issuer, leaf.subject, leaf.public_key(), leaf.serial_number,
                                     leaf.not_valid_before_utc, leaf.not_valid_after_utc, list(leaf.extensions)
                                     ).sign(pki.cas["etcd-ca"].key, certificates._hash_for(pki.cas["etcd-ca"].key))
    assert not certificates.signed_by(forged, ca), "the same names and key, signed by another CA"
