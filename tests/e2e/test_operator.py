"""The operator on a real kube-apiserver, with the CRD and RBAC from this repository."""

from __future__ import annotations

import base64
import json
import time

import yaml
from cryptography import x509

from tests.e2e.conftest import kubectl, kubectl_json, pytestmark, wait_for  # noqa: F401

CAS = {"ca", "etcd-ca", "front-proxy-ca"}
LEAVES = {"apiserver", "apiserver-kubelet-client", "apiserver-etcd-client", "front-proxy-client",
          "etcd-server-etcd-0", "etcd-peer-etcd-0", "etcd-healthcheck-client", "admin", "kube-scheduler",
          "kube-controller-manager", "kube-proxy"}
ETCD_ISSUED = {"apiserver-etcd-client", "etcd-server-etcd-0", "etcd-peer-etcd-0", "etcd-healthcheck-client"}


def apply(namespace: str, name: str, **spec) -> float:
    body = {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
    start = time.monotonic()
    kubectl("apply", "-f", "-", stdin=yaml.safe_dump(body))
    return start


def ready(namespace: str, name: str, status: str = "True", timeout: float = 60) -> dict:
    def probe():
        obj = kubectl_json("-n", namespace, "get", "clusterpki", name)
        cond = next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        current = obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"]
        return obj if cond and cond["status"] == status and current else None
    return wait_for(probe, timeout, f"{namespace}/{name} Ready={status}")


def secrets_of(namespace: str, name: str) -> dict[str, dict]:
    items = kubectl_json("-n", namespace, "get", "secrets", "-l", f"pki.clusterpki.dev/cluster-pki={name}")["items"]
    return {s["metadata"]["labels"]["pki.clusterpki.dev/component"]: s for s in items}


def cert(secret: dict, key: str = "tls.crt") -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"][key]))


def fingerprint(namespace: str, name: str) -> dict[str, tuple[int, str]]:
    return {c: (cert(s).serial_number if "tls.crt" in s["data"] else 0, s["metadata"]["resourceVersion"])
            for c, s in secrets_of(namespace, name).items()}


def test_apply_to_ready_with_every_secret_and_chain(operator, namespace):
    start = apply(namespace, "main")
    obj = ready(namespace, "main")
    print(f"apply -> Ready: {time.monotonic() - start:.2f}s")
    found = secrets_of(namespace, "main")
    assert set(found) == LEAVES | CAS | {"sa"}
    for component in LEAVES | CAS:
        secret = found[component]
        assert secret["type"] == "kubernetes.io/tls"
        assert secret["metadata"]["name"] == f"main-{component}"
        assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "clusterpki"
        assert {"tls.crt", "tls.key", "ca.crt"} <= set(secret["data"])
    for component in LEAVES:
        issuer = "etcd-ca" if component in ETCD_ISSUED else ("front-proxy-ca" if component == "front-proxy-client"
                                                             else "ca")
        cert(found[component]).verify_directly_issued_by(cert(found[issuer]))
        cert(found[component]).verify_directly_issued_by(cert(found[component], "ca.crt"))
    assert found["sa"]["type"] == "Opaque"
    assert obj["status"]["certificateCount"] == 14
    table = kubectl("-n", namespace, "get", "clusterpki", "main")
    assert table.split("\n")[0].split() == ["NAME", "READY", "CERTIFICATES", "NEXT", "RENEWAL", "AGE"]
    assert table.split("\n")[1].split()[:4] == ["main", "True", "14", obj["status"]["nextRenewal"]]
    assert kubectl("-n", namespace, "get", "cpki", "main", "-o", "name").strip() == \
        "clusterpki.pki.clusterpki.dev/main"
    # Kopf's own bookkeeping survived structural pruning: nothing of ours was dropped from status.
    assert {"conditions", "certificates", "nextRenewal", "observedGeneration"} <= set(obj["status"])


def test_a_restart_reissues_nothing(operator, namespace):
    ready(namespace, "main")
    before = fingerprint(namespace, "main")
    resumed = operator.log().count("Resuming is processed")
    operator.stop()
    operator.start()
    wait_for(lambda: operator.log().count("Resuming is processed") > resumed, 60, "the resume handler to run")
    assert fingerprint(namespace, "main") == before
    ready(namespace, "main")


def test_a_new_san_reissues_only_the_apiserver(operator, namespace):
    before = fingerprint(namespace, "main")
    kubectl("-n", namespace, "patch", "clusterpki", "main", "--type=merge",
            "-p", json.dumps({"spec": {"apiServer": {"certSANs": ["api.e2e.example"]}}}))
    ready(namespace, "main")
    after = fingerprint(namespace, "main")
    assert {c for c in before if before[c] != after[c]} == {"apiserver"}
    dns = cert(secrets_of(namespace, "main")["apiserver"]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "api.e2e.example" in dns


def test_an_invalid_spec_is_reported_while_others_stay_ready(operator, namespace):
    apply(namespace, "broken", serviceCIDR="10.0.0.0/33")  # passes the schema, fails the spec model
    obj = ready(namespace, "broken", status="False")
    condition = obj["status"]["conditions"][0]
    assert condition["reason"] == "InvalidSpec"
    assert "spec.serviceCIDR: '10.0.0.0/33' is not a CIDR" in condition["message"]
    wait_for(lambda: has_event(namespace, "broken", "InvalidSpec", "Warning"), 30, "the InvalidSpec Event")
    assert not secrets_of(namespace, "broken")
    ready(namespace, "main")


def test_bring_your_own_ca(operator, namespace, tmp_path):
    from tests.helpers import document, render
    assert render(tmp_path, tmp_path / "own", document("own")) == 0
    kubectl("-n", namespace, "create", "secret", "tls", "byo-ca", f"--cert={tmp_path / 'own/pki/ca.crt'}",
            f"--key={tmp_path / 'own/pki/ca.key'}")
    apply(namespace, "byo")
    ready(namespace, "byo")
    found = secrets_of(namespace, "byo")
    assert base64.b64decode(found["ca"]["data"]["tls.crt"]) == (tmp_path / "own/pki/ca.crt").read_bytes()
    cert(found["apiserver"]).verify_directly_issued_by(cert(found["ca"]))


def test_deletion_retains_or_deletes_the_secrets(operator, namespace):
    kubectl("-n", namespace, "delete", "clusterpki", "main", "--wait=true", "--timeout=60s")
    assert len(secrets_of(namespace, "main")) == 15
    apply(namespace, "ephemeral", secretRetention="Delete")
    ready(namespace, "ephemeral")
    kubectl("-n", namespace, "delete", "clusterpki", "ephemeral", "--wait=true", "--timeout=60s")
    wait_for(lambda: not secrets_of(namespace, "ephemeral"), 60, "garbage collection of the Secrets")


def has_event(namespace: str, name: str, reason: str, kind: str = "Normal") -> bool:
    events = kubectl_json("-n", namespace, "get", "events", "--field-selector", f"involvedObject.name={name}")
    return any(e["reason"] == reason and e["type"] == kind for e in events["items"])


def test_leaves_are_renewed_on_time_and_the_ca_is_kept(operator, namespace):
    apply(namespace, "short", validity={"certificate": "2m"}, renewBefore="90s")
    obj = ready(namespace, "short")
    first = fingerprint(namespace, "short")
    due = obj["status"]["nextRenewal"]
    leaves = [c for c in first if c not in CAS | {"sa"}]
    wait_for(lambda: all(fingerprint(namespace, "short")[c][0] != first[c][0] for c in leaves), 60,
             f"every leaf renewed at {due}")
    renewed = fingerprint(namespace, "short")
    assert {c: renewed[c] for c in CAS | {"sa"}} == {c: first[c] for c in CAS | {"sa"}}, "CAs untouched"
    time.sleep(10)
    assert {c: fingerprint(namespace, "short")[c][0] for c in leaves} == {c: renewed[c][0] for c in leaves}, \
        "no leaf is renewed twice in one window"
    assert has_event(namespace, "short", "Renewed")


def test_a_deleted_leaf_secret_comes_back(operator, namespace):
    kubectl("-n", namespace, "delete", "secret", "short-kube-proxy")
    wait_for(lambda: "kube-proxy" in secrets_of(namespace, "short"), 30, "the Secret re-issued")
    wait_for(lambda: has_event(namespace, "short", "Reissued"), 30, "the Reissued Event")


def test_renew_annotation_reissues_within_seconds(operator, namespace):
    before = fingerprint(namespace, "short")
    kubectl("-n", namespace, "annotate", "clusterpki", "short", "--overwrite",
            f"pki.clusterpki.dev/renew=apiserver@{time.time()}")
    wait_for(lambda: fingerprint(namespace, "short")["apiserver"][0] != before["apiserver"][0], 15,
             "the apiserver renewed on demand")


def test_rotate_ca_goes_through_its_phases_with_the_bundle_invariant(operator, namespace):
    apply(namespace, "rot")
    ready(namespace, "rot")
    kubectl("-n", namespace, "annotate", "clusterpki", "rot", "--overwrite",
            "pki.clusterpki.dev/rotate-ca-grace=5s", "pki.clusterpki.dev/rotate-ca=etcd-ca")
    seen = set()

    def phase_and_invariant():
        obj = kubectl_json("-n", namespace, "get", "clusterpki", "rot")
        phase = (obj.get("status", {}).get("caRotation") or {}).get("phase")
        if phase:
            seen.add(phase)
        found = secrets_of(namespace, "rot")
        bundles = [x509.load_pem_x509_certificates(base64.b64decode(found[c]["data"]["ca.crt"]))
                   for c in ["etcd-ca", *ETCD_ISSUED]]
        for leaf in ETCD_ISSUED:
            for trust in bundles:
                assert any(_issued_by(cert(found[leaf]), ca) for ca in trust), f"{leaf} vs a bundle in {phase}"
        return phase == "Completed"
    wait_for(phase_and_invariant, 90, "the rotation to complete")
    assert {"Preparing", "Rotating"} <= seen
    assert "rot-etcd-ca-previous" in {s["metadata"]["name"] for s in secrets_of(namespace, "rot").values()}


def _issued_by(leaf: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        leaf.verify_directly_issued_by(ca)
        return True
    except Exception:  # noqa: BLE001 (another CA of the bundle)
        return False


def test_the_operator_was_never_forbidden(operator):
    log = operator.log()
    assert "APIForbiddenError" not in log and "status=403" not in log and "HTTP 403" not in log, log[-3000:]
    assert "PRIVATE KEY" not in log
