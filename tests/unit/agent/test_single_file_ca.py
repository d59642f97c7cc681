"""``pki/ca.crt`` is kube-apiserver's ``--client-ca-file`` and kube-controller-manager's
``--cluster-signing-cert-file`` (kubeadm's flags, unmodified), and the second refuses to start unless it
holds exactly one certificate, the one of ``pki/ca.key``. Through every phase of a ``ca`` rotation the
files an agent writes keep that, and every leaf of ``ca`` still verifies wherever the old CA alone is
trusted (kubelets' client CA, kubelet.conf, pods' kube-root-ca.crt) until Completed, and under the new
CA from Rotating on: the new CA's leaves present it cross-signed by the old. Verified with the
``openssl`` CLI, as a second implementation beside ``cryptography``."""

from __future__ import annotations

import base64
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

from clusterpki.agent.verify import verify
from clusterpki.controller import requests
from clusterpki.kube.secrets import StoredSecret
from clusterpki.kubeadm import layout
from clusterpki.pki import certificates, documents, keys, kubeconfig, placement, spec
from clusterpki.pki.record import Claim, Record
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.unit.controller.world import World, clusterpki

GRACE = timedelta(seconds=30)
LEAF_FILES = ("pki/apiserver.crt", "pki/apiserver-kubelet-client.crt")
LOGINS = ("admin.conf", "controller-manager.conf", "scheduler.conf")


async def rotating() -> World:
    world = World(clusterpki(annotations={spec.GRACE_ANNOTATION: "30s"}))
    await world.reconcile()
    world.annotate(**{requests.ROTATE: "ca"})
    await world.reconcile()
    await world.reconcile(GRACE)
    await world.reconcile()
    assert world.status()["caRotation"]["phase"] == "Rotating"
    return world


def fetch(world: World, member: str = "etcd-0") -> dict[str, StoredSecret | None]:
    """The Secrets an agent of ``member`` reads, as it reads them."""
    return {c: StoredSecret.from_object(world.secrets[f"x-{c}"]) if f"x-{c}" in world.secrets else None
            for c in [*dict.fromkeys(p.component for p in placement.placements(member)), *placement.old_signers()]}


def files(world: World, member: str = "etcd-0") -> dict[str, bytes]:
    result = verify(fetch(world, member), Record.from_status(world.status()["record"]), Claim.from_status(world.status().get("claim")),
                    spec.from_resource(world.body), member)
    assert result.pki is not None, result
    return {path: content.data for path, content in layout.files_for(result.pki, member).items()}


def presented(written: dict[str, bytes], path: str) -> bytes:
    """What a component presents: the .crt, or a kubeconfig's client-certificate-data."""
    if path.endswith(".crt"):
        return written[path]
    user = documents.load(written[path])["users"][0]["user"]
    return base64.b64decode(user["client-certificate-data"])


def openssl_verifies(tmp: Path, root: x509.Certificate, chain: bytes, at: datetime) -> bool:
    """``openssl verify`` of a presented chain (leaf first) against ``root`` alone, at the world's time."""
    leaf, *rest = x509.load_pem_x509_certificates(chain)
    (tmp / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp / "chain.pem").write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in rest) or b"")
    args = ["openssl", "verify", "-attime", str(int(at.timestamp())), "-CAfile", str(tmp / "root.pem")]
    if rest:
        args += ["-untrusted", str(tmp / "chain.pem")]
    return subprocess.run([*args, str(tmp / "leaf.pem")], capture_output=True).returncode == 0


def single_signer(written: dict[str, bytes]) -> x509.Certificate:
    certs = x509.load_pem_x509_certificates(written["pki/ca.crt"])
    assert len(certs) == 1, "kube-controller-manager's --cluster-signing-cert-file takes exactly one certificate"
    assert keys.same_public_key(certs[0].public_key(), keys.load_private_pem(written["pki/ca.key"]))
    return certs[0]


async def test_every_phase_writes_one_signing_ca_and_leaves_every_verifier_accepts(tmp_path):
    world = World(clusterpki(annotations={spec.GRACE_ANNOTATION: "30s"}, validity={"ca": "8760h"}))
    await world.reconcile()
    old = x509.load_pem_x509_certificate(world.data("ca", "tls.crt"))
    world.annotate(**{requests.ROTATE: "ca"})
    await world.reconcile()
    new = x509.load_pem_x509_certificate(world.data("ca-next", "tls.crt"))

    on_disk = {}
    for _ in range(5):
        phase = world.status()["caRotation"]["phase"]
        written = files(world)
        on_disk[phase] = single_signer(written)
        for path in (*LEAF_FILES, *LOGINS):
            chain = presented(written, path)
            trusted_by = {name: openssl_verifies(tmp_path, root, chain, world.now)
                          for name, root in (("old", old), ("new", new))}
            expected = {"Preparing": {"old": True, "new": False}, "Rotating": {"old": True, "new": True},
                        "Completing": {"old": True, "new": True}, "Completed": {"old": True, "new": True}}[phase]
            assert trusted_by == expected, (phase, path)
        await world.reconcile(GRACE)
        await world.reconcile()

    signers = {"Preparing": old, "Rotating": old, "Completing": new, "Completed": new}
    assert {"Preparing", "Rotating", "Completed"} <= set(on_disk)
    assert on_disk == {phase: signers[phase] for phase in on_disk}
    assert len(x509.load_pem_x509_certificates(world.data("ca", "tls.crt"))) == 1, \
        "once Completed, the CA's Secret no longer carries the cross-signed certificate"


async def test_the_cross_signed_certificate_is_made_once_and_kept(tmp_path):
    world = await rotating()
    stored = world.data("ca", "tls.crt")
    assert len(x509.load_pem_x509_certificates(stored)) == 2
    plan = await world.reconcile(timedelta(seconds=5))
    assert world.data("ca", "tls.crt") == stored and not plan.writes, "a second look writes nothing"


async def test_other_authorities_keep_their_bundle_files():
    world = World(clusterpki(annotations={spec.GRACE_ANNOTATION: "30s"}))
    await world.reconcile()
    world.annotate(**{requests.ROTATE: "etcd-ca"})
    await world.reconcile()
    written = files(world)
    assert len(x509.load_pem_x509_certificates(written["pki/etcd/ca.crt"])) == 2
    await world.reconcile(GRACE)
    await world.reconcile()
    assert len(x509.load_pem_x509_certificates(world.data("etcd-ca", "tls.crt"))) == 1, "no cross-signing"


async def test_the_old_ca_on_disk_must_be_the_recorded_one():
    world = await rotating()
    forged = keys.private_pem(keys.generate(spec.KeyAlgorithm.ECDSA_P256))
    world.tamper("ca-previous", tls_key=forged)
    result = verify(fetch(world), Record.from_status(world.status()["record"]), None, spec.from_resource(world.body),
                    "etcd-0")
    assert result.pki is None and "ca-previous" in result.rejected


async def test_a_certificate_appended_by_someone_else_never_reaches_a_node():
    world = await rotating()
    stranger = certificates.create_ca("attacker", keys.generate(spec.KeyAlgorithm.ECDSA_P256), timedelta(days=1),
                                      world.now)
    issued = world.data("apiserver", "tls.crt")
    assert len(x509.load_pem_x509_certificates(issued)) == 2, "the leaf, then the new CA cross-signed by the old"
    for component in ("apiserver", "ca"):
        world.tamper(component, tls_crt=world.data(component, "tls.crt") + kubeconfig.pem_bundle([stranger]))
    await world.reconcile(timedelta(seconds=1))
    assert world.data("apiserver", "tls.crt") == issued, "restored exactly: the operator's own chain, no more"
    assert len(x509.load_pem_x509_certificates(world.data("ca", "tls.crt"))) == 2
    written = files(world)
    assert stranger.subject.rfc4514_string() not in str([c.subject.rfc4514_string() for p in (*LEAF_FILES, "pki/ca.crt")
                                                         for c in x509.load_pem_x509_certificates(written[p])])


async def test_the_old_ca_stays_on_disk_if_its_secret_is_deleted_in_rotating(tmp_path):
    world = await rotating()
    old = single_signer(files(world))
    del world.secrets["x-ca-previous"]
    await world.reconcile(timedelta(seconds=1))
    current = Record.from_status(world.status()["record"])
    refused = verify(fetch(world), current, None, spec.from_resource(world.body), "etcd-0")
    assert refused.pki is None and "ca-previous" in refused.rejected, "a fresh node has no copy: nothing is written"
    on_disk = {"ca": certificates.KeyPair(old, keys.load_private_pem(files_of_rotation_start(world)))}
    kept = verify(fetch(world), current, None, spec.from_resource(world.body), "etcd-0", on_disk)
    assert kept.pki is not None
    assert single_signer({p: c.data for p, c in layout.files_for(kept.pki, "etcd-0").items()}) == old


def files_of_rotation_start(world: World) -> bytes:
    """The old CA's key, as a node that wrote the Preparing files holds it: the first ``x-ca`` written."""
    for plan in world.plans:
        for write in plan.writes:
            data = write.secret.get("data") or {}
            if write.secret["metadata"]["name"] == "x-ca" and "tls.key" in data:
                return base64.b64decode(data["tls.key"])
    raise AssertionError("the first CA's key was never written")


async def test_a_rotation_taken_back_in_rotating_returns_every_file_to_the_old_ca(tmp_path):
    world = await rotating()
    old = x509.load_pem_x509_certificate(world.data("ca-previous", "tls.crt"))
    new = x509.load_pem_x509_certificate(world.data("ca", "tls.crt"))
    keys_before = {c: world.data(c, "tls.key") for c in ("apiserver", "admin")}
    world.annotate(**{requests.ABORT: "now"})
    await world.reconcile(timedelta(seconds=1))
    assert world.status()["caRotation"]["phase"] == "Aborting" and "RotationAborting" in world.reasons()
    await world.reconcile()
    assert x509.load_pem_x509_certificate(world.data("ca", "tls.crt")) == old
    assert x509.load_pem_x509_certificate(world.data("ca-next", "tls.crt")) == new and "x-ca-previous" not in world.secrets
    written = files(world)
    assert single_signer(written) == old
    for path in (*LEAF_FILES, *LOGINS):
        chain = presented(written, path)
        assert len(x509.load_pem_x509_certificates(chain)) == 1, path
        assert openssl_verifies(tmp_path, old, chain, world.now), path
    assert {c: world.data(c, "tls.key") for c in keys_before} == keys_before, "the leaves keep their keys"
    bundle = [c.serial_number for c in x509.load_pem_x509_certificates(world.data("admin", "ca.crt"))]
    assert bundle == [old.serial_number, new.serial_number], "consumers still trust the new CA while they move back"

    await world.reconcile(timedelta(seconds=1))
    assert world.status()["caRotation"]["phase"] == "Aborted" and "RotationAborted" in world.reasons()
    await world.reconcile()
    assert "x-ca-next" not in world.secrets
    assert [c.serial_number for c in x509.load_pem_x509_certificates(world.data("admin", "ca.crt"))] == \
        [old.serial_number]
    assert single_signer(files(world)) == old
    plan = await world.reconcile(timedelta(seconds=5))
    assert not plan.writes, "taken back, it stays so"
    world.annotate(**{requests.ROTATE: "ca@again"})
    await world.reconcile()
    assert world.status()["caRotation"]["phase"] == "Preparing", "a new rotation can start"


async def test_a_rotation_taken_back_in_preparing_drops_the_new_ca():
    world = World(clusterpki(annotations={spec.GRACE_ANNOTATION: "30s"}))
    await world.reconcile()
    serials = {c: x509.load_pem_x509_certificate(world.data(c, "tls.crt")).serial_number for c in ("ca", "apiserver")}
    world.annotate(**{requests.ROTATE: "ca"})
    await world.reconcile()
    world.annotate(**{requests.ABORT: "1"})
    for _ in range(4):
        await world.reconcile(timedelta(seconds=1))
    assert world.status()["caRotation"]["phase"] == "Aborted" and "x-ca-next" not in world.secrets
    assert {c: x509.load_pem_x509_certificate(world.data(c, "tls.crt")).serial_number for c in serials} == serials, \
        "nothing was re-issued: every leaf is the old CA's already"


async def test_an_abort_with_nothing_to_take_back_is_refused_once():
    world = World(clusterpki(annotations={spec.GRACE_ANNOTATION: "30s"}))
    await world.reconcile()
    world.annotate(**{requests.ABORT: "x"})
    await world.reconcile()
    await world.reconcile(timedelta(seconds=1))
    refusals = [m for kind, reason, m in world.events if reason == "InvalidRotationRequest"]
    assert refusals == ["pki.clusterpki.dev/rotate-ca-abort='x': no CA rotation is under way"]
    world.annotate(**{requests.ROTATE: "sa", requests.ABORT: "y"})
    await world.reconcile()
    await world.reconcile(timedelta(seconds=1))
    assert world.status()["caRotation"]["phase"] == "Preparing"
    assert "the sa key's rotation cannot be taken back" in [m for _, r, m in world.events if r == "InvalidRotationRequest"][-1]
