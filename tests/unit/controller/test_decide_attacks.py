"""What a review found a principal that may only create, update and patch Secrets could do, each as a
test of the controller's loop on the in-memory API (``world.py``): a finalizer that keeps a spare, an
immutable Secret held by a finalizer, a label that hands a CA to someone else, a key brought in
unannounced, a copy kept for rollback made hers, a Secret planted between the claim and the write, and
Secrets of components nobody wants."""

from __future__ import annotations

import base64
from datetime import timedelta

from clusterpki.controller.requests import ROTATE
from clusterpki.kube import secrets
from clusterpki.pki import certificates, keys, record, spec
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.unit.controller.world import T0, World, clusterpki

GRACE = {spec.GRACE_ANNOTATION: "10s"}


def serial(world: World, component: str) -> int:
    return x509.load_pem_x509_certificate(world.data(component, "tls.crt")).serial_number


async def rotated(world: World, value: str) -> None:
    world.annotate(**{ROTATE: value})
    for _ in range(6):
        await world.reconcile(timedelta(seconds=11))


async def test_a_finalizer_on_the_spare_never_makes_a_rotation_keep_its_ca():
    world = World(clusterpki(annotations=GRACE, validity={"ca": "8760h"}))
    await world.reconcile()
    first = serial(world, "front-proxy-ca")
    world.annotate(**{ROTATE: "front-proxy-ca"})
    await world.reconcile()
    world.secret("front-proxy-ca-next")["metadata"]["finalizers"] = ["mallory.dev/keep"]
    for _ in range(5):
        await world.reconcile(timedelta(seconds=11))
    second = serial(world, "front-proxy-ca")
    assert second != first and world.status()["caRotation"]["phase"] == "Completed"
    assert "front-proxy-ca-next" not in world.status()["record"]["secrets"], "what is gone leaves the record"
    await rotated(world, "front-proxy-ca@2")
    assert serial(world, "front-proxy-ca") not in (first, second), "each rotation makes a new CA"


async def test_an_immutable_secret_held_by_a_finalizer_is_recreated_once():
    world = World()
    await world.reconcile()
    secret = world.secret("kube-proxy")
    secret.update(immutable=True)
    secret["metadata"]["finalizers"] = ["mallory.dev/hold"]
    secret["data"]["tls.crt"] = base64.b64encode(b"garbage").decode()
    await world.reconcile()
    assert "finalizers" not in world.secret("kube-proxy")["metadata"] and not world.secret("kube-proxy").get("immutable")
    assert world.ready()["status"] == "True"
    assert (await world.reconcile(timedelta(seconds=2))).writes == (), "once"


async def test_a_ca_relabelled_as_someone_else_s_is_still_the_operator_s():
    world = World()
    await world.reconcile()
    world.secret("front-proxy-ca")["metadata"]["labels"][secrets.LABEL_PKI] = "someone-else"
    await world.reconcile()
    assert world.ready()["status"] == "True"
    assert world.secret("front-proxy-ca")["metadata"]["labels"][secrets.LABEL_PKI] == "x"


async def test_a_service_account_key_brought_in_is_shown_and_never_rotated():
    world = World()
    key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    world.plant("x-sa", {"sa.key": keys.private_pem(key), "sa.pub": keys.public_pem(key)}, kind="Opaque",
                at=T0 - timedelta(seconds=1))
    await world.reconcile()
    assert world.status()["record"]["adopted"] == ["sa"]
    assert ("Normal", "Adopted", "Adopted the service-account key brought in Secret x-sa") in world.events
    world.annotate(**{ROTATE: "sa"})
    await world.reconcile()
    assert world.events[-1][1:] == ("RotationRefused", "The service-account key was brought in: rotate it yourself")


async def test_the_old_ca_kept_for_rollback_is_restored_or_deleted_never_made_hers():
    world = World(clusterpki(annotations=GRACE, validity={"ca": "8760h"}))
    await world.reconcile()
    await rotated(world, "ca")
    kept = world.status()["record"]["secrets"]["ca-previous"]
    evil = certificates.create_ca("evil", keys.generate(spec.KeyAlgorithm.ECDSA_P256), timedelta(days=1), T0)
    world.tamper("ca-previous", ca_crt=evil.public_bytes(serialization.Encoding.PEM), note=b"mine")
    await world.reconcile()
    assert world.status()["record"]["secrets"]["ca-previous"] == kept and "note" not in world.secret("ca-previous")["data"]
    world.tamper("ca-previous", tls_key=keys.private_pem(keys.generate(spec.KeyAlgorithm.ECDSA_P256)))
    await world.reconcile()
    assert "x-ca-previous" not in world.secrets and "ca-previous" not in world.status()["record"]["secrets"]


async def test_a_ca_planted_between_the_claim_and_the_write_is_replaced_not_taken_for_lost():
    world = World()
    first = await world.reconcile()
    world.body["status"] = {"claim": first.claim.to_status()}  # the claim landed; none of its writes did
    for name in list(world.secrets):
        del world.secrets[name]
    key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    planted = certificates.create_ca("kubernetes", key, timedelta(days=1), T0)
    world.plant("x-ca", {"tls.crt": planted.public_bytes(serialization.Encoding.PEM), "tls.key": keys.private_pem(key)},
                secrets.labels("x", "ca"), at=T0 + timedelta(seconds=1))
    await world.reconcile(timedelta(seconds=40))
    assert world.ready()["status"] == "True" and serial(world, "ca") != planted.serial_number
    assert record.Record.from_status(world.status()["record"]).fingerprint("ca") != \
        record.certificate_fingerprint(planted)


async def test_secrets_of_components_nobody_wants_are_left_alone_and_not_told_of():
    world = World()
    await world.reconcile()
    world.plant("x-etcd-server-m9", {"tls.crt": b"x", "tls.key": b"y"}, secrets.labels("x", "etcd-server-m9"))
    plan = await world.reconcile()
    assert plan.writes == () and plan.events == ()


async def test_a_rotation_asked_for_in_the_old_service_account_key_s_window_says_it_waits():
    world = World(clusterpki(annotations={**GRACE, spec.TOKEN_LIFETIME_ANNOTATION: "1h"}, validity={"ca": "8760h"}))
    await world.reconcile()
    await rotated(world, "sa")
    world.annotate(**{ROTATE: "ca"})
    await world.reconcile()
    assert world.events[-1][1] == "RotationWaiting" and "waits until" in world.events[-1][2]


async def test_a_half_no_record_names_is_kept_and_never_overwritten():
    """Found by a new user: a retained ClusterPKI applied again deleted its -previous, the only copy of
    the old CA's key. A half no record names may be an earlier ClusterPKI's: it is kept, and a rotation
    that would write over it waits until it is moved away."""
    world = World(clusterpki(annotations=GRACE, validity={"ca": "8760h"}))
    await world.reconcile()
    old_key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    old_ca = certificates.create_ca("front-proxy-ca", old_key, timedelta(days=300), T0)
    world.plant("x-front-proxy-ca-previous", {"tls.crt": old_ca.public_bytes(serialization.Encoding.PEM),
                                              "tls.key": keys.private_pem(old_key)},
                secrets.labels("x", "front-proxy-ca-previous"))
    kept = dict(world.secrets["x-front-proxy-ca-previous"]["data"])
    await world.reconcile()
    assert world.secrets["x-front-proxy-ca-previous"]["data"] == kept
    assert any(r == "ForeignSecretIgnored" and "x-front-proxy-ca-previous is not on record" in m
               for _, r, m in world.events)
    await rotated(world, "front-proxy-ca")
    assert world.secrets["x-front-proxy-ca-previous"]["data"] == kept, "never overwritten"
    assert world.ready()["reason"] == "SecretConflict" and "x-front-proxy-ca-previous is not on record" in \
        world.ready()["message"]
    del world.secrets["x-front-proxy-ca-previous"]
    for _ in range(4):
        await world.reconcile(timedelta(seconds=31))
    assert world.status()["caRotation"]["phase"] == "Completed" and world.ready()["status"] == "True"
