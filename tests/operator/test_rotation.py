"""Zero-downtime CA rotation: every phase, the bundle invariant at each, and restarts mid-rotation."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.operator.test_issuance import pki, serials

FAMILY = {"ca": ["apiserver", "apiserver-kubelet-client", "admin", "kube-scheduler",
                 "kube-controller-manager", "kube-proxy"],
          "etcd-ca": ["apiserver-etcd-client", "etcd-server-etcd-0", "etcd-peer-etcd-0", "etcd-healthcheck-client"]}
KUBECONFIGS = ["admin", "kube-scheduler", "kube-controller-manager", "kube-proxy"]


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


def assert_bundle_invariant(emulator, ca: str) -> list[list[int]]:
    """Every leaf of ``ca`` verifies against every bundle of ``ca`` in every Secret of the PKI
    (``ca.crt`` of the CA and of each leaf, and each kubeconfig's certificate-authority-data)."""
    found = {s["metadata"]["name"]: s for s in emulator.list("secrets", "team-a")}
    data = {name: {k: base64.b64decode(v) for k, v in s["data"].items()} for name, s in found.items()}
    bundles = [bundle(data[f"alpha-{ca}"]["ca.crt"])]
    for leaf in FAMILY[ca]:
        bundles.append(bundle(data[f"alpha-{leaf}"]["ca.crt"]))
        if leaf in KUBECONFIGS:
            config = yaml.safe_load(data[f"alpha-{leaf}"]["kubeconfig"])
            bundles.append(bundle(base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])))
    for leaf in FAMILY[ca]:
        cert = x509.load_pem_x509_certificate(data[f"alpha-{leaf}"]["tls.crt"])
        for trust in bundles:
            assert verifies(cert, trust), f"{leaf} does not verify against a {ca} bundle"
    return [[c.serial_number for c in b] for b in bundles]


async def phase_of(api) -> str | None:
    obj = await api.get("clusterpkis", "alpha", "team-a")
    return ((obj.get("status") or {}).get("caRotation") or {}).get("phase")


async def wait_phase(api, phase: str, timeout: float = 15) -> None:
    async def reached():
        return await phase_of(api) == phase
    await api.wait_for(reached, timeout, f"rotation phase {phase}")


def ca_serial(emulator, name: str) -> int | None:
    secret = emulator.get("secrets", f"alpha-{name}", "team-a")
    return x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"])).serial_number \
        if secret else None


@pytest.mark.parametrize("restart", [False, True], ids=["straight", "restart-in-every-phase"])
async def test_ca_rotation_goes_through_every_phase_with_the_invariant(operator, api, emulator, restart):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    old_ca = ca_serial(emulator, "ca")
    etcd_before = serials(emulator, "team-a", "alpha")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-grace": "2s", "pki.clusterpki.dev/rotate-ca": "ca"}}}, "team-a")

    await wait_phase(api, "Preparing")
    await api.wait_for(lambda: _has(emulator, "alpha-ca-next"), what="the new CA")
    new_ca = ca_serial(emulator, "ca-next")
    await api.wait_for(lambda: _bundles_are(emulator, [old_ca, new_ca]), what="old + new bundles")
    assert ca_serial(emulator, "ca") == old_ca, "the old CA still signs while Preparing"
    assert_bundle_invariant(emulator, "ca")
    if restart:
        await operator.stop()
        await operator.start()

    await wait_phase(api, "Rotating")
    await api.wait_for(lambda: _leaves_signed_by(emulator, new_ca), what="leaves re-issued from the new CA")
    await api.wait_for(lambda: not _has_now(emulator, "alpha-ca-next"), what="the spare Secret removed")
    assert ca_serial(emulator, "ca") == new_ca and ca_serial(emulator, "ca-previous") == old_ca
    assert _bundles_are_now(emulator, [new_ca, old_ca])
    assert_bundle_invariant(emulator, "ca")
    if restart:
        await operator.stop()
        await operator.start()

    await wait_phase(api, "Completed")
    await api.wait_for(lambda: _bundles_are(emulator, [new_ca]), what="bundles without the old CA")
    assert_bundle_invariant(emulator, "ca")
    assert ca_serial(emulator, "ca-previous") == old_ca, "the old CA is kept for audit and rollback"
    after = serials(emulator, "team-a", "alpha")
    assert {c: after[c] for c in FAMILY["etcd-ca"] + ["etcd-ca", "front-proxy-ca"]} == \
        {c: etcd_before[c] for c in FAMILY["etcd-ca"] + ["etcd-ca", "front-proxy-ca"]}, "other CAs untouched"
    obj = await api.ready("team-a", "alpha")
    rotation = obj["status"]["caRotation"]
    assert (rotation["ca"], rotation["trigger"], rotation["request"]) == ("ca", "annotation", "ca")
    async def all_phase_events():
        reasons = {r for _, r, _ in await api.events("team-a")}
        return {"RotationPreparing", "RotationRotating", "RotationCompleting", "RotationCompleted"} <= reasons
    await api.wait_for(all_phase_events, what="an Event for every phase")


async def test_complete_annotation_ends_rotating_early(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-grace": "1s", "pki.clusterpki.dev/rotate-ca": "etcd-ca"}}}, "team-a")
    await wait_phase(api, "Rotating")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-grace": "1h", "pki.clusterpki.dev/rotate-ca-complete": "yes"}}}, "team-a")
    await wait_phase(api, "Completed")
    assert_bundle_invariant(emulator, "etcd-ca")


async def test_service_account_key_rotation(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    old = _sa(emulator, "alpha-sa")["sa.key"]
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-grace": "2s", "pki.clusterpki.dev/rotate-ca": "sa"}}}, "team-a")
    await wait_phase(api, "Preparing")
    await api.wait_for(lambda: _has(emulator, "alpha-sa-next"), what="the new key")
    new = _sa(emulator, "alpha-sa-next")["sa.key"]
    await api.wait_for(lambda: _public_keys(emulator) == [_pub(old), _pub(new)], what="sa.pub with old + new")
    assert _sa(emulator, "alpha-sa")["sa.key"] == old
    await wait_phase(api, "Rotating")
    await api.wait_for(lambda: _sa_key_is(emulator, new), what="sa.key switched to the new key")
    assert _public_keys(emulator) == [_pub(new), _pub(old)]
    await wait_phase(api, "Completed")
    await api.wait_for(lambda: _public_keys_are(emulator, [_pub(new)]), what="sa.pub with the new key only")
    assert _sa(emulator, "alpha-sa-previous")["sa.key"] == old


async def test_an_unknown_rotation_target_is_refused(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    before = serials(emulator, "team-a", "alpha")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca": "root"}}}, "team-a")

    async def refused():
        return any(r == "InvalidRotationRequest" for _, r, _ in await api.events("team-a"))
    await api.wait_for(refused, what="the InvalidRotationRequest Event")
    assert serials(emulator, "team-a", "alpha") == before


async def _has(emulator, name: str) -> bool:
    return _has_now(emulator, name)


def _has_now(emulator, name: str) -> bool:
    return emulator.get("secrets", name, "team-a") is not None


async def _bundles_are(emulator, expected: list[int]) -> bool:
    return _bundles_are_now(emulator, expected)


def _bundles_are_now(emulator, expected: list[int]) -> bool:
    found = {s["metadata"]["name"]: s for s in emulator.list("secrets", "team-a")}
    for name in ["alpha-ca"] + [f"alpha-{leaf}" for leaf in FAMILY["ca"]]:
        serial_list = [c.serial_number for c in bundle(base64.b64decode(found[name]["data"]["ca.crt"]))]
        if serial_list != expected:
            return False
    return True


async def _leaves_signed_by(emulator, serial: int) -> bool:
    ca = emulator.get("secrets", "alpha-ca", "team-a")
    ca_cert = x509.load_pem_x509_certificate(base64.b64decode(ca["data"]["tls.crt"]))
    if ca_cert.serial_number != serial:
        return False
    for leaf in FAMILY["ca"]:
        secret = emulator.get("secrets", f"alpha-{leaf}", "team-a")
        if not verifies(x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"])), [ca_cert]):
            return False
    return True


def _sa(emulator, name: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in emulator.get("secrets", name, "team-a")["data"].items()}


def _pub(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_keys(emulator) -> list[bytes]:
    pem = _sa(emulator, "alpha-sa")["sa.pub"]
    return [b"-----BEGIN PUBLIC KEY-----" + part for part in pem.split(b"-----BEGIN PUBLIC KEY-----")[1:]]


async def _public_keys_are(emulator, expected: list[bytes]) -> bool:
    return _public_keys(emulator) == expected


async def _sa_key_is(emulator, key: bytes) -> bool:
    return _sa(emulator, "alpha-sa")["sa.key"] == key


async def test_a_ca_in_its_renewal_window_is_rotated_automatically(operator, api, emulator):
    # The CAs live 15 s; their renewal window (the last third) opens 10 s after issuance. One rotation
    # runs at a time, and "ca" comes first; it completes before the other CAs expire.
    await api.apply_pki(pki("alpha", validity={"ca": "15s", "certificate": "5s"}, renewBefore="2s"))
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-grace": "1s"}}}, "team-a")
    await api.ready("team-a", "alpha")

    created = datetime.now(timezone.utc)
    await asyncio.sleep(7)
    obj = await api.get("clusterpkis", "alpha", "team-a")
    assert "caRotation" not in obj["status"], "no rotation before the CA's renewal window"

    async def rotated():
        obj = await api.get("clusterpkis", "alpha", "team-a")
        rotation = (obj.get("status") or {}).get("caRotation") or {}
        return rotation if rotation.get("trigger") == "renewal window" and rotation.get("phase") == "Completed" \
            else None
    rotation = await api.wait_for(rotated, timeout=10, what="an automatic rotation completed")
    started = datetime.fromisoformat(rotation["startedAt"].replace("Z", "+00:00"))
    assert timedelta(seconds=8) <= started - created <= timedelta(seconds=13)
    assert_bundle_invariant(emulator, "ca")


async def test_a_lost_new_ca_restarts_preparing_and_only_the_recorded_ca_is_promoted(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    old_ca = ca_serial(emulator, "ca")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-grace": "3s", "pki.clusterpki.dev/rotate-ca": "ca"}}}, "team-a")
    await wait_phase(api, "Preparing")
    await api.wait_for(lambda: _has(emulator, "alpha-ca-next"), what="the new CA")
    lost = ca_serial(emulator, "ca-next")
    await api.delete("secrets", "alpha-ca-next", "team-a")

    async def replaced():
        serial = ca_serial(emulator, "ca-next")
        return serial if serial not in (None, lost) else None
    second = await api.wait_for(replaced, what="a second new CA")
    await api.wait_for(lambda: _has_restart_event(api), what="the RotationRestarted Event")
    await api.wait_for(lambda: _bundles_are(emulator, [old_ca, second]), what="bundles with the second new CA")
    assert_bundle_invariant(emulator, "ca")
    await wait_phase(api, "Completed", timeout=20)
    assert ca_serial(emulator, "ca") == second and ca_serial(emulator, "ca-previous") == old_ca
    assert_bundle_invariant(emulator, "ca")


async def _has_restart_event(api) -> bool:
    return any(r == "RotationRestarted" for _, r, _ in await api.events("team-a"))
