"""The install on a real kube-apiserver: server-side dry runs of the CRD and the kustomization, and
the operator's metrics endpoint while it runs as its ServiceAccount."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import REPO, OperatorProcess, kubectl, pytestmark, wait_for  # noqa: F401


def test_server_side_dry_runs_accept_the_crd_and_the_manifests(installed):
    kubectl("apply", "--server-side", "--dry-run=server", "-f", str(REPO / "crds"))
    out = kubectl("apply", "--server-side", "--dry-run=server", "-k", str(REPO / "manifests"))
    assert "deployment.apps/clusterpki" in out


def test_the_metrics_endpoint_serves_the_families(operator_kubeconfig: Path, namespace: str, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "operator.log",
                              extra=("--metrics-port", str(port)))
    process.start()
    try:
        kubectl("-n", namespace, "apply", "-f", str(REPO / "examples/clusterpki.yaml"))

        def families():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                names = {f.name for f in text_string_to_metric_families(response.read().decode())}
            return names if "clusterpki_certificate_not_after_timestamp_seconds" in names else None
        names = wait_for(families, 60, "the certificate metrics")
        assert {"clusterpki_certificate_renewal_timestamp_seconds", "clusterpki_ready", "clusterpki_issuance",
                "clusterpki_reconcile_errors", "clusterpki_csr_decisions"} <= names
    finally:
        process.stop()
        kubectl("-n", namespace, "delete", "clusterpki", "example", "--ignore-not-found", check=False)
