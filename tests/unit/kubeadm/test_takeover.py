"""``clusterpki import``'s reading of a kubeadm directory: the spec it derives, what it takes over as it is,
what it leaves to the operator, and the clear errors that stop it before anything is written."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from clusterpki.errors import UserError
from clusterpki.kubeadm import takeover
from clusterpki.pki import spec, times
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests import kubeadm_openssl
from tests.helpers import document, render

NOW = times.now()
RENDERED = document("demo", controlPlaneEndpoint="api.example.com:6443", keyAlgorithm="ECDSA-P384",
                    apiServer={"certSANs": ["cp-1", "192.0.2.7"]}, validity={"ca": "43800h", "certificate": "720h"},
                    etcd={"members": [{"name": "node-a", "dnsNames": ["node-a.internal"], "ips": ["192.0.2.21"]},
                                      {"name": "node-b", "ips": ["192.0.2.22"]}]})
COMPONENTS = {"ca", "etcd-ca", "front-proxy-ca", "sa", "apiserver", "apiserver-kubelet-client",
              "apiserver-etcd-client", "front-proxy-client", "etcd-healthcheck-client", "admin", "kube-scheduler",
              "kube-controller-manager", "kube-proxy"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    """Node a's directory of a two-member ClusterPKI made by ``clusterpki render``."""
    tmp = tmp_path_factory.mktemp("rendered")
    assert render(tmp, tmp / "a", RENDERED, "--etcd-member", "node-a") == 0
    return tmp / "a"


@pytest.fixture(scope="module")
def kubeadm_dir(tmp_path_factory) -> Path:
    return kubeadm_openssl.make(tmp_path_factory.mktemp("kubeadm") / "etc", "cp-1", "192.0.2.10",
                                "api.example.com:6443")


@pytest.fixture
def copy(tmp_path):
    def copy(source: Path) -> Path:
        return Path(shutil.copytree(source, tmp_path / source.name))
    return copy


def derive(*dirs: Path, service_cidr: str | None = None) -> takeover.Takeover:
    return takeover.derive(list(dirs), "taken", "ns", NOW, service_cidr)


def test_a_rendered_directory_gives_back_its_spec_and_is_taken_over_whole(rendered):
    plan = derive(rendered)
    wanted = spec.from_resource(RENDERED)
    got = spec.from_resource(plan.resource)
    assert got._replace(name="demo", etcd_members=()) == wanted._replace(etcd_members=())
    assert got.etcd_members == wanted.etcd_members[:1], "only the member whose files are there"
    assert set(plan.taken) == COMPONENTS | {"etcd-server-node-a", "etcd-peer-node-a"}
    assert plan.left == {}
    assert plan.origin["admin"] == "admin.conf" and plan.origin["etcd-server-node-a"] == "pki/etcd/server.crt"


def test_an_openssl_made_kubeadm_directory(kubeadm_dir):
    plan = derive(kubeadm_dir)
    assert plan.resource["spec"] == {
        "controlPlaneEndpoint": "api.example.com:6443", "clusterDomain": "cluster.local",
        "serviceCIDR": "10.96.0.0/12", "apiServer": {"certSANs": ["cp-1", "192.0.2.10"]},
        "etcd": {"members": [{"name": "cp-1", "dnsNames": ["cp-1"], "ips": ["192.0.2.10"]}]},
        "keyAlgorithm": "RSA-2048", "validity": {"ca": "87600h", "certificate": "8760h"},
        "kubernetesVersion": "v1.28"}
    assert set(plan.taken) == COMPONENTS - {"kube-proxy"} | {"etcd-server-cp-1", "etcd-peer-cp-1"}, \
        "the identities of kubeadm before v1.29 (its etcd clients in system:masters) are kept"
    assert plan.left == {"kube-proxy": "it did not exist"}, "kubeadm writes no kube-proxy.conf"
    assert plan.pki.cas["ca"].cert == x509.load_pem_x509_certificate((kubeadm_dir / "pki/ca.crt").read_bytes())


def test_a_leaf_backdated_to_its_ca_as_kubeadm_does_gets_kubeadm_s_validity(kubeadm_dir, copy):
    directory = copy(kubeadm_dir)
    ca = _load(directory, "pki/ca")
    apiserver = _load(directory, "pki/apiserver")
    backdated = _resign(apiserver[0], ca, ca[0].not_valid_before_utc, NOW + timedelta(days=365, seconds=7))
    (directory / "pki/apiserver.crt").write_bytes(backdated.public_bytes(serialization.Encoding.PEM))
    plan = derive(directory)
    assert plan.resource["spec"]["validity"]["certificate"] == "8760h"
    assert "kubeadm's default" in {d.field: d.source for d in plan.derived}["validity.certificate"]


def test_each_directory_adds_its_member(tmp_path, rendered):
    other = Path(shutil.copytree(rendered, tmp_path / "b"))
    for file in ("server", "peer"):
        for ext in ("crt", "key"):
            (other / f"pki/etcd/{file}.{ext}").unlink()
    assert render(tmp_path, other, RENDERED, "--etcd-member", "node-b") == 0
    plan = derive(rendered, other)
    assert [m["name"] for m in plan.resource["spec"]["etcd"]["members"]] == ["node-a", "node-b"]
    assert {"etcd-server-node-a", "etcd-peer-node-b"} <= set(plan.taken) and plan.left == {}
    assert plan.origin["etcd-peer-node-b"] == f"{other}/pki/etcd/peer.crt"


def test_directories_of_two_clusters_are_refused(tmp_path, rendered):
    assert render(tmp_path, tmp_path / "other", document("other", etcd={"members": [{"name": "node-b"}]})) == 0
    with pytest.raises(UserError, match=r"pki/ca.crt is not the ca CA of .*: the directories must come from one"):
        derive(rendered, tmp_path / "other")


def test_the_same_member_twice_is_refused(rendered):
    with pytest.raises(UserError, match="each directory must be a different member"):
        derive(rendered, rendered)


def test_a_custom_service_cidr_needs_the_flag(tmp_path):
    custom = kubeadm_openssl.make(tmp_path / "custom", "cp-1", "192.0.2.10", "192.0.2.10:6443",
                                  service_ip="10.43.0.1", domain="corp.local")
    with pytest.raises(UserError, match=r"does not hold 10.96.0.1, the first address of 10.96.0.0/12; pass the "
                                        r"cluster's service CIDR with --service-cidr"):
        derive(custom)
    plan = derive(custom, service_cidr="10.43.0.0/16")
    assert plan.resource["spec"]["serviceCIDR"] == "10.43.0.0/16"
    assert plan.resource["spec"]["clusterDomain"] == "corp.local"
    assert plan.resource["spec"]["apiServer"]["certSANs"] == ["cp-1"], "the endpoint is not a certSAN"
    assert "apiserver" in plan.taken
    with pytest.raises(UserError, match="does not hold 10.44.0.1, the first address of 10.44.0.0/16$"):
        derive(custom, service_cidr="10.44.0.0/16")


@pytest.mark.parametrize("missing", ["pki/ca.key", "pki/sa.key", "admin.conf", "pki/etcd/server.crt"])
def test_a_partial_directory_is_refused_naming_what_is_missing(rendered, copy, missing):
    directory = copy(rendered)
    (directory / missing).unlink()
    with pytest.raises(UserError, match=f"is not a complete kubeadm PKI: {missing} is missing; nothing was imported"):
        derive(directory)


def test_an_expired_ca_is_refused(kubeadm_dir, copy):
    directory = copy(kubeadm_dir)
    pair = _load(directory, "pki/front-proxy-ca")
    expired = _resign(pair[0], pair, NOW - timedelta(days=20), NOW - timedelta(days=1))
    (directory / "pki/front-proxy-ca.crt").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(UserError, match="the front-proxy-ca CA in .* cannot be taken over: its certificate has expired"):
        derive(directory)


def test_a_mismatched_sa_pub_is_refused(rendered, copy, kubeadm_dir):
    directory = copy(rendered)
    shutil.copy(kubeadm_dir / "pki/sa.pub", directory / "pki/sa.pub")
    with pytest.raises(UserError, match="pki/sa.pub is not the public key of .*pki/sa.key"):
        derive(directory)


def test_a_broken_ca_key_is_one_sentence_without_key_material(rendered, copy):
    directory = copy(rendered)
    (directory / "pki/etcd/ca.key").write_text("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")
    with pytest.raises(UserError) as error:
        derive(directory)
    assert str(error.value).endswith("pki/etcd/ca.key cannot be read: not an unencrypted PEM private key")


def test_an_invalid_member_name_is_a_spec_error(tmp_path):
    made = kubeadm_openssl.make(tmp_path / "dotted", "cp-1.example.com", "192.0.2.10", "api.example.com:6443")
    with pytest.raises(UserError, match=r"the ClusterPKI derived from .* is not valid: spec.etcd.members\[0\].name"):
        derive(made)


def test_invalid_and_expired_leaves_are_left_to_the_operator(kubeadm_dir, copy):
    directory = copy(kubeadm_dir)
    ca = _load(directory, "pki/ca")
    client = _load(directory, "pki/apiserver-kubelet-client")
    expired = _resign(client[0], ca, NOW - timedelta(days=2), NOW - timedelta(days=1))
    (directory / "pki/apiserver-kubelet-client.crt").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    (directory / "pki/front-proxy-client.key").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                                               serialization.NoEncryption()))
    (directory / "pki/etcd/healthcheck-client.key").unlink()
    plan = derive(directory)
    assert plan.left == {
        "apiserver-kubelet-client": "it has expired",
        "front-proxy-client": "its private key does not match the certificate",
        "etcd-healthcheck-client": "pki/etcd/healthcheck-client.crt cannot be read (its certificate or key is missing)",
        "kube-proxy": "it did not exist"}


def _load(directory: Path, file: str):
    cert = x509.load_pem_x509_certificate((directory / f"{file}.crt").read_bytes())
    key = serialization.load_pem_private_key((directory / f"{file}.key").read_bytes(), None)
    return cert, key


def _resign(cert: x509.Certificate, issuer, not_before, not_after) -> x509.Certificate:
    """``cert`` again, with other dates, signed by ``issuer`` (its certificate and key)."""
    builder = (x509.CertificateBuilder().subject_name(cert.subject).issuer_name(issuer[0].subject)
               .public_key(cert.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(issuer[1], hashes.SHA256())


def test_a_member_whose_controllers_reach_its_own_apiserver_keeps_that_address(kubeadm_dir, copy):
    """kubeadm's controller-manager.conf reaches the node's own apiserver (its localAPIEndpoint): import
    reads it as the member's advertiseAddress, whose name and address the apiserver certificate then holds
    by itself (not as certSANs), and the kubeconfig is taken over as it is."""
    import yaml

    directory = copy(kubeadm_dir)
    conf = yaml.safe_load((directory / "controller-manager.conf").read_text())
    conf["clusters"][0]["cluster"]["server"] = "https://192.0.2.10:6443"
    (directory / "controller-manager.conf").write_text(yaml.safe_dump(conf))
    plan = derive(directory)
    assert plan.resource["spec"]["etcd"]["members"] == [
        {"name": "cp-1", "dnsNames": ["cp-1"], "ips": ["192.0.2.10"], "advertiseAddress": "192.0.2.10:6443"}]
    assert plan.resource["spec"]["apiServer"] == {"certSANs": []}
    assert {"apiserver", "kube-controller-manager"} <= set(plan.taken), plan.left
    assert any(d.field == "etcd.members[].advertiseAddress" and d.value == "cp-1=192.0.2.10:6443"
               for d in plan.derived)


def test_a_v1_29_directory_keeps_admin_conf_in_cluster_admins_and_takes_super_admin_conf(tmp_path):
    made = kubeadm_openssl.make(tmp_path / "etc", "cp-1", "192.0.2.10", "api.example.com:6443", release=(1, 29),
                                node_files=True)
    plan = derive(made)
    assert plan.resource["spec"]["kubernetesVersion"] == "v1.29.3", "the apiserver's image, which agrees"
    taken = spec.from_resource(plan.resource)
    assert taken.kubernetes_version == spec.Release(1, 29)
    assert {"admin", "super-admin", "apiserver-kubelet-client"} <= set(plan.taken), "no re-issue, no escalation"
    assert plan.left == {"kube-proxy": "it did not exist"}
    assert plan.origin["super-admin"] == "super-admin.conf"
    assert not any(c.startswith("kubelet") for c in [*plan.taken, *plan.left]), "the kubelet's own, not ours"


def test_a_v1_24_directory_leaves_the_version_to_the_contract_s_identities(tmp_path):
    made = kubeadm_openssl.make(tmp_path / "etc", "cp-1", "192.0.2.10", "api.example.com:6443", node_files=True)
    plan = derive(made)
    assert plan.resource["spec"]["kubernetesVersion"] == "v1.24.3", "the apiserver's image, which agrees"
    assert plan.left == {"kube-proxy": "it did not exist"} and "super-admin" not in plan.taken


def test_a_newer_cluster_whose_certificates_are_older_keeps_them(tmp_path):
    """KEP-4214 lets an upgraded cluster keep its old admin.conf: import keeps what it finds."""
    made = kubeadm_openssl.make(tmp_path / "etc", "cp-1", "192.0.2.10", "api.example.com:6443", node_files=True)
    kubeadm_openssl._node_files(made, (1, 30), "https://api.example.com:6443")
    plan = derive(made)
    assert plan.resource["spec"]["kubernetesVersion"] == "v1.28" and plan.left == {"kube-proxy": "it did not exist"}
    said = next(d for d in plan.derived if d.field == "kubernetesVersion")
    assert "kubeadm's of v1.28" in said.source and "v1.30.3" in said.source


def test_an_upgraded_cluster_that_kept_system_masters_for_admin_conf_alone_gets_the_contract_s(tmp_path):
    """kubeadm's v1.29 upgrade renews the etcd clients into no group; an admin.conf kept in system:masters
    then leaves the contract's identities, which keep every certificate as it is."""
    made = kubeadm_openssl.make(tmp_path / "etc", "cp-1", "192.0.2.10", "api.example.com:6443", node_files=True)
    for file, subject in (("pki/apiserver-etcd-client", "/CN=kube-apiserver-etcd-client"),
                          ("pki/etcd/healthcheck-client", "/CN=kube-etcd-healthcheck-client")):
        kubeadm_openssl._leaf(made, file, "pki/etcd/ca", subject, kubeadm_openssl.CLIENT, [])
    kubeadm_openssl._node_files(made, (1, 30), "https://api.example.com:6443")
    plan = derive(made)
    assert "kubernetesVersion" not in plan.resource["spec"] and plan.left == {"kube-proxy": "it did not exist"}
    said = next(d for d in plan.derived if d.field == "kubernetesVersion")
    assert said.value is None and "contract" in said.source


def test_an_admin_conf_in_a_group_no_kubeadm_issues_is_refused(tmp_path):
    made = kubeadm_openssl.make(tmp_path / "etc", "cp-1", "192.0.2.10", "api.example.com:6443")
    kubeadm_openssl._leaf(made, "admin", "pki/ca", "/O=ops/CN=kubernetes-admin", kubeadm_openssl.CLIENT, [])
    kubeadm_openssl._kubeconfig(made, "admin", "kubernetes-admin", "https://api.example.com:6443")
    with pytest.raises(UserError, match=r"admin O=ops, apiserver-kubelet-client O=system:masters is what no "
                                        r"kubeadm release issues together"):
        derive(made)


def test_no_certificate_is_taken_into_system_masters_that_is_not_there(tmp_path):
    """admin.conf in system:masters (kubeadm before v1.29, or the contract) with an apiserver-kubelet-client
    of v1.29's: every release that keeps admin.conf would re-issue the other into system:masters."""
    made = kubeadm_openssl.make(tmp_path / "etc", "cp-1", "192.0.2.10", "api.example.com:6443")
    kubeadm_openssl._leaf(made, "pki/apiserver-kubelet-client", "pki/ca",
                          "/O=kubeadm:cluster-admins/CN=kube-apiserver-kubelet-client", kubeadm_openssl.CLIENT, [])
    with pytest.raises(UserError, match=r"apiserver-kubelet-client O=kubeadm:cluster-admins is what no kubeadm"):
        derive(made)


def test_super_admin_conf_must_be_the_first_directory_s(tmp_path):
    body = document("demo", kubernetesVersion="v1.29",
                    etcd={"members": [{"name": "cp-0", "ips": ["192.0.2.11"]}, {"name": "cp-1", "ips": ["192.0.2.12"]}]})
    assert render(tmp_path, tmp_path / "all", body, "--all-members") == 0
    with pytest.raises(UserError, match=r"cp-0/super-admin.conf is kubeadm init's: give its directory first"):
        derive(tmp_path / "all/cp-1", tmp_path / "all/cp-0")
    plan = derive(tmp_path / "all/cp-0", tmp_path / "all/cp-1")
    assert "super-admin" in plan.taken and plan.left == {}
