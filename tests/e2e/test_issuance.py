"""Issuance into Secrets on a real kube-apiserver: apply→Ready, idempotence, partial re-issue, bad input,
brought-in and unusable CAs, retention through real ownerReferences and garbage collection."""

from __future__ import annotations

import asyncio
import base64

from cryptography import x509

from tests.controlplane import difference
from tests.e2e.conftest import pki
from tests.helpers import CAS, ISSUER, KUBECONFIGS, LEAVES, document, render
from tests.kube import cert_of, decode
from tests.runners import Operator


def reconciles() -> float:
    """Reconciles so far, by the in-process operator's own metric."""
    from prometheus_client import REGISTRY

    return sum(REGISTRY.get_sample_value("clusterpki_reconcile_total", {"result": r}) or 0
               for r in ("ready", "not_ready", "stopped"))


async def test_apply_to_ready_with_every_secret_and_chain(operator, api, namespace, cluster):
    await api.apply_pki(pki("main", namespace))
    obj = await api.ready(namespace, "main")

    found = await api.secrets_of(namespace, "main")
    assert set(found) == LEAVES | CAS | {"sa"}
    for component in LEAVES | CAS:
        secret = found[component]
        assert secret["type"] == "kubernetes.io/tls"
        assert secret["metadata"]["name"] == f"main-{component}"
        assert secret["metadata"]["labels"] == {"pki.clusterpki.dev/cluster-pki": "main",
                                                "pki.clusterpki.dev/component": component,
                                                "app.kubernetes.io/managed-by": "clusterpki"}
        expected = {"tls.crt", "tls.key", "ca.crt"} | ({"kubeconfig"} if component in KUBECONFIGS else set())
        assert set(secret["data"]) == expected
        assert "ownerReferences" not in secret["metadata"]  # secretRetention: Retain
    for component in LEAVES:
        cert_of(found[component]).verify_directly_issued_by(cert_of(found[ISSUER[component]]))
        cert_of(found[component]).verify_directly_issued_by(cert_of(found[component], "ca.crt"))
    assert found["sa"]["type"] == "Opaque" and set(found["sa"]["data"]) == {"sa.key", "sa.pub"}

    # What kubectl shows: the CRD's printer columns, over a status that survived structural pruning.
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["certificateCount"] == 14
    entries = {e["name"]: e for e in status["certificates"]}
    assert set(entries) == LEAVES | CAS
    assert entries["apiserver"] | {"notBefore": "", "notAfter": "", "renewalTime": ""} == {
        "name": "apiserver", "secretName": "main-apiserver", "issuer": "ca", "notBefore": "", "notAfter": "",
        "serialNumber": f"{cert_of(found['apiserver']).serial_number:X}", "renewalTime": ""}
    assert status["nextRenewal"] == min(entries[c]["renewalTime"] for c in LEAVES)
    assert (status["conditions"][0]["type"], status["conditions"][0]["status"]) == ("Ready", "True")
    assert {"conditions", "certificates", "nextRenewal", "observedGeneration"} <= set(status)
    table = cluster.kubectl("-n", namespace, "get", "clusterpki", "main").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "PHASE", "CERTIFICATES", "CONSUMERS", "NEXT", "RENEWAL", "AGE"]
    assert table[1].split()[:3] == ["main", "True", "14"] and status["nextRenewal"] in table[1].split()
    assert cluster.kubectl("-n", namespace, "get", "cpki", "main", "-o", "name").stdout.strip() == \
        "clusterpki.pki.clusterpki.dev/main"
    await api.wait_for(lambda: api.has_event(namespace, "Issued", "Issued 15: ca, etcd-ca, front-proxy-ca, apiserver,",
                                             kind="Normal"), what="the Issued Event")
    assert "PRIVATE KEY" not in str(await api.list("events", namespace))


async def test_a_restart_writes_nothing(operator, api, namespace, cluster):
    await api.apply_pki(pki("main", namespace))
    await api.ready(namespace, "main")
    before = {c: s["metadata"]["resourceVersion"] for c, s in (await api.secrets_of(namespace, "main")).items()}
    await operator.stop()
    writes = cluster.requests()
    looked = reconciles()
    await operator.start()
    await api.wait_for(lambda: reconciles() > looked, 20, "the look at start-up")
    await asyncio.sleep(1)  # anything the look would write has been written by now
    after = {c: s["metadata"]["resourceVersion"] for c, s in (await api.secrets_of(namespace, "main")).items()}
    assert after == before
    # From the apiserver's own counts (other namespaces' deletion by earlier tests may still be under way).
    assert {key: n for key, n in difference(writes, cluster.requests()).items() if key[0] in ("POST", "PUT", "PATCH")
            and key[1] in ("secrets", "clusterpkis", "events")} == {}


async def test_a_new_san_reissues_only_the_apiserver(operator, api, namespace):
    await api.apply_pki(pki("main", namespace))
    await api.ready(namespace, "main")
    before = await api.serials(namespace, "main")
    await api.patch("clusterpkis", "main", {"spec": {"apiServer": {"certSANs": ["api.e2e.example", "10.1.2.3"]}}},
                    namespace)
    await api.ready(namespace, "main")
    after = await api.serials(namespace, "main")
    assert {c for c in before if before[c] != after[c]} == {"apiserver"}
    san = cert_of((await api.secrets_of(namespace, "main"))["apiserver"]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "api.e2e.example" in san.get_values_for_type(x509.DNSName)
    assert "10.1.2.3" in {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    await api.wait_for(lambda: api.has_event(namespace, "Reissued", "Re-issued apiserver (serial"),
                       what="the Reissued Event")


async def test_a_new_member_adds_only_its_two_certificates(operator, api, namespace):
    await api.apply_pki(pki("main", namespace))
    await api.ready(namespace, "main")
    before = await api.serials(namespace, "main")
    members = [{"name": "etcd-0", "dnsNames": ["localhost"], "ips": ["127.0.0.1"]},
               {"name": "etcd-1", "dnsNames": ["etcd-1.example"], "ips": ["10.0.0.11"]}]
    await api.patch("clusterpkis", "main", {"spec": {"etcd": {"members": members}}}, namespace)
    obj = await api.ready(namespace, "main")
    after = await api.serials(namespace, "main")
    assert set(after) - set(before) == {"etcd-server-etcd-1", "etcd-peer-etcd-1"}
    assert {c: after[c] for c in before} == before
    assert obj["status"]["certificateCount"] == 16


async def test_a_bad_spec_is_reported_without_touching_anything(operator, api, namespace):
    await api.apply_pki(pki("good", namespace))
    await api.ready(namespace, "good")
    good = await api.serials(namespace, "good")
    # Passes the CRD's schema (strings of the right shape), fails the spec model.
    await api.apply_pki(pki("bad", namespace, serviceCIDR="10.0.0.0/33", validity={"certificate": "2m"},
                            renewBefore="5m"))
    obj = await api.ready(namespace, "bad", status="False")
    ready = obj["status"]["conditions"][0]
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"] == ("The spec is invalid: spec.serviceCIDR: '10.0.0.0/33' is not a CIDR; "
                                "spec.renewBefore: 5m0s must be shorter than spec.validity.certificate (2m0s)")
    await api.wait_for(lambda: api.has_event(namespace, "InvalidSpec", ready["message"], kind="Warning"),
                       what="the InvalidSpec Event")
    assert not await api.secrets_of(namespace, "bad")

    # A permanent error: no retry while the spec stays as it is.
    version = obj["metadata"]["resourceVersion"]
    await asyncio.sleep(2)
    assert (await api.get("clusterpkis", "bad", namespace))["metadata"]["resourceVersion"] == version
    assert await api.serials(namespace, "good") == good

    await api.patch("clusterpkis", "bad", {"spec": {"serviceCIDR": "10.0.0.0/16", "renewBefore": "1m"}}, namespace)
    await api.ready(namespace, "bad")


async def test_bring_your_own_ca(operator, api, namespace, tmp_path):
    assert render(tmp_path, tmp_path / "own", document("own")) == 0
    ca_crt, ca_key = (tmp_path / "own/pki/ca.crt").read_bytes(), (tmp_path / "own/pki/ca.key").read_bytes()
    await api.create("secrets", {"metadata": {"name": "byo-ca", "labels": {"team": "a"}}, "type": "Opaque",
                                 "data": {"tls.crt": base64.b64encode(ca_crt).decode(),
                                          "tls.key": base64.b64encode(ca_key).decode()}}, namespace)
    await api.apply_pki(pki("byo", namespace))
    await api.ready(namespace, "byo")
    secret = await api.get("secrets", "byo-ca", namespace)
    assert decode(secret, "tls.crt") == ca_crt and decode(secret, "tls.key") == ca_key
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["labels"]["team"] == "a"
    assert secret["metadata"]["annotations"]["pki.clusterpki.dev/adopted"] == "true"
    cert_of(await api.get("secrets", "byo-apiserver", namespace)).verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca_crt))
    await api.wait_for(lambda: api.has_event(namespace, "Adopted", "Adopted the ca CA brought in Secret byo-ca"),
                       what="the Adopted Event")


async def test_an_unusable_ca_is_left_untouched(operator, api, namespace):
    garbage = base64.b64encode(b"not a certificate").decode()
    await api.create("secrets", {"metadata": {"name": "main-etcd-ca"}, "type": "Opaque",
                                 "data": {"tls.crt": garbage, "tls.key": garbage}}, namespace)
    before = await api.get("secrets", "main-etcd-ca", namespace)
    await api.apply_pki(pki("main", namespace))
    obj = await api.ready(namespace, "main", status="False")
    ready = obj["status"]["conditions"][0]
    assert ready["reason"] == "CAInvalid"
    assert ready["message"] == ("A CA cannot be used and is left untouched: Secret main-etcd-ca: "
                                "tls.crt is not a PEM certificate")
    assert await api.get("secrets", "main-etcd-ca", namespace) == before
    assert [s["metadata"]["name"] for s in await api.list("secrets", namespace)
            if s["type"] != "kubernetes.io/service-account-token"] == ["main-etcd-ca"]
    await api.wait_for(lambda: api.has_event(namespace, "CAInvalid", ready["message"], kind="Warning"),
                       what="the CAInvalid Event")


async def test_retention_retain_delete_and_switching(operator, api, namespace):
    await api.apply_pki(pki("kept", namespace))
    made = await api.apply_pki(pki("owned", namespace, secretRetention="Delete"))
    await api.ready(namespace, "kept")
    await api.ready(namespace, "owned")
    for secret in (await api.secrets_of(namespace, "owned")).values():
        assert secret["metadata"]["ownerReferences"] == [{
            "apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI", "name": "owned",
            "uid": made["metadata"]["uid"], "controller": True, "blockOwnerDeletion": False}]

    # Switching kept to Delete adds the ownerReferences and re-issues nothing.
    before = await api.serials(namespace, "kept")
    await api.patch("clusterpkis", "kept", {"spec": {"secretRetention": "Delete"}}, namespace)
    await api.ready(namespace, "kept")
    assert all(s["metadata"].get("ownerReferences") for s in (await api.secrets_of(namespace, "kept")).values())
    assert await api.serials(namespace, "kept") == before
    await api.patch("clusterpkis", "kept", {"spec": {"secretRetention": "Retain"}}, namespace)
    await api.ready(namespace, "kept")
    assert not any(s["metadata"].get("ownerReferences") for s in (await api.secrets_of(namespace, "kept")).values())

    # Deleting: Retain keeps all 15 Secrets; Delete leaves them to kube-controller-manager's garbage collector.
    await api.delete("clusterpkis", "kept", namespace)
    await api.delete("clusterpkis", "owned", namespace)

    async def collected():
        return not await api.secrets_of(namespace, "owned")
    await api.wait_for(collected, 60, "garbage collection of owned's Secrets")
    assert len(await api.secrets_of(namespace, "kept")) == 15


async def test_one_operator_serves_two_namespaces(as_operator, api, namespace):
    other = f"{namespace}-b"
    await api.create("namespaces", {"metadata": {"name": other}})
    runner = Operator(namespaces=(namespace, other))
    await runner.start()
    try:
        await asyncio.gather(api.apply_pki(pki("main", namespace)), api.apply_pki(pki("main", other)))
        await api.ready(namespace, "main")
        await api.ready(other, "main")
        a, b = await api.serials(namespace, "main"), await api.serials(other, "main")
        assert a["ca"] != b["ca"] and len(a) == len(b) == 14
    finally:
        await runner.stop()
        await api.delete("namespaces", other)
