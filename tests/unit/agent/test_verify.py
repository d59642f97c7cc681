"""What an agent writes: only Secrets the record vouches for, and files made from their material alone;
and what it refuses at its first start. The Secrets come from the controller's own loop
(``tests/unit/controller/world.py``), then the attacker changes them."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
from clusterpki.agent import startup
from clusterpki.agent.verify import sources, verify
from clusterpki.kube.secrets import StoredSecret
from clusterpki.kubeadm import layout, writer
from clusterpki.pki import certificates, documents, keys, record, spec
from clusterpki.pki.record import Claim, Record
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.unit.controller.world import T0, World, clusterpki

MEMBERS = {"etcd": {"members": [{"name": "m0", "ips": ["10.0.0.10"]}, {"name": "m1", "ips": ["10.0.0.11"]}]}}


async def issued() -> World:
    world = World(clusterpki(**MEMBERS))
    await world.reconcile()
    return world


def fetched(world: World, member: str = "m1") -> dict[str, StoredSecret | None]:
    found = {}
    for component in sources(spec.from_resource(world.body), member):
        secret = world.secrets.get(f"x-{component}")
        found[component] = StoredSecret.from_object(secret) if secret else None
    return found


def checked(world: World, member: str = "m1"):
    current = Record.from_status(world.status().get("record"))
    return verify(fetched(world, member), current, Claim.from_status(world.status().get("claim")),
                  spec.from_resource(world.body), member)


async def test_verified_material_makes_exactly_render_s_files_for_the_member():
    world = await issued()
    result = checked(world)
    assert result.pki is not None and not result.rejected
    files = layout.files_for(result.pki, "m1")
    assert x509.load_pem_x509_certificate(files["pki/etcd/server.crt"].data).subject.rfc4514_string() == "CN=m1"
    assert files["pki/ca.key"].mode == 0o600 and files["pki/ca.crt"].mode == 0o644
    assert files["pki/ca.crt"].data == world.data("ca", "ca.crt")
    assert "etcd-server-m0" not in sources(spec.from_resource(world.body), "m1"), \
        "a member never reads another member's etcd keys"


async def test_a_kubeconfig_is_built_never_taken_from_a_secret():
    world = await issued()
    login = documents.load(world.data("kube-controller-manager", "kubeconfig"))
    login["users"][0]["user"]["exec"] = {"command": "/bin/sh", "apiVersion": "client.authentication.k8s.io/v1"}
    world.tamper("kube-controller-manager", kubeconfig=documents.dump(login).encode())
    assert checked(world).rejected == {"kube-controller-manager": "its data is not what the operator issued (the "
                                                                  "record's digest differs)"}
    world.body["status"]["record"]["secrets"]["kube-controller-manager"]["data"] = \
        StoredSecret.from_object(world.secret("kube-controller-manager")).digest  # even if the record agreed
    built = layout.files_for(checked(world).pki, "m1")["controller-manager.conf"].data
    assert b"exec" not in built and b"/bin/sh" not in built


async def test_an_appended_ca_is_refused_and_nothing_is_written():
    world = await issued()
    evil = certificates.create_ca("evil", keys.generate(spec.KeyAlgorithm.ECDSA_P256), timedelta(days=1), T0)
    world.tamper("ca", ca_crt=world.data("ca", "ca.crt") + evil.public_bytes(serialization.Encoding.PEM))
    result = checked(world)
    assert result.pki is None and set(result.rejected) == {"ca"}


async def test_a_bundle_that_is_not_the_recorded_one_is_refused_even_with_a_matching_digest():
    world = await issued()
    evil = certificates.create_ca("evil", keys.generate(spec.KeyAlgorithm.ECDSA_P256), timedelta(days=1), T0)
    world.tamper("ca", ca_crt=world.data("ca", "ca.crt") + evil.public_bytes(serialization.Encoding.PEM))
    world.body["status"]["record"]["secrets"]["ca"]["data"] = StoredSecret.from_object(world.secret("ca")).digest
    assert checked(world).rejected == {"ca": "ca.crt is not the bundle on record"}


async def test_a_forged_service_account_key_is_refused():
    world = await issued()
    world.tamper("sa", sa_pub=world.data("sa", "sa.pub") + keys.public_pem(keys.generate(spec.KeyAlgorithm.ECDSA_P256)))
    assert set(checked(world).rejected) == {"sa"}


async def test_a_missing_secret_is_refused_and_one_being_written_is_waited_for():
    world = await issued()
    del world.secrets["x-admin"]
    assert checked(world).rejected == {"admin": "its Secret is missing"}
    world = await issued()
    world.annotate(**{"pki.clusterpki.dev/renew": "admin@1"})
    plan = await world.reconcile()
    world.body["status"] = {**world.status(), "claim": plan.claim.to_status(),
                            "record": record.Record.from_status(world.plans[0].status["record"]).to_status()}
    assert checked(world).waiting == "Secret x-admin is being written"


async def test_nothing_is_written_before_the_record_exists():
    world = World(clusterpki(**MEMBERS))
    assert checked(world).waiting is not None and not checked(world).rejected


async def test_first_contact_refuses_a_directory_of_another_pki(tmp_path):
    world = await issued()
    other = World(clusterpki(**MEMBERS))
    await other.reconcile()
    writer.write(tmp_path, layout.files_for(checked(other).pki, "m1"), set())
    current = Record.from_status(world.status()["record"])
    assert startup.foreign_authority(tmp_path, current).startswith("pki/ca.crt holds ca ")
    writer.write(tmp_path, layout.files_for(checked(world).pki, "m1"), set())
    assert startup.foreign_authority(tmp_path, current) is None
    assert startup.foreign_authority(tmp_path / "fresh", current) is None


@pytest.mark.parametrize("url, problem", [
    ("https://10.0.0.11:2379/health", None),
    ("https://127.0.0.1:6443/readyz", "127.0.0.1 is not an address of member m1 (10.0.0.11)"),  # the prober's own
    ("https://10.0.0.10:2379/health", "10.0.0.10 is not an address of member m1 (10.0.0.11)"),
    ("https://metadata.google.internal/", "metadata.google.internal is not an address of member m1"),
    ("file:///etc/shadow", "not an http(s) URL"),
])
def test_health_urls_must_be_on_the_member_s_own_address(url, problem):
    member = spec.from_resource(clusterpki(**MEMBERS)).member("m1")
    found = startup.health_url_problem(url, member)
    assert (found is None) if problem is None else found.startswith(problem)


def test_the_b64_of_a_secret_is_what_its_digest_covers():
    secret = {"metadata": {"name": "x"}, "data": {"a": base64.b64encode(b"1").decode()}}
    assert StoredSecret.from_object(secret).digest == record.data_digest({"a": b"1"})


def test_a_directory_that_cannot_be_written_is_one_sentence(tmp_path):
    import subprocess

    from clusterpki.errors import UserError

    mounted = tmp_path / "ro"
    mounted.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mounted)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        with pytest.raises(UserError, match=r"^cannot write to .*/ro/kubernetes: Read-only file system$"):
            startup._writable(mounted / "kubernetes")
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
