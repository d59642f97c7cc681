"""Kubelet CSR approval on a real kube-apiserver, with a real Node's addresses.

CSRs are created as the Node (``kubectl --as=system:node:<n>``), so ``spec.username`` is real.
kube-controller-manager signs what is approved and itself approves valid kubelet *client* CSRs,
so these tests decide serving CSRs and forged ones. Every CSR they create, they delete.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.csr_factory import request_pem
from tests.e2e.conftest import (  # noqa: F401
    OperatorProcess,
    kubectl,
    kubectl_json,
    pytestmark,
    wait_for,
)

PREFIX = f"clusterpki-e2e-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def node() -> dict:
    first = kubectl_json("get", "nodes")["items"][0]
    addresses = first["status"]["addresses"]
    return {"name": first["metadata"]["name"],
            "hostnames": [a["address"] for a in addresses if a["type"] in ("Hostname", "InternalDNS")],
            "ips": [a["address"] for a in addresses if a["type"] in ("InternalIP", "ExternalIP")]}


@pytest.fixture(scope="module")
def csr_operator(operator_kubeconfig: Path, namespace: str, tmp_path_factory) -> Iterator[OperatorProcess]:
    policy = {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
              "metadata": {"name": "policy", "namespace": namespace}, "spec": {}}
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(policy))
    process = OperatorProcess(operator_kubeconfig, namespace, tmp_path_factory.mktemp("csr") / "operator.log",
                              extra=("--csr-policy", f"{namespace}/policy"))
    process.start()
    created: list[str] = []
    process.created = created  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        process.stop()
        for name in created:
            kubectl("delete", "csr", name, "--ignore-not-found", check=False)


def submit(operator, suffix: str, node: str, signer: str, usages: list[str], as_node: bool = True,
           **request) -> str:
    name = f"{PREFIX}-{suffix}"
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {"signerName": signer, "usages": usages, "request": request_pem(**request)}}
    identity = ["--as", f"system:node:{node}", "--as-group", "system:nodes",
                "--as-group", "system:authenticated"] if as_node else []
    kubectl(*identity, "create", "-f", "-", stdin=yaml.safe_dump(body))
    operator.created.append(name)
    return name


def decision(name: str) -> tuple[str, str] | None:
    conditions = kubectl_json("get", "csr", name).get("status", {}).get("conditions") or []
    decided = [c for c in conditions if c["type"] in ("Approved", "Denied")]
    return (decided[0]["type"], decided[0].get("reason", "")) if decided else None


def test_a_valid_serving_csr_is_approved_in_milliseconds(csr_operator, node):
    start = time.monotonic()
    name = submit(csr_operator, "serving", node["name"], "kubernetes.io/kubelet-serving",
                  ["digital signature", "server auth"], cn=f"system:node:{node['name']}",
                  dns=tuple(node["hostnames"][:1]), ips=tuple(node["ips"][:1]))
    assert wait_for(lambda: decision(name), 30, "the decision") == ("Approved", "AutoApproved")
    print(f"create -> Approved: {time.monotonic() - start:.3f}s (includes kubectl polling)")


@pytest.mark.parametrize("suffix, request_, reason", [
    ("foreign-ip", {"ips": ("10.255.255.254",)}, "SANNotOwnedByNode"),
    ("uri", {"uris": ("spiffe://evil/x",)}, "SANTypeNotAllowed"),
    ("other-cn", {"cn": "system:node:not-this-node"}, "NodeNameMismatch"),
    ("wrong-o", {"orgs": ("system:masters",)}, "SubjectMismatch"),
    ("weak-key", {"key_kind": "rsa1024"}, "WeakKey"),
])
def test_forged_serving_csrs_are_denied_with_the_rule(csr_operator, node, suffix, request_, reason):
    request_ = {"cn": f"system:node:{node['name']}", "dns": tuple(node["hostnames"][:1]), **request_}
    name = submit(csr_operator, suffix, node["name"], "kubernetes.io/kubelet-serving",
                  ["digital signature", "server auth"], **request_)
    assert wait_for(lambda: decision(name), 30, "the decision") == ("Denied", reason)


def test_another_signer_is_left_alone(csr_operator, node):
    name = submit(csr_operator, "other-signer", node["name"], "kubernetes.io/kube-apiserver-client",
                  ["digital signature", "client auth"], as_node=False, cn="someone", orgs=())
    time.sleep(5)
    assert decision(name) is None
    assert f"CSR {name}" not in csr_operator.log()


def test_the_csr_operator_was_never_forbidden(csr_operator):
    log = csr_operator.log()
    assert "APIForbiddenError" not in log and "status=403" not in log and "HTTP 403" not in log, log[-3000:]
