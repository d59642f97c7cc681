"""The agent's parts: the restart table, the restarters, and what it owes after a restart of its own."""

from __future__ import annotations

import asyncio
import copy
import json

from datetime import timedelta

import pytest
import yaml
from clusterpki.agent import consumers, restarters
from clusterpki.agent.agent import Agent
from clusterpki.agent.startup import Start
from clusterpki.controller import requests
from clusterpki.kube import reports
from clusterpki.pki import placement, record, spec, times

from tests.unit.controller.world import World, clusterpki


def test_only_files_a_component_does_not_reload_restart_it():
    assert consumers.to_restart(["etcd", "kube-apiserver"], {"pki/etcd/server.crt", "pki/apiserver.crt"}) == []
    assert consumers.to_restart(["kube-apiserver", "etcd"], {"pki/etcd/ca.crt"}) == ["etcd", "kube-apiserver"]
    assert consumers.to_restart(["kube-apiserver"], {"pki/sa.pub"}) == ["kube-apiserver"]
    assert consumers.to_restart(["kube-scheduler"], {"pki/ca.crt", "pki/sa.key"}) == []


def test_every_file_in_the_table_is_one_of_the_layout():
    known = {p.path for p in placement.placements("m0")}
    for consumer in consumers.CONSUMERS:
        assert set(consumer.files) <= known, consumer.component
        assert set(consumer.files.values()) <= {consumers.RELOAD, consumers.RESTART}


async def test_static_pod_restarter_changes_only_an_annotation(tmp_path):
    manifest = tmp_path / "etcd.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "etcd"},
                                        "spec": {"containers": [{"name": "etcd"}]}}))
    manifest.chmod(0o600)
    await restarters.StaticPods(tmp_path).restart("etcd")
    first = yaml.safe_load(manifest.read_text())
    assert set(first["metadata"]["annotations"]) == {restarters.RESTARTED_AT}
    assert first["spec"] == {"containers": [{"name": "etcd"}]} and manifest.stat().st_mode & 0o777 == 0o600
    await restarters.StaticPods(tmp_path).restart("etcd")
    assert yaml.safe_load(manifest.read_text())["metadata"]["annotations"] != first["metadata"]["annotations"]
    with pytest.raises(restarters.RestartFailed, match="kube-apiserver.yaml"):
        await restarters.StaticPods(tmp_path).restart("kube-apiserver")


async def test_command_restarter_passes_the_component_and_reports_failure(tmp_path):
    out = tmp_path / "out"
    await restarters.Command(f'echo "$CLUSTERPKI_COMPONENT" > {out}').restart("etcd")
    assert out.read_text().strip() == "etcd"
    with pytest.raises(restarters.RestartFailed, match="exited 3: nope"):
        await restarters.Command("echo nope; exit 3").restart("etcd")


def test_the_token_lifetime_annotation_is_read_and_bounded():
    body = {"apiVersion": spec.API_VERSION, "kind": spec.KIND, "metadata": {"name": "x", "annotations": {
        spec.TOKEN_LIFETIME_ANNOTATION: "10m"}}}
    assert spec.from_resource(body).token_lifetime == timedelta(minutes=10)
    body["metadata"]["annotations"][spec.TOKEN_LIFETIME_ANNOTATION] = "1000000h"
    with pytest.raises(spec.SpecError, match="max-token-lifetime"):
        spec.from_resource(body)


async def test_an_agent_started_again_owes_what_its_previous_run_did_not_restart(tmp_path):
    """Its previous run wrote the files and stopped before the restart: the files on disk are current,
    so only its own last report tells that kube-apiserver still runs the old ones."""
    world = World(clusterpki(etcd={"members": [{"name": "m0"}, {"name": "m1"}]}))
    await world.reconcile()
    current = record.Record.from_status(world.status()["record"])
    components = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]

    class Api:
        lease: dict = {}

        async def get_or_none(self, what, path):
            return self.lease

    def agent(api: Api) -> Agent:
        return Agent(api, "ns", "x", tmp_path, "m0", components, restarters.Command("true"),
                     Start(world.body, spec.from_resource(world.body)))

    api = Api()
    previous = agent(api)
    loaded = {c: previous._revisions(c, current) for c in components}
    loaded["kube-apiserver"] = {**loaded["kube-apiserver"], "sa": "old"}
    waiting = reports.Restart(reports.RestartState.WAITING, reports.RestartReason.TURN_TAKEN, "m1 restarts")
    said = reports.Report("m0", times.now(), timedelta(seconds=90), loaded, {}, {"kube-controller-manager": waiting})
    api.lease = reports.renewed(reports.lease("x", "ns", "m0", 90), said, times.now())
    await previous._resume(current)
    assert previous.owed == {"kube-apiserver", "kube-controller-manager"}

    fresh = agent(Api())
    fresh.api.lease = reports.lease("x", "ns", "m0", 90)  # made by the manifests, never renewed
    await fresh._resume(current)
    assert fresh.owed == set(), "a first run owes nothing for files that are already there"


async def test_a_component_is_restarted_at_most_once_per_interval(tmp_path):
    """Whoever can change a Secret makes the operator re-issue it, and the agents restart what reads it:
    the interval bounds how often that can be."""
    import asyncio

    from clusterpki.agent.agent import NotYourTurn

    world = World(clusterpki())
    await world.reconcile()

    class Api:
        async def get_or_none(self, what, path):
            return reports.lease("x", "ns", "etcd-0", 90)

        async def request(self, *args, **kwargs):
            return {}

    agent = Agent(Api(), "ns", "x", tmp_path, "etcd-0", ["kube-scheduler"], restarters.Command("true"),
                  Start(world.body, spec.from_resource(world.body)), restart_interval=30)
    agent.restarted_at["kube-scheduler"] = asyncio.get_running_loop().time() - 10
    with pytest.raises(NotYourTurn, match="kube-scheduler was restarted 10s ago"):
        await agent._not_too_soon("kube-scheduler")
    assert agent.restarts["kube-scheduler"].reason is reports.RestartReason.TOO_SOON
    agent.restarted_at["kube-scheduler"] -= 21
    await agent._not_too_soon("kube-scheduler")



def test_only_files_whose_material_changed_are_written(tmp_path):
    """A takeover restarts nothing for a key in PKCS#8, a kubeconfig laid out by kubeadm, or a bundle
    in another order: the files stay byte for byte; another key, another CA set or a mode does count."""
    from clusterpki.kubeadm import layout
    from clusterpki.pki import documents, engine, keys, kubeconfig
    from clusterpki.pki import spec as s
    from cryptography.hazmat.primitives import serialization
    from datetime import datetime, timezone

    from tests.helpers import document

    pki = engine.build(s.from_resource(document("t")), engine.Existing(), datetime.now(timezone.utc))
    files = layout.files_for(pki, "etcd-0")
    pkcs8 = pki.leaves["apiserver"].key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())
    login = documents.load(files["admin.conf"].data)
    login["users"][0]["name"] = login["contexts"][0]["context"]["user"] = "admin-of-kubeadm"
    on_disk = {**{p: c.data for p, c in files.items()}, "pki/apiserver.key": pkcs8,
               "admin.conf": json.dumps(login, indent=3).encode(),
               "pki/etcd/ca.crt": kubeconfig.pem_bundle([pki.cas["etcd-ca"].cert])}
    for path, data in on_disk.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(data)
        (tmp_path / path).chmod(files[path].mode)
    assert layout.to_write(tmp_path, files) == {}, "the same material in other bytes is kept as it is"

    other = keys.private_pem(keys.generate(s.KeyAlgorithm.ECDSA_P256))
    (tmp_path / "pki/apiserver.key").write_bytes(other)
    (tmp_path / "pki/sa.pub").chmod(0o666)
    login["users"][0]["user"]["token"] = "whoever-wrote-it"
    (tmp_path / "admin.conf").write_text(json.dumps(login))
    (tmp_path / "pki/ca.crt").write_bytes(kubeconfig.pem_bundle([pki.cas["ca"].cert] * 2))
    assert set(layout.to_write(tmp_path, files)) == {"pki/apiserver.key", "pki/sa.pub", "admin.conf", "pki/ca.crt"}, \
        "another key, a mode, a kubeconfig with a token, the signing CA twice: each is written again"
    assert layout.same_material("pki/etcd/ca.crt", kubeconfig.pem_bundle([pki.cas["ca"].cert, pki.cas["etcd-ca"].cert]),
                                kubeconfig.pem_bundle([pki.cas["etcd-ca"].cert, pki.cas["ca"].cert]))
    assert not layout.same_material("pki/apiserver.crt",
                                    kubeconfig.pem_bundle([pki.cas["ca"].cert, pki.cas["etcd-ca"].cert]),
                                    kubeconfig.pem_bundle([pki.cas["etcd-ca"].cert, pki.cas["ca"].cert])), \
        "a leaf's file is its certificate first: order matters there"
    assert not layout.same_material("pki/ca.key", b"junk", other)


async def test_secrets_newer_than_the_watched_record_are_checked_against_the_record_read_afresh(tmp_path):
    """The watch gave the record before a renewal (it is behind, or its connection went quiet); the
    Secrets are the renewal's. The agent reads the ClusterPKI again before it refuses anything."""
    world = World(clusterpki(etcd={"members": [{"name": "m0"}, {"name": "m1"}]}))
    await world.reconcile()
    watched = copy.deepcopy(world.body)
    world.annotate(**{requests.RENEW: "apiserver@now"})
    await world.reconcile()
    assert world.status()["record"] != watched["status"]["record"]

    class Api:
        gets = 0

        async def get_or_none(self, what, path):
            return copy.deepcopy(world.secrets.get(path.rsplit("/", 1)[-1]))

        async def request(self, verb, what, method, path, body=None, **_):
            assert (verb, method) == ("get", "GET") and path.endswith("/clusterpkis/x"), (verb, method, path)
            self.gets += 1
            return copy.deepcopy(world.body)

    api = Api()
    agent = Agent(api, "ns", "x", tmp_path, "m0", ["kube-apiserver"], restarters.Command("true"),
                  Start(watched, spec.from_resource(watched)))
    stale = await agent._verified()
    assert stale.pki is None and stale.rejected, "the renewed Secrets do not verify against the old record"
    assert await agent._refreshed() and api.gets == 1
    assert (await agent._verified()).pki is not None
    assert not await agent._refreshed(), "the same record again is no change"


async def test_each_resync_reads_the_clusterpki_afresh_so_a_quiet_watch_misses_no_change(tmp_path):
    """A watch through a load balancer can stay open and bring nothing (an apiserver restarted behind it):
    the record the operator committed meanwhile reaches the agent within one resync all the same."""
    world = World(clusterpki(etcd={"members": [{"name": "m0"}]}))
    await world.reconcile()
    watched = copy.deepcopy(world.body)
    world.annotate(**{requests.RENEW: "apiserver@now"})
    await world.reconcile()

    class Api:
        gets = 0

        async def request(self, verb, what, method, path, body=None, **_):
            self.gets += 1
            return copy.deepcopy(world.body)

    api = Api()
    agent = Agent(api, "ns", "x", tmp_path, "m0", ["kube-apiserver"], restarters.Command("true"),
                  Start(watched, spec.from_resource(watched)), resync=0.05)
    agent.changed.clear()
    quiet = agent.watching = asyncio.create_task(asyncio.sleep(3600))
    ticking = asyncio.create_task(agent._tick())
    try:
        await asyncio.wait_for(agent.changed.wait(), 5)
    finally:
        ticking.cancel()
        agent.watching.cancel()
        await asyncio.gather(ticking, agent.watching, quiet, return_exceptions=True)
    assert api.gets >= 1 and agent.body["status"]["record"] == world.status()["record"]
    assert quiet.cancelled() and agent.watching is not quiet, "the watch that was behind is replaced"


async def test_an_agent_renews_super_admin_conf_on_the_first_member_only_where_it_is(tmp_path):
    """kubeadm init's node alone has super-admin.conf, and an admin may move it away as kubeadm advises:
    the first member's agent keeps it current while it is there and never puts it back; no agent writes
    kubelet.conf, which the kubelet rotates itself."""
    world = World(clusterpki(kubernetesVersion="v1.29", etcd={"members": [{"name": "m0"}, {"name": "m1"}]}))
    await world.reconcile()

    class Api:
        def __init__(self) -> None:
            self.fetched: list[str] = []

        async def get_or_none(self, what, path):
            name = path.rsplit("/", 1)[-1]
            self.fetched.append(name)
            if "/leases/" in path:
                return {"metadata": {"name": name, "resourceVersion": "1"}, "spec": {}}
            return copy.deepcopy(world.secrets.get(name))

        async def request(self, verb, what, method, path, body=None, **_):
            return body

    async def round_of(member: str, out) -> list[str]:
        api = Api()
        agent = Agent(api, "ns", "x", out, member, [], restarters.Command("true"),
                      Start(world.body, spec.from_resource(world.body)))
        await agent.round()
        return api.fetched

    first, other = tmp_path / "m0", tmp_path / "m1"
    assert "x-super-admin" in await round_of("m0", first)
    assert "x-super-admin" not in await round_of("m1", other), "a joined member does not even read it"
    assert (first / "admin.conf").is_file() and not (first / "super-admin.conf").exists(), "never put there"
    assert not (other / "super-admin.conf").exists() and not (first / "kubelet.conf").exists()

    (first / "super-admin.conf").write_text("an old one, renewed by hand")
    await round_of("m0", first)
    written = yaml.safe_load((first / "super-admin.conf").read_text())
    assert written["users"][0]["name"] == "kubernetes-super-admin", "kept current where it is"
