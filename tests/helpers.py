"""Helpers shared by every layer: ClusterPKI documents, rendering, and the openssl CLI."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import yaml
from clusterpki import cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "clusterpki.yaml"


def document(name: str = "test", **spec: Any) -> dict[str, Any]:
    """A ClusterPKI document as a user would apply it."""
    return {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
            "metadata": {"name": name}, "spec": copy.deepcopy(spec)}


def write_document(path: Path, body: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(body))
    return path


def render(tmp_path: Path, out: Path, body: dict[str, Any], *extra: str) -> int:
    """Run ``clusterpki render`` in-process; returns its exit code."""
    spec_file = write_document(tmp_path / f"{body['metadata']['name']}-cpki.yaml", body)
    return cli.main(["render", "-f", str(spec_file), "--out", str(out), *extra])


def openssl(*args: str) -> str:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    assert result.returncode == 0, f"openssl {' '.join(args)} failed: {result.stderr}"
    return result.stdout


# What every ClusterPKI of the default spec holds, by component.
LEAVES = {"apiserver", "apiserver-kubelet-client", "apiserver-etcd-client", "front-proxy-client",
          "etcd-server-etcd-0", "etcd-peer-etcd-0", "etcd-healthcheck-client", "admin", "kube-scheduler",
          "kube-controller-manager", "kube-proxy"}
CAS = {"ca", "etcd-ca", "front-proxy-ca"}
KUBECONFIGS = {"admin", "kube-scheduler", "kube-controller-manager", "kube-proxy"}
ISSUER = {leaf: "ca" for leaf in LEAVES} | {
    "apiserver-etcd-client": "etcd-ca", "etcd-server-etcd-0": "etcd-ca", "etcd-peer-etcd-0": "etcd-ca",
    "etcd-healthcheck-client": "etcd-ca", "front-proxy-client": "front-proxy-ca"}
FAMILY = {ca: sorted(leaf for leaf in LEAVES if ISSUER[leaf] == ca) for ca in CAS}
