"""decide, through the controller's whole loop on an in-memory API (``world.py``) and a fixed clock:
issuance, idempotence, renewal, requests, the chain of custody (tampering, first contact, claims),
lost authorities and their recovery. The rotation's phases are ``test_decide_rotation.py``'s."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from clusterpki.controller import settings
from clusterpki.controller.plan import WriteKind
from clusterpki.controller.requests import IMPORTED, RENEW, ROTATE
from clusterpki.kube import secrets
from clusterpki.pki import certificates, keys, record, spec
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.unit.controller.world import T0, World, clusterpki

ALL = 15  # 3 CAs, 11 leaves, sa


def cert(world: World, component: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(world.data(component, "tls.crt"))


async def issued() -> World:
    world = World()
    await world.reconcile()
    return world


async def test_a_new_clusterpki_is_claimed_then_issued_and_recorded():
    world = World()
    plan = await world.reconcile()
    assert plan.claim is not None and plan.claim.holder == "operator-a"
    assert [w.kind for w in plan.writes] == [WriteKind.CREATE] * ALL and all(w.first for w in plan.writes[:3])
    assert world.reasons() == ["Issued"] and world.ready()["status"] == "True"
    stored = world.status()
    assert "claim" not in stored, "the commit clears the claim"
    found = record.Record.from_status(stored["record"])
    for component in secrets.components(spec.Spec(name="x")):
        name = secrets.secret_name("x", component)
        assert found.holds(component, secrets.StoredSecret.from_object(world.secrets[name]).digest), component
    assert found.bundles["ca"] == (record.certificate_fingerprint(cert(world, "ca")),)
    assert found.fingerprint("apiserver") == record.certificate_fingerprint(cert(world, "apiserver"))


async def test_a_second_look_writes_nothing_and_posts_nothing():
    world = await issued()
    status = json.dumps(world.status(), sort_keys=True)
    plan = await world.reconcile(timedelta(hours=1))
    assert plan.writes == () and plan.claim is None and plan.events == ()
    assert json.dumps(world.status(), sort_keys=True) == status


async def test_a_leaf_in_its_renewal_window_is_renewed_with_a_new_key():
    world = World(clusterpki(validity={"ca": "8760h", "certificate": "30h"}, renewBefore="10h"))
    await world.reconcile()
    before = cert(world, "apiserver")
    plan = await world.reconcile(timedelta(hours=20, seconds=1))
    assert plan.claim is not None and {w.name for w in plan.writes} >= {"x-apiserver"}
    assert cert(world, "apiserver").serial_number != before.serial_number
    assert any(r == "Renewed" and m.startswith("Renewed apiserver (serial ") for _, r, m in world.events)
    assert plan.issued["apiserver"].why is certificates.Why.DUE


async def test_a_renew_request_fires_once_and_a_bad_one_is_told():
    world = await issued()
    world.annotate(**{RENEW: "apiserver,admin@1"})
    plan = await world.reconcile()
    assert set(plan.issued) == {"apiserver", "admin"} and world.status()["requests"]["renew"] == "apiserver,admin@1"
    assert (await world.reconcile()).writes == ()
    world.annotate(**{RENEW: "apiserverr@2"})
    plan = await world.reconcile()
    assert plan.writes == () and world.events[-1][1:] == (
        "InvalidRenewRequest", "pki.clusterpki.dev/renew='apiserverr@2': apiserverr is not a leaf of this ClusterPKI")


async def test_a_tampered_bundle_is_restored_without_a_new_certificate():
    world = await issued()
    attacker = certificates.create_ca("evil", keys.generate(spec.KeyAlgorithm.ECDSA_P256), timedelta(days=1), T0)
    pem = world.data("ca", "ca.crt") + attacker.public_bytes(serialization.Encoding.PEM)
    world.tamper("ca", ca_crt=pem)
    serial = cert(world, "ca").serial_number
    plan = await world.reconcile()
    assert plan.claim is None, "restoring what is on record needs no claim"
    assert [w.name for w in plan.writes] == ["x-ca"] and cert(world, "ca").serial_number == serial
    assert len(x509.load_pem_x509_certificates(world.data("ca", "ca.crt"))) == 1
    assert ("Warning", "SecretTampered", "Secret x-ca (ca.crt): its data is not what was issued; restored") in \
        world.events


async def test_a_kubeconfig_with_an_exec_plugin_is_restored():
    world = await issued()
    clean = world.data("kube-controller-manager", "kubeconfig")
    evil = clean.replace(b"client-key-data", b"exec: {command: /bin/sh}\n    client-key-data")
    world.tamper("kube-controller-manager", kubeconfig=evil)
    await world.reconcile()
    assert world.data("kube-controller-manager", "kubeconfig") == clean
    assert world.reasons()[-1] == "SecretTampered"


async def test_a_leaf_swapped_for_another_pair_is_reissued_and_told():
    world = await issued()
    other = world.secret("etcd-healthcheck-client")["data"]
    world.secret("kube-scheduler")["data"].update({k: other[k] for k in ("tls.crt", "tls.key")})
    before = cert(world, "etcd-healthcheck-client").serial_number
    plan = await world.reconcile()
    assert plan.claim is not None and cert(world, "kube-scheduler").serial_number != before
    assert cert(world, "kube-scheduler").subject.rfc4514_string() == "CN=system:kube-scheduler"
    reasons = {r: m for _, r, m in world.events}
    assert reasons["Reissued"].endswith("it is not signed by its CA")
    assert reasons["SecretTampered"].startswith("Secret x-kube-scheduler (")


async def test_a_ca_whose_key_was_replaced_is_lost_until_rotated():
    world = await issued()
    world.tamper("etcd-ca", tls_key=keys.private_pem(keys.generate(spec.KeyAlgorithm.ECDSA_P256)))
    plan = await world.reconcile()
    assert plan.writes == () and world.ready()["reason"] == "SecretTampered"
    assert world.ready()["message"].startswith("Secret x-etcd-ca: tls.key is not the key on record: the CA's key is "
                                               "lost")
    world.annotate(**{ROTATE: "etcd-ca"})
    plan = await world.reconcile()
    assert world.ready()["status"] == "True" and world.status()["caRotation"]["trigger"] == "recovery"
    new = cert(world, "etcd-ca")
    for leaf in ("etcd-server-etcd-0", "etcd-peer-etcd-0", "etcd-healthcheck-client", "apiserver-etcd-client"):
        cert(world, leaf).verify_directly_issued_by(new)
    assert "RotationRecovering" in world.reasons()


async def test_a_ca_whose_certificate_was_replaced_keeps_its_key_and_is_restored():
    world = await issued()
    original = world.data("front-proxy-ca", "tls.crt")
    world.tamper("front-proxy-ca", tls_crt=b"junk")
    plan = await world.reconcile()
    assert plan.claim is None and world.data("front-proxy-ca", "tls.crt") == original
    assert world.ready()["status"] == "True"


async def test_a_missing_ca_is_never_made_again_until_rotated():
    world = await issued()
    del world.secrets["x-ca"]
    plan = await world.reconcile()
    assert plan.writes == () and world.ready()["reason"] == "CAMissing"
    world.annotate(**{ROTATE: "ca"})
    await world.reconcile()
    assert world.ready()["status"] == "True" and "x-ca" in world.secrets


async def test_a_missing_service_account_key_is_never_made_again_until_rotated():
    world = await issued()
    del world.secrets["x-sa"]
    await world.reconcile()
    assert world.ready()["reason"] == "ServiceAccountKeyMissing"
    world.annotate(**{ROTATE: "sa"})
    await world.reconcile()
    assert world.ready()["status"] == "True" and "x-sa" in world.secrets


async def test_a_ca_brought_in_before_the_clusterpki_is_adopted_whatever_its_labels():
    world = World()
    key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    ca = certificates.create_ca("mine", key, timedelta(days=3650), T0)
    pem = ca.public_bytes(serialization.Encoding.PEM)
    world.plant("x-ca", {"tls.crt": pem, "tls.key": keys.private_pem(key)}, secrets.labels("x", "ca"),
                at=T0 - timedelta(seconds=5))
    await world.reconcile()
    assert world.status()["record"]["adopted"] == ["ca"] and "Adopted" in world.reasons()
    cert(world, "apiserver").verify_directly_issued_by(ca)
    world.annotate(**{ROTATE: "ca"})
    await world.reconcile()
    assert world.events[-1][1] == "RotationRefused" and "caRotation" not in world.status()


async def test_a_labelled_ca_planted_after_the_clusterpki_is_replaced():
    world = World()
    key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    planted = certificates.create_ca("evil", key, timedelta(days=3650), T0)
    world.now = T0 + timedelta(seconds=1)
    world.plant("x-ca", {"tls.crt": planted.public_bytes(serialization.Encoding.PEM),
                         "tls.key": keys.private_pem(key)}, secrets.labels("x", "ca"))
    await world.reconcile()
    assert cert(world, "ca").subject.rfc4514_string() == "CN=kubernetes"
    assert "adopted" not in world.status()["record"]
    assert any(r == "SecretTampered" and "not on record" in m for _, r, m in world.events)


async def test_a_stranger_at_a_leaf_name_is_a_conflict_and_nothing_is_written():
    world = World()
    world.plant("x-kube-proxy", {"config": b"mine"}, kind="Opaque")
    plan = await world.reconcile()
    assert plan.writes == () and world.ready()["reason"] == "SecretConflict"
    assert world.ready()["message"].startswith("Secret x-kube-proxy exists and is not managed by clusterpki")
    assert plan.retry is not None and plan.retry.delay == settings.IN_THE_WAY_RETRY, \
        "nothing tells the operator when a Secret it does not manage goes: it looks again by itself"
    del world.secrets["x-kube-proxy"]
    await world.reconcile(timedelta(seconds=plan.retry.delay))
    assert world.ready()["status"] == "True", "the Secret in the way gone, it issues everything"


async def test_a_fresh_claim_of_another_writer_is_waited_for_and_a_stale_one_is_not():
    world = World()
    first = await world.reconcile(holder="operator-a")
    claim = first.claim
    world.body["status"]["claim"] = claim.to_status()  # as if operator-a had died right after its claim
    plan = await world.reconcile(timedelta(seconds=5), holder="operator-b")
    assert plan.retry is not None and plan.writes == ()
    plan = await world.reconcile(timedelta(seconds=60), holder="operator-b")
    assert plan.retry is None and world.ready()["status"] == "True" and "claim" not in world.status()


async def test_material_written_under_a_claim_is_the_operator_s_own_after_a_crash():
    world = World()
    seen_plan = await world.reconcile()
    issued_record = world.status()["record"]
    # The crash: the Secrets were written, the commit never came; the status holds only the claim.
    world.body["status"] = {"claim": seen_plan.claim.to_status()}
    plan = await world.reconcile(timedelta(seconds=40))
    assert plan.writes == () and world.status()["record"] == issued_record
    assert "SecretTampered" not in world.reasons() and "claim" not in world.status()


async def test_what_import_stored_is_taken_as_the_operator_s_own():
    donor = await issued()
    world = World(clusterpki(annotations={IMPORTED: json.dumps({
        c: secrets.StoredSecret.from_object(s).digest for c, s in
        ((s["metadata"]["labels"][secrets.LABEL_COMPONENT], s) for s in donor.secrets.values())})}))
    for name, secret in donor.secrets.items():
        world.plant(name, {k: base64.b64decode(v) for k, v in secret["data"].items()}, secret["metadata"]["labels"],
                    kind=secret["type"], at=T0)
    plan = await world.reconcile()
    assert [w for w in plan.writes] == [] and "adopted" not in world.status()["record"]
    world.annotate(**{ROTATE: "ca"})
    await world.reconcile()
    assert world.status()["caRotation"]["phase"] == "Preparing", "an imported CA is rotated like the operator's own"


async def test_a_status_from_before_the_record_keeps_every_certificate_it_lists():
    world = await issued()
    listed = world.status()
    world.body["status"] = {k: v for k, v in listed.items() if k not in ("record", "requests")}
    plan = await world.reconcile()
    assert plan.writes == () and world.status()["record"] == listed["record"]


async def test_a_first_write_waits_for_an_older_clusterpki_made_the_same_second_and_writes_nothing():
    """x-etcd-server is made, then x, the same second: x is older (by name), and its member "admin" has
    the Secret x-etcd-server-admin, which is also x-etcd-server's "admin" leaf. The watch brings x only
    after x-etcd-server: x-etcd-server writes nothing until its creation second has settled, then sees x
    (it used to write its 14 other Secrets, then report the clash)."""
    world = World(clusterpki("x-etcd-server"))
    plan = await world.reconcile()
    assert plan.writes == () and plan.status is None and plan.wake_at == T0 + timedelta(seconds=2)
    world.others["x"] = clusterpki("x", etcd={"members": [{"name": "admin", "ips": ["10.0.0.1"]}]})
    plan = await world.reconcile(timedelta(seconds=2))
    assert plan.writes == () and world.secrets == {} and world.ready()["reason"] == "SecretConflict"
    assert "Secret x-etcd-server-admin is wanted by ClusterPKI x, which is older" in world.ready()["message"]
    del world.others["x"]
    await world.reconcile(timedelta(seconds=plan.retry.delay))
    assert world.ready()["status"] == "True", "the older one gone, it issues everything"


async def test_a_twin_the_watch_has_not_brought_is_read_afresh_before_a_first_write():
    """The same, with a watch behind (or clocks apart): x is read afresh, by name, before anything is
    written."""
    world = World(clusterpki("x-etcd-server"))
    world.hidden["x"] = clusterpki("x", etcd={"members": [{"name": "admin", "ips": ["10.0.0.1"]}]})
    plan = await world.reconcile(timedelta(seconds=2))
    assert world.reads == ["list", "clusterpki x", "names"], "the one dash-prefix whose Secrets can clash"
    assert plan.writes == () and world.secrets == {} and world.ready()["reason"] == "SecretConflict"
    assert "Secret x-etcd-server-admin is wanted by ClusterPKI x, which is older" in world.ready()["message"]


@pytest.mark.parametrize("name", ["x", "pki-7", "cluster-a", "tenant-42-prod", "x-kube"])
async def test_a_name_no_older_clusterpki_s_secrets_can_clash_with_writes_at_once(name):
    world = World(clusterpki(name))
    plan = await world.reconcile()
    assert plan.writes and world.ready()["status"] == "True"
    assert not any(read.startswith("clusterpki") for read in world.reads), "no ClusterPKI is read"


@pytest.mark.parametrize("name", ["x-etcd", "x-front-proxy", "a-b-etcd-server-m0", "x-etcd-peer"])
async def test_a_name_an_older_clusterpki_s_secrets_can_clash_with_waits(name):
    plan = await World(clusterpki(name)).reconcile()
    assert plan.writes == () and plan.wake_at == T0 + timedelta(seconds=2)


async def test_moving_to_v1_29_re_issues_admin_into_cluster_admins_and_issues_super_admin():
    world = World(clusterpki(kubernetesVersion="v1.28"))
    await world.reconcile()
    assert "x-super-admin" not in world.secrets
    assert cert(world, "admin").subject.rfc4514_string() == "CN=kubernetes-admin,O=system:masters"
    assert cert(world, "apiserver-etcd-client").subject.rfc4514_string() == \
        "CN=kube-apiserver-etcd-client,O=system:masters", "kubeadm v1.28's"
    world.body["spec"]["kubernetesVersion"] = "v1.29"
    world.body["metadata"]["generation"] = world.body["metadata"].get("generation", 1) + 1
    plan = await world.reconcile()
    assert set(plan.issued) == {"admin", "super-admin", "apiserver-kubelet-client", "apiserver-etcd-client",
                                "etcd-healthcheck-client"}, "kubeadm v1.29's groups; nothing else changes"
    assert cert(world, "apiserver-etcd-client").subject.rfc4514_string() == "CN=kube-apiserver-etcd-client"
    assert cert(world, "admin").subject.rfc4514_string() == "CN=kubernetes-admin,O=kubeadm:cluster-admins"
    assert cert(world, "super-admin").subject.rfc4514_string() == "CN=kubernetes-super-admin,O=system:masters"
    said = {m.split(" (")[0]: m for _, r, m in world.events if r == "Reissued"}
    assert "system:masters" in said["Re-issued admin"] and "kubeadm:cluster-admins" in said["Re-issued admin"]
    found = record.Record.from_status(world.status()["record"])
    assert found.fingerprint("super-admin") == record.certificate_fingerprint(cert(world, "super-admin"))
    assert b"kubernetes-super-admin" in world.data("super-admin", "kubeconfig")
    assert (await world.reconcile(timedelta(hours=1))).writes == ()
