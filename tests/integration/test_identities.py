"""kubeadm's identities by release, on a real etcd and kube-apiserver v1.24 (kubeadm's flags: Node and RBAC
authorization, NodeRestriction) started from a rendered ``spec.kubernetesVersion: v1.29`` layout, and
used with kubectl exactly as the README says:

- ``admin.conf`` is in ``kubeadm:cluster-admins``, so it can do nothing until that group is bound, and
  can be revoked by removing the binding;
- ``super-admin.conf`` is in ``system:masters``, and creates the binding with the README's command;
- the member's ``kubelet.conf`` is its node's: it may register its own Node and no other.

The RBAC rules and the Node authorizer are the apiserver's, not kubeadm's release's, so v1.24 judges the
identities as v1.29 would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import consumers
from tests.controlplane import free_port_block
from tests.helpers import REPO, document, render

pytestmark = pytest.mark.integration

BIN = next((p.parent for p in Path.home().glob(".cache/clusterpki-k8s/*/kube-apiserver")), None)
if BIN is None or not shutil.which("etcd") or not shutil.which("kubectl"):
    if os.environ.get("CI"):
        raise RuntimeError("kube-apiserver (../shared/k8s), etcd and kubectl must be installed in CI")
    pytest.skip("kube-apiserver, etcd or kubectl is not installed", allow_module_level=True)

MEMBER = "cp-0"


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("identities")
    etcd_port, peer_port, api_port = free_port_block(3), None, None
    peer_port, api_port = etcd_port + 1, etcd_port + 2
    out, state = tmp / "kubernetes", tmp / "state"
    state.mkdir()
    body = document("cp", kubernetesVersion="v1.29.4", controlPlaneEndpoint=f"127.0.0.1:{api_port}",
                    etcd={"members": [{"name": MEMBER, "ips": ["127.0.0.1"]}]})
    assert render(tmp, out, body) == 0
    commands = consumers.commands(out / "pki", BIN, state, MEMBER, {MEMBER: (etcd_port, peer_port)}, api_port)
    (state / "commands.json").write_text(json.dumps(commands))
    (state / "config.json").write_text(json.dumps({"pki": str(out / "pki"), "etcd_port": etcd_port,
                                                   "api_port": api_port}))
    try:
        consumers.start("etcd", state)
        consumers.start("kube-apiserver", state)
        yield out
    finally:
        consumers.stop("kube-apiserver", state)
        consumers.stop("etcd", state)


def kubectl(out: Path, conf: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "--kubeconfig", str(out / conf), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def readme_binding_command() -> list[str]:
    """The README's command that binds kubeadm:cluster-admins, with super-admin.conf."""
    line = next(line for line in REPO.joinpath("README.md").read_text().splitlines()
                if "create clusterrolebinding kubeadm:cluster-admins" in line)
    return line.split("#")[0].split()


def test_admin_conf_is_bound_by_rbac_and_super_admin_conf_binds_it(control_plane):
    out = control_plane
    before = kubectl(out, "admin.conf", "get", "namespaces")
    assert before.returncode == 1 and 'User "kubernetes-admin" cannot list resource "namespaces"' in before.stderr, \
        before.stderr

    command = readme_binding_command()
    assert command[:3] == ["kubectl", "--kubeconfig", "./pki/super-admin.conf"], command
    bound = kubectl(out, "super-admin.conf", *command[3:])
    assert bound.returncode == 0, bound.stderr

    after = kubectl(out, "admin.conf", "get", "namespaces", "-o", "name")
    assert after.returncode == 0 and "namespace/default" in after.stdout, after.stderr
    assert kubectl(out, "admin.conf", "auth", "can-i", "*", "*").stdout.strip() == "yes"


def test_kubelet_conf_is_the_member_s_node_and_no_other(control_plane):
    out = control_plane

    def node(name: str) -> str:
        return yaml.safe_dump({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})

    own = kubectl(out, "kubelet.conf", "create", "-f", "-", stdin=node(MEMBER))
    assert own.returncode == 0, own.stderr
    other = kubectl(out, "kubelet.conf", "create", "-f", "-", stdin=node("cp-1"))
    assert other.returncode == 1 and 'node "cp-0" is not allowed to modify node "cp-1"' in other.stderr, other.stderr
