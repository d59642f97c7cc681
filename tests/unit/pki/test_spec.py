import ipaddress
from datetime import timedelta

import pytest
import yaml
from clusterpki.pki import spec

from tests.helpers import EXAMPLE, document


def errors_of(body) -> list[str]:
    with pytest.raises(spec.SpecError) as caught:
        spec.from_resource(body)
    return [str(e) for e in caught.value.errors]


def test_defaults_follow_the_contract():
    s = spec.from_resource(document("alpha"))
    assert s.name == "alpha"
    assert s.cluster_domain == "cluster.local"
    assert s.service_cidr == ipaddress.ip_network("10.96.0.0/12")
    assert str(s.first_service_ip) == "10.96.0.1"
    assert (s.endpoint_host, s.endpoint_port) == ("127.0.0.1", 6443)
    assert s.server_url == "https://127.0.0.1:6443"
    assert s.cert_sans == ()
    assert [(m.name, m.dns_names, [str(i) for i in m.ips]) for m in s.etcd_members] == \
        [("etcd-0", ("localhost",), ["127.0.0.1"])]
    assert s.key_algorithm is spec.KeyAlgorithm.ECDSA_P256
    assert s.ca_validity == timedelta(hours=87600)
    assert s.cert_validity == timedelta(hours=8760)
    assert s.renew_before == timedelta(hours=8760) / 3
    assert s.kubelet == spec.KubeletPolicy(True, True, False)
    assert s.secret_retention is spec.SecretRetention.RETAIN


def test_the_example_is_valid():
    s = spec.from_resource(yaml.safe_load(EXAMPLE.read_text()))
    assert [m.name for m in s.etcd_members] == ["cp-0", "cp-1", "cp-2"]
    assert s.server_url == "https://api.example.internal:6443"


def test_renew_before_defaults_to_a_third_of_the_given_validity():
    s = spec.from_resource(document(validity={"certificate": "90m"}))
    assert s.renew_before == timedelta(minutes=30)


def test_two_minute_certificates_work():
    s = spec.from_resource(document(validity={"certificate": "2m"}, renewBefore="90s"))
    assert (s.cert_validity, s.renew_before) == (timedelta(minutes=2), timedelta(seconds=90))


@pytest.mark.parametrize("endpoint, host, port, url", [
    ("api.example.com", "api.example.com", 6443, "https://api.example.com:6443"),
    ("10.0.0.1:443", "10.0.0.1", 443, "https://10.0.0.1:443"),
    ("[fd00::1]:6443", "fd00::1", 6443, "https://[fd00::1]:6443"),
    ("fd00::1", "fd00::1", 6443, "https://[fd00::1]:6443"),
])
def test_control_plane_endpoint_forms(endpoint, host, port, url):
    s = spec.from_resource(document(controlPlaneEndpoint=endpoint))
    assert (s.endpoint_host, s.endpoint_port, s.server_url) == (host, port, url)


@pytest.mark.parametrize("fields, expected", [
    ({"serviceCIDR": "10.0.0.0/33"}, "spec.serviceCIDR: '10.0.0.0/33' is not a CIDR"),
    ({"serviceCIDR": "10.0.0.1"}, "spec.serviceCIDR: '10.0.0.1' is not a CIDR: it has no prefix length"),
    ({"serviceCIDR": "10.0.0.1/32"}, "spec.serviceCIDR: '10.0.0.1/32' has no room for a service IP"),
    ({"clusterDomain": "bad_domain"}, "spec.clusterDomain: 'bad_domain' is not a DNS domain"),
    ({"controlPlaneEndpoint": ":6443"}, "spec.controlPlaneEndpoint: ':6443' has no host"),
    ({"controlPlaneEndpoint": "api:99999"}, "spec.controlPlaneEndpoint: port '99999' is not a number from 1 to 65535"),
    ({"controlPlaneEndpoint": "bad host:6443"},
     "spec.controlPlaneEndpoint: host 'bad host' is neither an IP address nor a DNS name"),
    ({"apiServer": {"certSANs": ["ok.example.com", "not a name"]}},
     "spec.apiServer.certSANs[1]: 'not a name' is neither an IP address nor a DNS name"),
    ({"apiServer": {"certSANs": "a.example.com"}}, "spec.apiServer.certSANs: must be a list"),
    ({"etcd": {"members": [{"name": "a", "ips": ["10.0.0.256"]}]}},
     "spec.etcd.members[0].ips[0]: '10.0.0.256' is not an IP address"),
    ({"etcd": {"members": [{"name": "a", "dnsNames": ["under_score"]}]}},
     "spec.etcd.members[0].dnsNames[0]: 'under_score' is not a DNS name"),
    ({"etcd": {"members": [{"name": "a"}, {"name": "a"}]}},
     "spec.etcd.members[1].name: 'a' is a duplicate member name"),
    ({"etcd": {"members": [{"name": "Bad_Name"}]}},
     "spec.etcd.members[0].name: 'Bad_Name' is not a DNS label (lower-case letters, digits and '-')"),
    ({"etcd": {"members": [{"dnsNames": ["a"]}]}}, "spec.etcd.members[0].name: is required"),
    ({"etcd": {"members": []}}, "spec.etcd.members: must be a non-empty list"),
    ({"keyAlgorithm": "DSA-1024"},
     "spec.keyAlgorithm: 'DSA-1024' is not one of RSA-2048, RSA-3072, RSA-4096, ECDSA-P256, ECDSA-P384"),
    ({"validity": {"certificate": "1d"}},
     "spec.validity.certificate: '1d' is not a duration such as '90s', '30m' or '8760h'"),
    ({"validity": {"ca": "100ms"}}, "spec.validity.ca: '100ms' is shorter than one second"),
    ({"validity": {"ca": "1000h", "certificate": "2000h"}},
     "spec.validity.certificate: 2000h0m0s is longer than spec.validity.ca (1000h0m0s); "
     "a certificate cannot outlive its CA"),
    ({"validity": {"ca": "876000000h", "certificate": "8760h"}},
     "spec.validity.ca: '876000000h' is longer than 100 years (876000h0m0s)"),
    ({"validity": {"certificate": "876001h"}},
     "spec.validity.certificate: '876001h' is longer than 100 years (876000h0m0s)"),
    ({"validity": {"ca": "1s", "certificate": "1s"}},
     "spec.validity.ca: 1s leaves 0s (its last third) to rotate the CAs, which takes 216h0m0s: three CAs, one "
     "after another, each in two grace periods of 24h0m0s (pki.clusterpki.dev/rotate-ca-grace) and one to "
     "spare; make it at least 648h0m0s or shorten the grace period"),
    ({"apiServer": {"certSANs": ["300.1.1.1"]}},
     "spec.apiServer.certSANs[0]: '300.1.1.1' is neither an IP address nor a DNS name"),
    ({"apiServer": {"certSANs": ["1.2.3"]}}, "spec.apiServer.certSANs[0]: '1.2.3' is neither an IP address nor a "
                                             "DNS name"),
    ({"controlPlaneEndpoint": "10.0.0.300:6443"},
     "spec.controlPlaneEndpoint: host '10.0.0.300' is neither an IP address nor a DNS name"),
    ({"etcd": {"members": [{"name": "a", "dnsNames": ["10.1.1"]}]}},
     "spec.etcd.members[0].dnsNames[0]: '10.1.1' is not a DNS name"),
    ({"validity": {"certificate": "2m"}, "renewBefore": "2m"},
     "spec.renewBefore: 2m0s must be shorter than spec.validity.certificate (2m0s)"),
    ({"kubelet": {"signCSRs": "yes"}}, "spec.kubelet.signCSRs: must be true or false, not 'yes'"),
    ({"secretRetention": "Keep"}, "spec.secretRetention: 'Keep' is not one of Retain, Delete"),
    ({"serviceCidr": "10.0.0.0/8"}, "spec.serviceCidr: is not a known field"),
])
def test_each_invalid_field_is_reported_with_its_path(fields, expected):
    assert errors_of(document(**fields)) == [expected]


def with_grace(grace: str, **fields) -> dict:
    body = document(**fields)
    body["metadata"]["annotations"] = {"pki.clusterpki.dev/rotate-ca-grace": grace}
    return body


def test_the_grace_period_annotation_is_part_of_the_spec():
    assert spec.from_resource(with_grace("10m")).rotation_grace == timedelta(minutes=10)
    assert spec.from_resource(document()).rotation_grace == timedelta(hours=24)
    assert errors_of(with_grace("soon")) == [
        "metadata.annotations[pki.clusterpki.dev/rotate-ca-grace]: 'soon' is not a duration such as '90s', '30m' "
        "or '8760h'"]
    assert errors_of(with_grace("10ms")) == [
        "metadata.annotations[pki.clusterpki.dev/rotate-ca-grace]: '10ms' is shorter than 1s"]


def test_validity_ca_must_leave_room_for_the_rotations_of_its_grace_period():
    """Three CAs, one after another, each in two grace periods and one to spare: 27 grace periods."""
    assert spec.from_resource(with_grace("1s", validity={"ca": "27s", "certificate": "10s"}))
    assert errors_of(with_grace("1s", validity={"ca": "26s", "certificate": "10s"})) == [
        "spec.validity.ca: 26s leaves 8s (its last third) to rotate the CAs, which takes 9s: three CAs, one after "
        "another, each in two grace periods of 1s (pki.clusterpki.dev/rotate-ca-grace) and one to spare; make it "
        "at least 27s or shorten the grace period"]


def test_all_errors_are_reported_at_once():
    body = document(serviceCIDR="nope", keyAlgorithm="RSA-1024", renewBefore="soon")
    body["metadata"]["name"] = "Not_Valid"
    assert errors_of(body) == [
        "metadata.name: 'Not_Valid' is not a DNS name of at most 63 characters",
        "spec.serviceCIDR: 'nope' is not a CIDR",
        "spec.keyAlgorithm: 'RSA-1024' is not one of RSA-2048, RSA-3072, RSA-4096, ECDSA-P256, ECDSA-P384",
        "spec.renewBefore: 'soon' is not a duration such as '90s', '30m' or '8760h'",
    ]


def test_the_document_must_be_a_clusterpki():
    assert errors_of({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}}) == [
        "apiVersion: must be 'pki.clusterpki.dev/v1alpha1', not 'v1'",
        "kind: must be 'ClusterPKI', not 'ConfigMap'",
        "metadata.name: is required",
    ]


def test_member_lookup():
    s = spec.from_resource(document(etcd={"members": [{"name": "a"}, {"name": "b"}]}))
    assert s.member(None).name == "a"
    assert s.member("b").name == "b"
    with pytest.raises(LookupError, match=r"etcd member 'c' is not in spec.etcd.members \(a, b\)"):
        s.member("c")
