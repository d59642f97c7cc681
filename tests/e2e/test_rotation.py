"""Zero-downtime CA and service-account key rotation on a real kube-apiserver: every phase, the bundle
invariant at each, restarts mid-rotation, early completion, automatic rotation, a lost new CA."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.conftest import pki
from tests.helpers import FAMILY, KUBECONFIGS
from tests.kube import Api, cert_of, decode


def bundle(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def verifies(cert: x509.Certificate, trust: list[x509.Certificate]) -> bool:
    for ca in trust:
        try:
            cert.verify_directly_issued_by(ca)
            return True
        except Exception:  # noqa: BLE001 (InvalidSignature, ValueError: not this CA)
            continue
    return False


def assert_bundle_invariant(found: dict[str, dict], ca: str) -> None:
    """Every leaf of ``ca`` verifies against every bundle of ``ca`` in a snapshot of the Secrets (by
    component): ``ca.crt`` of the CA and of each leaf, and each kubeconfig's certificate-authority-data."""
    bundles = [bundle(decode(found[ca], "ca.crt"))]
    for leaf in FAMILY[ca]:
        bundles.append(bundle(decode(found[leaf], "ca.crt")))
        if leaf in KUBECONFIGS:
            config = yaml.safe_load(decode(found[leaf], "kubeconfig"))
            bundles.append(bundle(base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])))
    for leaf in FAMILY[ca]:
        for trust in bundles:
            assert verifies(cert_of(found[leaf]), trust), f"{leaf} does not verify against a {ca} bundle"


def bundle_serials(found: dict[str, dict], ca: str) -> set[tuple[int, ...]]:
    """The distinct bundles of ``ca`` in the snapshot, as serial numbers in order."""
    return {tuple(c.serial_number for c in bundle(decode(found[name], "ca.crt"))) for name in [ca, *FAMILY[ca]]}


async def phase(api: Api, namespace: str) -> str | None:
    obj = await api.get("clusterpkis", "alpha", namespace)
    return ((obj.get("status") or {}).get("caRotation") or {}).get("phase")


async def wait_phase(api: Api, namespace: str, wanted: str, timeout: float = 20) -> None:
    async def reached():
        return await phase(api, namespace) == wanted
    await api.wait_for(reached, timeout, f"rotation phase {wanted}")


async def snapshot_when(api: Api, namespace: str, condition, what: str, timeout: float = 20) -> dict[str, dict]:
    """The Secrets of alpha (by component) once ``condition(snapshot)`` holds."""
    async def probe():
        found = await api.secrets_of(namespace, "alpha")
        return found if condition(found) else None
    return await api.wait_for(probe, timeout, what)


def serial(found: dict[str, dict], component: str) -> int | None:
    return cert_of(found[component]).serial_number if component in found else None


async def rotate(api: Api, namespace: str, target: str, grace: str) -> None:
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-grace": grace, "pki.clusterpki.dev/rotate-ca": target}}}, namespace)


@pytest.mark.parametrize("restart", [False, True], ids=["straight", "restart-in-every-phase"])
async def test_ca_rotation_goes_through_every_phase_with_the_invariant(operator, api, namespace, restart):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    before = await api.secrets_of(namespace, "alpha")
    old_ca = serial(before, "ca")
    await rotate(api, namespace, "ca", "3s")

    await wait_phase(api, namespace, "Preparing")
    found = await snapshot_when(api, namespace, lambda f: "ca-next" in f and
                                bundle_serials(f, "ca") == {(old_ca, serial(f, "ca-next"))}, "old + new bundles")
    new_ca = serial(found, "ca-next")
    assert serial(found, "ca") == old_ca, "the old CA still signs while Preparing"
    assert_bundle_invariant(found, "ca")
    if restart:
        await operator.restart()

    await wait_phase(api, namespace, "Rotating")
    found = await snapshot_when(api, namespace, lambda f: "ca-next" not in f and serial(f, "ca") == new_ca and
                                all(verifies(cert_of(f[leaf]), [cert_of(f["ca"])]) for leaf in FAMILY["ca"]),
                                "leaves re-issued from the new CA and the spare removed")
    assert serial(found, "ca-previous") == old_ca
    assert bundle_serials(found, "ca") == {(new_ca, old_ca)}
    assert_bundle_invariant(found, "ca")
    if restart:
        await operator.restart()

    await wait_phase(api, namespace, "Completed")
    found = await snapshot_when(api, namespace, lambda f: bundle_serials(f, "ca") == {(new_ca,)},
                                "bundles without the old CA")
    assert_bundle_invariant(found, "ca")
    assert serial(found, "ca-previous") == old_ca, "the old CA is kept for audit and rollback"
    untouched = [*FAMILY["etcd-ca"], *FAMILY["front-proxy-ca"], "etcd-ca", "front-proxy-ca"]
    assert {c: serial(found, c) for c in untouched} == {c: serial(before, c) for c in untouched}
    rotation = (await api.ready(namespace, "alpha"))["status"]["caRotation"]
    assert (rotation["ca"], rotation["trigger"], rotation["request"]) == ("ca", "annotation", "ca")

    async def all_phase_events():
        reasons = {r for _, r, _ in await api.events(namespace)}
        return {"RotationPreparing", "RotationRotating", "RotationCompleting", "RotationCompleted"} <= reasons
    await api.wait_for(all_phase_events, what="an Event for every phase")


async def test_complete_annotation_ends_rotating_early(operator, api, namespace):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    await rotate(api, namespace, "etcd-ca", "1s")
    await wait_phase(api, namespace, "Rotating")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-grace": "1h", "pki.clusterpki.dev/rotate-ca-complete": "yes"}}}, namespace)
    await wait_phase(api, namespace, "Completed")
    found = await snapshot_when(api, namespace, lambda f: len(bundle_serials(f, "etcd-ca")) == 1 and
                                len(next(iter(bundle_serials(f, "etcd-ca")))) == 1, "bundles with one CA")
    assert_bundle_invariant(found, "etcd-ca")


def public_keys(secret: dict) -> list[bytes]:
    pem = decode(secret, "sa.pub")
    return [b"-----BEGIN PUBLIC KEY-----" + part for part in pem.split(b"-----BEGIN PUBLIC KEY-----")[1:]]


def public_of(secret: dict) -> bytes:
    key = serialization.load_pem_private_key(decode(secret, "sa.key"), None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_service_account_key_rotation(operator, api, namespace):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    old = public_of((await api.secrets_of(namespace, "alpha"))["sa"])
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/max-token-lifetime": "6s", "pki.clusterpki.dev/rotate-ca-grace": "2s",
        "pki.clusterpki.dev/rotate-ca": "sa"}}}, namespace)
    await wait_phase(api, namespace, "Preparing")
    found = await snapshot_when(api, namespace, lambda f: "sa-next" in f and len(public_keys(f["sa"])) == 2,
                                "sa.pub with old + new")
    new = public_of(found["sa-next"])
    assert public_keys(found["sa"]) == [old, new] and public_of(found["sa"]) == old
    await wait_phase(api, namespace, "Rotating")
    found = await snapshot_when(api, namespace, lambda f: public_of(f["sa"]) == new, "sa.key switched")
    assert public_keys(found["sa"]) == [new, old]
    await wait_phase(api, namespace, "Completed")
    found = await api.secrets_of(namespace, "alpha")
    assert public_keys(found["sa"]) == [new, old], "tokens the old key signed live on: it stays trusted"
    rotation = (await api.ready(namespace, "alpha"))["status"]["caRotation"]
    assert rotation["oldKeyTrustedUntil"] > rotation["completedAt"]
    found = await snapshot_when(api, namespace, lambda f: public_keys(f["sa"]) == [new], "sa.pub with the new key")
    assert public_of(found["sa-previous"]) == old


async def test_an_unknown_rotation_target_is_refused(operator, api, namespace):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    before = await api.serials(namespace, "alpha")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca": "root"}}}, namespace)
    await api.wait_for(lambda: api.has_event(namespace, "InvalidRotationRequest",
                                             "pki.clusterpki.dev/rotate-ca='root': 'root' is not one of", "Warning"),
                       what="the InvalidRotationRequest Event")
    assert await api.serials(namespace, "alpha") == before


async def test_a_ca_in_its_renewal_window_is_rotated_automatically(operator, api, namespace):
    # The CAs live 30 s (the shortest the spec allows with a grace period of 1 s); their renewal window
    # (the last third) opens 20 s after issuance. One rotation runs at a time, and "ca" comes first.
    body = pki("alpha", namespace, validity={"ca": "30s", "certificate": "10s"}, renewBefore="5s")
    body["metadata"]["annotations"] = {"pki.clusterpki.dev/rotate-ca-grace": "1s"}
    await api.apply_pki(body)
    await api.ready(namespace, "alpha")
    created = datetime.now(timezone.utc)
    await asyncio.sleep(16)
    assert "caRotation" not in (await api.get("clusterpkis", "alpha", namespace))["status"], \
        "no rotation before the CA's renewal window"

    async def rotated():
        obj = await api.get("clusterpkis", "alpha", namespace)
        rotation = (obj.get("status") or {}).get("caRotation") or {}
        return rotation if rotation.get("trigger") == "renewal window" and rotation.get("phase") == "Completed" \
            else None
    rotation = await api.wait_for(rotated, timeout=15, what="an automatic rotation completed")
    started = datetime.fromisoformat(rotation["startedAt"].replace("Z", "+00:00"))
    assert timedelta(seconds=18) <= started - created <= timedelta(seconds=23)
    assert_bundle_invariant(await api.secrets_of(namespace, "alpha"), "ca")


async def test_a_lost_new_ca_restarts_preparing_and_only_the_recorded_ca_is_promoted(operator, api, namespace):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    old_ca = serial(await api.secrets_of(namespace, "alpha"), "ca")
    await rotate(api, namespace, "ca", "4s")
    await wait_phase(api, namespace, "Preparing")
    lost = serial(await snapshot_when(api, namespace, lambda f: "ca-next" in f, "the new CA"), "ca-next")
    await api.delete("secrets", "alpha-ca-next", namespace)

    found = await snapshot_when(api, namespace, lambda f: serial(f, "ca-next") not in (None, lost) and
                                bundle_serials(f, "ca") == {(old_ca, serial(f, "ca-next"))},
                                "a second new CA in every bundle")
    second = serial(found, "ca-next")
    assert_bundle_invariant(found, "ca")
    await api.wait_for(lambda: api.has_event(namespace, "RotationRestarted", kind="Warning"),
                       what="the RotationRestarted Event")
    await wait_phase(api, namespace, "Completed", timeout=30)
    found = await api.secrets_of(namespace, "alpha")
    assert serial(found, "ca") == second and serial(found, "ca-previous") == old_ca
    assert_bundle_invariant(found, "ca")


async def test_a_rotation_asked_for_during_another_starts_as_soon_as_that_ends(operator, api, namespace):
    """Found by a new user's hour: the second request waited for an unrelated event."""
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    await rotate(api, namespace, "etcd-ca", "2s")
    await wait_phase(api, namespace, "Preparing")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca": "front-proxy-ca"}}}, namespace)
    await api.wait_for(lambda: api.has_event(namespace, "RotationWaiting", "pki.clusterpki.dev/rotate-ca='front-proxy-"
                                             "ca' waits for the rotation of etcd-ca"), what="the RotationWaiting Event")

    async def second_done():
        rotation = ((await api.get("clusterpkis", "alpha", namespace)).get("status") or {}).get("caRotation") or {}
        return rotation.get("ca") == "front-proxy-ca" and rotation.get("phase") == "Completed"
    await api.wait_for(second_done, 40, "the front-proxy-ca rotation, started and done by itself")


async def test_a_retained_clusterpki_applied_again_keeps_the_old_ca_s_key(operator, api, namespace):
    """Found by a new user's hour: applying a retained ClusterPKI again deleted its -previous Secret, the
    only copy left of the old CA's key."""
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    await rotate(api, namespace, "front-proxy-ca", "1s")
    await wait_phase(api, namespace, "Completed")
    kept = (await api.secrets_of(namespace, "alpha"))["front-proxy-ca-previous"]["data"]
    await api.delete("clusterpkis", "alpha", namespace)

    async def gone():
        return await api.get("clusterpkis", "alpha", namespace) is None
    await api.wait_for(gone, 30, "the ClusterPKI gone")
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    await api.wait_for(lambda: api.has_event(namespace, "ForeignSecretIgnored", "Secret alpha-front-proxy-ca-previous is "
                                             "not on record", "Warning"), what="the ForeignSecretIgnored Event")
    assert (await api.secrets_of(namespace, "alpha"))["front-proxy-ca-previous"]["data"] == kept
