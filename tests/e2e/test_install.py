"""The install, exactly as the README tells users to do it, on fresh control planes; the CRD's schema as
the apiserver enforces it; and ``clusterpki run`` as a process, with its metrics."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.controlplane import INSTALL, INSTALL_KUSTOMIZE, REPO, ControlPlane, harness
from tests.e2e.conftest import pki
from tests.helpers import LEAVES
from tests.kube import Api
from tests.runners import OperatorProcess, free_port

README = (REPO / "README.md").read_text()


def test_the_readme_gives_both_install_commands():
    assert f"\n{INSTALL}\n" in README, "the quick start's install command"
    assert f"`{INSTALL_KUSTOMIZE}`" in README


def test_the_readme_install_works_the_first_time(install_result, cluster):
    assert install_result.returncode == 0, install_result.stderr
    assert install_result.stderr == ""
    assert "namespace/clusterpki-system created" in install_result.stdout or not cluster.booted
    cluster.kubectl("-n", "clusterpki-system", "get", "deployment/clusterpki", "serviceaccount/clusterpki")


@pytest.mark.skipif(harness() is None, reason="needs the harness to boot a second, fresh control plane")
def test_the_readme_kustomize_install_works_on_a_fresh_control_plane(tmp_path):
    fresh = ControlPlane.boot(tmp_path / "fresh")
    try:
        result = fresh.install(INSTALL_KUSTOMIZE)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        fresh.kubectl("-n", "clusterpki-system", "get", "deployment/clusterpki", "serviceaccount/clusterpki")
        fresh.kubectl("get", "clusterrole/clusterpki", "clusterrolebinding/clusterpki")
    finally:
        fresh.down()


def test_server_side_dry_runs_accept_the_crd_and_the_manifests(installed, cluster):
    cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(REPO / "crds"))
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-k", str(REPO / "manifests")).stdout
    assert "deployment.apps/clusterpki" in out


def test_the_agent_manifests_pass_a_server_side_dry_run(installed, cluster, namespace, tmp_path):
    """What ``clusterpki agent-manifests`` prints, the members' DaemonSets included, as the apiserver
    validates it. The node agents' DaemonSet is privileged, which this control plane does not allow
    (kubeadm's does: ``--allow-privileged=true``): the kubeadm proof dry-runs it there."""
    spec_file = tmp_path / "pki.yaml"
    body = pki("dry", namespace, controlPlaneEndpoint="10.0.0.1:6443",
               etcd={"members": [{"name": "m0", "ips": ["10.0.0.10"]}, {"name": "m1", "ips": ["10.0.0.11"]}]})
    spec_file.write_text(yaml.safe_dump(body))
    printed = subprocess.run([sys.executable, "-m", "clusterpki", "agent-manifests", "-f", str(spec_file),
                              "--no-node-agents"], capture_output=True, text=True, check=True, cwd=REPO).stdout
    out = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=printed).stdout
    assert out.count("daemonset.apps/clusterpki-agent-dry-") == 2 and "node-agent" not in out, out


async def test_clusterpki_run_serves_its_metrics(operator_kubeconfig, api, namespace, tmp_path):
    port = free_port()
    process = OperatorProcess(operator_kubeconfig, tmp_path / "operator.log", "-n", namespace,
                              "--metrics-port", str(port))
    await asyncio.to_thread(process.start)
    try:
        await api.apply_pki(pki("alpha", namespace))
        await api.apply_pki(pki("broken", namespace, serviceCIDR="10.0.0.0/33"))
        obj = await api.ready(namespace, "alpha")
        await api.ready(namespace, "broken", status="False")
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    finally:
        await asyncio.to_thread(process.stop)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    entries = {e["name"]: e for e in obj["status"]["certificates"]}
    apiserver = dict(namespace=namespace, cluster_pki="alpha", component="apiserver", issuer="ca")
    not_after = time.mktime(time.strptime(entries["apiserver"]["notAfter"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert value("clusterpki_certificate_not_after_timestamp_seconds", **apiserver) == not_after
    assert value("clusterpki_certificate_renewal_timestamp_seconds", **apiserver) < not_after
    assert value("clusterpki_ready", namespace=namespace, cluster_pki="alpha") == 1
    assert value("clusterpki_ready", namespace=namespace, cluster_pki="broken") == 0
    assert value("clusterpki_issuance_total", namespace=namespace, cluster_pki="alpha",
                 reason="new") == len(LEAVES) + 4  # leaves, 3 CAs and the SA key
    assert value("clusterpki_reconcile_errors_total", namespace=namespace, cluster_pki="broken",
                 reason="InvalidSpec") >= 1
    assert "clusterpki_csr_decisions" in {f.name for f in text_string_to_metric_families(text)}
    log = process.log()
    assert "PRIVATE KEY" not in log and "HTTP 403" not in log and "Traceback" not in log, log[-3000:]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def _token_file_kubeconfig(plane: ControlPlane, path: Path, token_file: Path) -> Path:
    """The operator's ServiceAccount as a pod has it: a kubeconfig whose token is a file, rotated on disk."""
    admin = json.loads(plane.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "cluster", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "operator", "user": {"tokenFile": str(token_file)}}],
        "contexts": [{"name": "operator", "context": {"cluster": "cluster", "user": "operator"}}]}))
    return path


def _bound_token(plane: ControlPlane, secret: str) -> str:
    """A token of the operator's ServiceAccount that dies with Secret ``secret`` (as a pod's dies with its pod)."""
    plane.kubectl("-n", "clusterpki-system", "create", "secret", "generic", secret)
    return plane.kubectl("-n", "clusterpki-system", "create", "token", "clusterpki", "--bound-object-kind", "Secret",
                         "--bound-object-name", secret).stdout.strip()


@pytest.mark.skipif(harness() is None, reason="needs the harness to boot a second, fresh control plane")
async def test_an_operator_started_before_its_crd_serves_once_it_comes_and_follows_its_rotated_token(tmp_path):
    """``kubectl apply -k manifests/`` alone (no CRD) and the operator up: it waits for the CRD, saying so, and
    serves ClusterPKIs once it is applied. Its token is a file, replaced while it runs and the old one
    revoked: it goes on. A token the apiserver refuses ends it at once, in one line."""
    fresh = ControlPlane.boot(tmp_path / "fresh")
    operator = None
    try:
        fresh.kubectl("apply", "-k", str(REPO / "manifests"))
        token = tmp_path / "token"
        token.write_text(_bound_token(fresh, "token-a"))
        operator = OperatorProcess(_token_file_kubeconfig(fresh, tmp_path / "operator.conf", token),
                                   tmp_path / "operator.log")
        await asyncio.to_thread(operator.start)
        url, session = Api.session_for(fresh.kubeconfig)
        api = Api(url, session)
        try:
            await api.wait_for(lambda: "is not installed" in operator.log(), 30, "the operator saying it waits")
            fresh.kubectl("apply", "-f", str(REPO / "crds"))
            fresh.kubectl("create", "namespace", "late")
            await api.apply_pki(pki("first", "late"))
            await api.ready("late", "first", timeout=60)

            token.write_text(_bound_token(fresh, "token-b"))
            fresh.kubectl("-n", "clusterpki-system", "delete", "secret", "token-a")  # the old token dies now
            await api.apply_pki(pki("second", "late"))
            await api.ready("late", "second", timeout=90)
        finally:
            await session.close()
        said = operator.log()
        assert "Traceback" not in said and said.count("is not installed") == 1, said[-3000:]
        operator.stop()

        token.write_text("not-a-token")
        refused = subprocess.run([sys.executable, "-m", "clusterpki", "run", "--standalone", "--kubeconfig",
                                  str(tmp_path / "operator.conf")], capture_output=True, text=True, timeout=60, cwd=REPO)
        last = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
        assert last.startswith("clusterpki: error: ") and "refuses the credentials" in last and \
            str(tmp_path / "operator.conf") in last, last
    finally:
        if operator is not None:
            operator.stop()
        fresh.down()
