"""Issuance into Secrets: create→Ready, idempotence, partial re-issue, bad input, CAs, retention."""

from __future__ import annotations

import asyncio
import base64

from cryptography import x509

from tests.helpers import document
from tests.operator.conftest import Operator

LEAVES = {"apiserver", "apiserver-kubelet-client", "apiserver-etcd-client", "front-proxy-client",
          "etcd-server-etcd-0", "etcd-peer-etcd-0", "etcd-healthcheck-client", "admin", "kube-scheduler",
          "kube-controller-manager", "kube-proxy"}
CAS = {"ca", "etcd-ca", "front-proxy-ca"}
KUBECONFIGS = {"admin", "kube-scheduler", "kube-controller-manager", "kube-proxy"}
ISSUER = {"apiserver-etcd-client": "etcd-ca", "etcd-server-etcd-0": "etcd-ca", "etcd-peer-etcd-0": "etcd-ca",
          "etcd-healthcheck-client": "etcd-ca", "front-proxy-client": "front-proxy-ca"}


def pki(name: str, namespace: str = "team-a", **spec) -> dict:
    body = document(name, **spec)
    body["metadata"]["namespace"] = namespace
    return body


def decode(secret: dict, key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def cert_of(secret: dict, key: str = "tls.crt") -> x509.Certificate:
    return x509.load_pem_x509_certificate(decode(secret, key))


def serials(emulator, namespace: str, name: str) -> dict[str, int]:
    found = {}
    for secret in emulator.list("secrets", namespace):
        component = secret["metadata"].get("labels", {}).get("pki.clusterpki.dev/component")
        if component and "tls.crt" in secret["data"] and secret["metadata"]["name"].startswith(f"{name}-"):
            found[component] = cert_of(secret).serial_number
    return found


async def test_create_to_ready_with_every_secret(operator, api, emulator, caplog):
    await api.apply_pki(pki("alpha"))
    obj = await api.ready("team-a", "alpha")

    secrets = {s["metadata"]["name"]: s for s in emulator.list("secrets", "team-a")}
    assert set(secrets) == {f"alpha-{c}" for c in LEAVES | CAS | {"sa"}}
    for component in LEAVES | CAS:
        secret = secrets[f"alpha-{component}"]
        assert secret["type"] == "kubernetes.io/tls"
        assert secret["metadata"]["labels"] == {"pki.clusterpki.dev/cluster-pki": "alpha",
                                                "pki.clusterpki.dev/component": component,
                                                "app.kubernetes.io/managed-by": "clusterpki"}
        expected_keys = {"tls.crt", "tls.key", "ca.crt"} | ({"kubeconfig"} if component in KUBECONFIGS else set())
        assert set(secret["data"]) == expected_keys
        assert "ownerReferences" not in secret["metadata"]  # secretRetention: Retain
    sa = secrets["alpha-sa"]
    assert sa["type"] == "Opaque" and set(sa["data"]) == {"sa.key", "sa.pub"}

    # Every leaf verifies against the trust bundle in its own Secret, and against its CA's Secret.
    for component in LEAVES:
        secret = secrets[f"alpha-{component}"]
        issuer = ISSUER.get(component, "ca")
        ca = cert_of(secrets[f"alpha-{issuer}"])
        cert_of(secret).verify_directly_issued_by(cert_of(secret, "ca.crt"))
        cert_of(secret).verify_directly_issued_by(ca)

    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["certificateCount"] == 14
    entries = {e["name"]: e for e in status["certificates"]}
    assert set(entries) == LEAVES | CAS
    apiserver = cert_of(secrets["alpha-apiserver"])
    assert entries["apiserver"]["serialNumber"] == f"{apiserver.serial_number:X}"
    assert entries["apiserver"]["secretName"] == "alpha-apiserver" and entries["apiserver"]["issuer"] == "ca"
    assert status["nextRenewal"] == min(entries[c]["renewalTime"] for c in LEAVES)
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "Issued")
    issued = ("Normal", "Issued", "Issued 15: ca, etcd-ca, front-proxy-ca, " + ", ".join(
        ["apiserver", "apiserver-kubelet-client", "apiserver-etcd-client", "front-proxy-client",
         "etcd-server-etcd-0", "etcd-peer-etcd-0", "etcd-healthcheck-client", "admin", "kube-scheduler",
         "kube-controller-manager", "kube-proxy", "sa"]))
    await api.wait_for(lambda: has_event(api, "team-a", issued), what="the Issued Event")
    assert "Issued: Issued 15" in caplog.text
    assert "PRIVATE KEY" not in caplog.text and "PRIVATE KEY" not in str(emulator.list("events", "team-a"))


async def test_a_restart_reissues_nothing(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    before = serials(emulator, "team-a", "alpha")
    await operator.stop()
    writes = len(emulator.writes("/secrets"))
    await operator.start()
    await asyncio.sleep(1.0)  # the resume handler has run by now
    assert len(emulator.writes("/secrets")) == writes
    assert serials(emulator, "team-a", "alpha") == before
    await api.ready("team-a", "alpha")


async def test_a_lagging_watch_does_not_run_the_create_handler_twice(operator, api, emulator):
    """A busy fleet's watch can lag behind the operator's writes by more than Kopf's default 5 s of
    consistency waiting; the status patch's event (older than Kopf's own annotation patch) must then
    not pass for a new, unhandled object."""
    emulator.watch_lag = 6.0
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    await asyncio.sleep(9.0)  # the status patch's event has arrived; a second create would have run

    def reconciles() -> int:
        return sum(r.method == "GET" and r.path == "/api/v1/namespaces/team-a/secrets" and
                   r.query.get("watch") != "true" and r.query.get("labelSelector", "").startswith(
                       "pki.clusterpki.dev/cluster-pki=alpha,") for r in emulator.requests)

    assert reconciles() == 1


async def test_a_new_san_reissues_only_the_apiserver(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    before = serials(emulator, "team-a", "alpha")
    writes = len(emulator.writes("/secrets"))
    await api.patch("clusterpkis", "alpha", {"spec": {"apiServer": {"certSANs": ["api.example.com"]}}}, "team-a")
    await api.ready("team-a", "alpha")
    after = serials(emulator, "team-a", "alpha")
    assert {c for c in before if before[c] != after[c]} == {"apiserver"}
    assert [w.path for w in emulator.writes("/secrets")[writes:]] == [
        "/api/v1/namespaces/team-a/secrets/alpha-apiserver"]

    async def reissued_event():
        return any(reason == "Reissued" and message.startswith("Re-issued apiserver (serial ")
                   and "): it does not match the spec: dns names" in message
                   for _, reason, message in await api.events("team-a"))
    await api.wait_for(reissued_event, what="the Reissued Event")


async def test_a_new_member_adds_only_its_two_certificates(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    before = serials(emulator, "team-a", "alpha")
    members = [{"name": "etcd-0", "dnsNames": ["localhost"], "ips": ["127.0.0.1"]}, {"name": "etcd-1"}]
    await api.patch("clusterpkis", "alpha", {"spec": {"etcd": {"members": members}}}, "team-a")
    await api.ready("team-a", "alpha")
    after = serials(emulator, "team-a", "alpha")
    assert set(after) - set(before) == {"etcd-server-etcd-1", "etcd-peer-etcd-1"}
    assert {c: after[c] for c in before} == before


async def test_a_bad_spec_is_reported_without_touching_anything(operator, api, emulator):
    await api.apply_pki(pki("good"))
    await api.ready("team-a", "good")
    good_serials = serials(emulator, "team-a", "good")
    # Passes the schema (a string), fails the spec model.
    await api.apply_pki(pki("bad", serviceCIDR="10.0.0.0/33", validity={"certificate": "2m"}, renewBefore="5m"))
    obj = await api.ready("team-a", "bad", status="False")
    ready = obj["status"]["conditions"][0]
    assert ready["reason"] == "InvalidSpec"
    assert ready["message"] == ("The spec is invalid: spec.serviceCIDR: '10.0.0.0/33' is not a CIDR; "
                                "spec.renewBefore: 5m0s must be shorter than spec.validity.certificate (2m0s)")
    await api.wait_for(lambda: has_event(api, "team-a", ("Warning", "InvalidSpec", ready["message"])),
                       what="the InvalidSpec Event")
    assert not [s for s in emulator.list("secrets", "team-a") if s["metadata"]["name"].startswith("bad-")]
    assert not emulator.writes("/secrets/bad-")

    # A permanent error: no retry storm while the spec stays as it is.
    patches = len(emulator.writes("/clusterpkis/bad"))
    await asyncio.sleep(1.5)
    assert len(emulator.writes("/clusterpkis/bad")) == patches
    assert serials(emulator, "team-a", "good") == good_serials
    await api.ready("team-a", "good")

    # Fixing the spec makes it Ready.
    await api.patch("clusterpkis", "bad", {"spec": {"serviceCIDR": "10.0.0.0/16", "renewBefore": "1m"}}, "team-a")
    await api.ready("team-a", "bad")


async def test_bring_your_own_ca(operator, api, emulator, tmp_path):
    from tests.helpers import render
    assert render(tmp_path, tmp_path / "own", document("own")) == 0
    ca_crt, ca_key = (tmp_path / "own/pki/ca.crt").read_bytes(), (tmp_path / "own/pki/ca.key").read_bytes()
    await api.create("secrets", {"metadata": {"name": "alpha-ca", "labels": {"team": "a"}}, "type": "Opaque",
                                 "data": {"tls.crt": base64.b64encode(ca_crt).decode(),
                                          "tls.key": base64.b64encode(ca_key).decode()}}, "team-a")
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    secret = emulator.get("secrets", "alpha-ca", "team-a")
    assert decode(secret, "tls.crt") == ca_crt and decode(secret, "tls.key") == ca_key
    assert secret["type"] == "Opaque"
    assert secret["metadata"]["labels"]["team"] == "a"
    assert secret["metadata"]["annotations"]["pki.clusterpki.dev/adopted"] == "true"
    ca = x509.load_pem_x509_certificate(ca_crt)
    cert_of(emulator.get("secrets", "alpha-apiserver", "team-a")).verify_directly_issued_by(ca)
    await api.wait_for(lambda: has_event(api, "team-a", ("Normal", "Adopted",
                                                         "Adopted the ca CA brought in Secret alpha-ca")),
                       what="the Adopted Event")


async def test_an_unusable_ca_is_left_untouched(operator, api, emulator):
    garbage = base64.b64encode(b"not a certificate").decode()
    await api.create("secrets", {"metadata": {"name": "alpha-etcd-ca"}, "type": "Opaque",
                                 "data": {"tls.crt": garbage, "tls.key": garbage}}, "team-a")
    before = emulator.get("secrets", "alpha-etcd-ca", "team-a")
    await api.apply_pki(pki("alpha"))
    obj = await api.ready("team-a", "alpha", status="False")
    ready = obj["status"]["conditions"][0]
    assert ready["reason"] == "CAInvalid"
    assert ready["message"] == ("A CA cannot be used and is left untouched: Secret alpha-etcd-ca: "
                                "tls.crt is not a PEM certificate")
    assert emulator.get("secrets", "alpha-etcd-ca", "team-a") == before
    assert [s["metadata"]["name"] for s in emulator.list("secrets", "team-a")] == ["alpha-etcd-ca"]
    await api.wait_for(lambda: has_event(api, "team-a", ("Warning", "CAInvalid", ready["message"])),
                       what="the CAInvalid Event")


async def test_retain_keeps_the_secrets_after_deletion(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    await api.delete("clusterpkis", "alpha", "team-a")
    await api.wait_for(lambda: _absent(api, "alpha"), what="deletion")
    assert len(emulator.list("secrets", "team-a")) == 15


async def test_delete_removes_the_secrets_through_owner_references(operator, api, emulator):
    obj = await api.apply_pki(pki("alpha", secretRetention="Delete"))
    await api.ready("team-a", "alpha")
    for secret in emulator.list("secrets", "team-a"):
        assert secret["metadata"]["ownerReferences"] == [{
            "apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI", "name": "alpha",
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": False}]
    await api.delete("clusterpkis", "alpha", "team-a")
    await api.wait_for(lambda: _no_secrets(emulator, "team-a"), what="garbage collection")


async def test_switching_retention_updates_owner_references(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    before = serials(emulator, "team-a", "alpha")
    await api.patch("clusterpkis", "alpha", {"spec": {"secretRetention": "Delete"}}, "team-a")
    await api.ready("team-a", "alpha")
    assert all(s["metadata"].get("ownerReferences") for s in emulator.list("secrets", "team-a"))
    assert serials(emulator, "team-a", "alpha") == before


async def test_two_pkis_in_two_namespaces(operator, api, emulator):
    await asyncio.gather(api.apply_pki(pki("alpha", "team-a")), api.apply_pki(pki("alpha", "team-b")))
    await api.ready("team-a", "alpha")
    await api.ready("team-b", "alpha")
    a, b = emulator.get("secrets", "alpha-ca", "team-a"), emulator.get("secrets", "alpha-ca", "team-b")
    assert cert_of(a).serial_number != cert_of(b).serial_number
    assert len(emulator.list("secrets", "team-a")) == len(emulator.list("secrets", "team-b")) == 15


async def has_event(api, namespace: str, event: tuple[str, str, str]) -> bool:
    return event in await api.events(namespace)


async def _absent(api, name: str) -> bool:
    return await api.get("clusterpkis", name, "team-a") is None


async def _no_secrets(emulator, namespace: str) -> bool:
    return not emulator.list("secrets", namespace)


async def test_reconciles_beyond_the_bound_wait_their_turn(kubeconfig, api, emulator, monkeypatch):
    """A fleet-wide wave must not hold every ClusterPKI's Secrets and keys in memory at once."""
    from clusterpki import settings

    monkeypatch.setattr(settings, "CONCURRENT_RECONCILES", 1)
    operator = Operator()
    await operator.start()
    try:
        await asyncio.gather(*(api.apply_pki(pki(name)) for name in ("one", "two")))
        await api.ready("team-a", "one")
        await api.ready("team-a", "two")
    finally:
        await operator.stop()

    def span(name: str) -> tuple[int, int]:
        """From the reconcile's LIST of the ClusterPKI's Secrets to its status patch, in request order."""
        listed = next(i for i, r in enumerate(emulator.requests) if r.method == "GET" and
                      r.query.get("labelSelector", "").startswith(f"pki.clusterpki.dev/cluster-pki={name},"))
        patched = next(i for i, r in enumerate(emulator.requests)
                       if r.method == "PATCH" and r.path.endswith(f"/clusterpkis/{name}/status"))
        return listed, patched

    first, second = sorted([span("one"), span("two")])
    assert first[1] < second[0], "the two reconciles ran at the same time"
