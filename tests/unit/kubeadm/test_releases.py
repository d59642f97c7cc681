"""kubeadm's identities by release (``spec.kubernetesVersion``) and the files ``kubeadm init`` writes beyond
the Secrets: ``super-admin.conf`` on the first member only, and every member's ``kubelet.conf``. Read with
the openssl CLI from rendered files, as a user would check them."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from clusterpki.kubeadm import layout
from clusterpki.pki import catalog, engine, spec, times

from tests import kubeadm_openssl
from tests.helpers import document, openssl, render

MEMBERS = {"members": [{"name": "cp-0", "ips": ["192.0.2.11"]}, {"name": "cp-1", "ips": ["192.0.2.12"]}]}


def subject_of(conf: Path) -> str:
    """The subject of a kubeconfig's client certificate, as openssl prints it."""
    user = yaml.safe_load(conf.read_text())["users"][0]["user"]
    pem = base64.b64decode(user["client-certificate-data"])
    return subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"], input=pem,
                          capture_output=True, check=True).stdout.decode().strip().removeprefix("subject=")


def server_of(conf: Path) -> str:
    return yaml.safe_load(conf.read_text())["clusters"][0]["cluster"]["server"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterpki", *args], capture_output=True, text=True)


@pytest.mark.parametrize("version", [None, "v1.24", "v1.28.9"])
def test_before_v1_29_admin_conf_is_in_system_masters_and_there_is_no_super_admin(tmp_path, version):
    body = document("x", **({"kubernetesVersion": version} if version else {}))
    assert render(tmp_path, tmp_path / "out", body) == 0
    assert subject_of(tmp_path / "out/admin.conf") == "CN=kubernetes-admin,O=system:masters"
    assert not (tmp_path / "out/super-admin.conf").exists()
    assert "super-admin" not in {leaf.component for leaf in catalog.plan(spec.from_resource(body))}


@pytest.mark.parametrize("version", ["v1.29", "1.31.2"])
def test_from_v1_29_admin_conf_is_in_cluster_admins_and_super_admin_conf_in_masters(tmp_path, version):
    body = document("x", kubernetesVersion=version, controlPlaneEndpoint="api.example.com:6443")
    assert render(tmp_path, tmp_path / "out", body) == 0
    out = tmp_path / "out"
    assert subject_of(out / "admin.conf") == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    assert subject_of(out / "super-admin.conf") == "CN=kubernetes-super-admin,O=system:masters"
    assert server_of(out / "super-admin.conf") == "https://api.example.com:6443"
    assert (out / "super-admin.conf").stat().st_mode & 0o777 == 0o600
    assert "super-admin" in {leaf.component for leaf in catalog.plan(spec.from_resource(body))}, \
        "the operator issues its Secret"


def test_super_admin_conf_is_the_first_member_s_alone_as_kubeadm_init_s(tmp_path):
    body = document("x", kubernetesVersion="v1.30", etcd=MEMBERS)
    assert render(tmp_path, tmp_path / "all", body, "--all-members") == 0
    assert (tmp_path / "all/cp-0/super-admin.conf").is_file()
    assert not (tmp_path / "all/cp-1/super-admin.conf").exists(), "kubeadm join writes none"
    assert render(tmp_path, tmp_path / "one", body, "--etcd-member", "cp-1") == 0
    assert not (tmp_path / "one/super-admin.conf").exists()


def test_every_member_gets_its_node_s_kubelet_conf_which_no_secret_holds(tmp_path):
    body = document("x", etcd=MEMBERS, controlPlaneEndpoint="api.example.com:6443")
    assert render(tmp_path, tmp_path / "all", body, "--all-members") == 0
    for member in ("cp-0", "cp-1"):
        conf = tmp_path / "all" / member / "kubelet.conf"
        assert subject_of(conf) == f"CN=system:node:{member},O=system:nodes"
        assert server_of(conf) == "https://api.example.com:6443", "kubeadm's: the endpoint, not the local apiserver"
        pem = base64.b64decode(yaml.safe_load(conf.read_text())["users"][0]["user"]["client-certificate-data"])
        (tmp_path / "kubelet.crt").write_bytes(pem)
        assert "TLS Web Client Authentication" in openssl("x509", "-in", str(tmp_path / "kubelet.crt"), "-noout",
                                                          "-ext", "extendedKeyUsage")
        openssl("verify", "-CAfile", str(tmp_path / "all" / member / "pki/ca.crt"), str(tmp_path / "kubelet.crt"))
    planned = {leaf.component for leaf in catalog.plan(spec.from_resource(body))}
    assert not any(c.startswith("kubelet") for c in planned), "no Secret, so no agent, ever writes it"


def test_render_again_keeps_kubelet_conf_and_leaves_the_kubelet_s_own_alone(tmp_path):
    out = tmp_path / "out"
    body = document("x")
    assert render(tmp_path, out, body) == 0
    first = (out / "kubelet.conf").read_bytes()
    assert render(tmp_path, out, body) == 0
    assert (out / "kubelet.conf").read_bytes() == first, "kept: idempotent"

    own = kubeadm_openssl.make(tmp_path / "node", "etcd-0", "127.0.0.1", "127.0.0.1:6443", node_files=True)
    bootstrapped = (own / "kubelet.conf").read_bytes()
    (out / "kubelet.conf").write_bytes(bootstrapped)
    result = cli("render", "-f", str(tmp_path / "x-cpki.yaml"), "--out", str(out), "--force")
    assert result.returncode == 0, result.stderr
    assert (out / "kubelet.conf").read_bytes() == bootstrapped, "the kubelet rotates its own"
    assert "kubelet.conf is the node's own" in result.stdout


def test_check_expiration_lists_super_admin_conf_where_it_is_and_never_kubelet_conf(tmp_path):
    body = document("x", kubernetesVersion="v1.29")
    out = tmp_path / "out"
    assert render(tmp_path, out, body) == 0
    names = [line.split()[0] for line in cli("check-expiration", "--dir", str(out)).stdout.splitlines()[1:]]
    assert "super-admin.conf" in names and "kubelet.conf" not in names
    (out / "super-admin.conf").unlink()  # moved somewhere safe, as kubeadm advises
    result = cli("check-expiration", "--dir", str(out))
    assert result.returncode == 0 and "super-admin.conf" not in result.stdout


def test_an_agent_keeps_super_admin_conf_current_only_where_it_is(tmp_path):
    pki_spec = spec.from_resource(document("x", kubernetesVersion="v1.29", etcd=MEMBERS))
    built = engine.build(pki_spec, engine.Existing(), times.now())
    first, other = layout.files_for(built, "cp-0"), layout.files_for(built, "cp-1")
    assert "super-admin.conf" in first and "super-admin.conf" not in other
    assert "kubelet.conf" not in first, "built from the Secrets' plan: no kubelet.conf"
    assert "super-admin.conf" not in layout.where_present(tmp_path, first), "moved away: never put back"
    (tmp_path / "super-admin.conf").write_bytes(b"old")
    assert "super-admin.conf" in layout.where_present(tmp_path, first)
    assert set(layout.where_present(tmp_path, first)) | {"super-admin.conf"} == set(first)


def test_a_bad_kubernetes_version_is_a_spec_error(tmp_path):
    for bad in ("1.29-rc.0", "v2.0", "latest", 1.29):
        with pytest.raises(spec.SpecError, match="spec.kubernetesVersion"):
            spec.from_resource(document("x", kubernetesVersion=bad))


def test_rows_that_share_a_component_differ_only_by_release():
    """admin is one Secret and one file whichever release issues it: its rows agree on all else, and exactly
    one of them is each release's (super-admin's is only from v1.29)."""
    for component in {p.component for p in catalog.LEAVES}:
        rows = [p for p in catalog.LEAVES if p.component == component]
        assert len({p._replace(organizations=(), releases=catalog.ALWAYS, local=False) for p in rows}) == 1, component
        for release in (None, *(spec.Release(1, minor) for minor in range(20, 40))):
            assert sum(p.releases.include(release) for p in rows) == (component != "super-admin" or
                                                                       (release or spec.Release(1, 0)) >= catalog.SUPER_ADMIN_SPLIT), \
                (component, release)


@pytest.mark.parametrize("version, server", [(None, "https://api.example.com:6443"),
                                             ("v1.32", "https://api.example.com:6443"),
                                             ("v1.33", "https://192.0.2.11:6443")])
def test_from_v1_33_a_member_s_kubelet_conf_reaches_its_own_apiserver(tmp_path, version, server):
    """kubeadm's ControlPlaneKubeletLocalMode, beta and on from v1.33: kubelet.conf points at the node's
    advertise address, as controller-manager.conf does; before, at controlPlaneEndpoint."""
    members = {"members": [{"name": "cp-0", "ips": ["192.0.2.11"], "advertiseAddress": "192.0.2.11"}]}
    body = document("x", etcd=members, controlPlaneEndpoint="api.example.com:6443",
                    **({"kubernetesVersion": version} if version else {}))
    assert render(tmp_path, tmp_path / "out", body) == 0
    assert server_of(tmp_path / "out/kubelet.conf") == server
    assert server_of(tmp_path / "out/controller-manager.conf") == "https://192.0.2.11:6443"
