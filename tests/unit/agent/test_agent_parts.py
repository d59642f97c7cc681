"""The agent's pure parts: the restart table, the restarters, the files it writes from Secrets, and
the consumer reports the operator reads."""

from __future__ import annotations

import base64
from datetime import timedelta

import pytest
import yaml
from clusterpki.agent import consumers, restarters
from clusterpki.kube import reports, secrets
from clusterpki.kubeadm import layout
from clusterpki.pki import certificates, engine, spec
from cryptography import x509


def test_only_files_a_component_does_not_reload_restart_it():
    assert consumers.to_restart(["etcd", "kube-apiserver"], {"pki/etcd/server.crt", "pki/apiserver.crt"}) == []
    assert consumers.to_restart(["kube-apiserver", "etcd"], {"pki/etcd/ca.crt"}) == ["etcd", "kube-apiserver"]
    assert consumers.to_restart(["kube-apiserver"], {"pki/sa.pub"}) == ["kube-apiserver"]
    assert consumers.to_restart(["kube-scheduler"], {"pki/ca.crt", "pki/sa.key"}) == []


def test_every_file_in_the_table_is_one_of_the_layout():
    known = set(layout.sources("m0"))
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


def _stored():
    pki_spec = spec.from_spec("x", {"etcd": {"members": [{"name": "m0"}, {"name": "m1"}]}})
    pki = engine.build(pki_spec, engine.Existing(), certificates.utcnow())
    wanted = secrets.desired(pki, "ns", None, {}, set())
    return pki, wanted


def test_files_from_secrets_are_kubeadm_s_for_one_member():
    pki, wanted = _stored()
    stored = {c: {k: base64.b64decode(v) for k, v in s["data"].items()} for c, s in wanted.items()}
    files = layout.files_from_stored(stored, "m1")
    assert set(files) == set(layout.files_for(pki, "m1")) == set(layout.sources("m1"))
    server = x509.load_pem_x509_certificate(files["pki/etcd/server.crt"].data)
    assert server.subject.rfc4514_string() == "CN=m1"
    assert files["pki/ca.key"].mode == 0o600 and files["pki/ca.crt"].mode == 0o644
    assert files["admin.conf"].data == stored["admin"]["kubeconfig"]


def test_reports_name_who_runs_an_older_revision():
    _, wanted = _stored()
    loaded = {"etcd": {"etcd-ca": reports.revision(wanted["etcd-ca"]["data"]), "etcd-server-m0": "old"},
              "kube-apiserver": {"ca": reports.revision(wanted["ca"]["data"])}}
    report = reports.config_map("x", "ns", "node-0", loaded, {"etcd": "https://10.0.0.1:2379/health"}, {})
    entries = reports.consumers([report], wanted)
    assert entries == [{"name": "node-0/etcd", "current": False, "behind": ["etcd-server-m0"]},
                       {"name": "node-0/kube-apiserver", "current": True}]
    assert reports.holding_up(entries) == "node-0/etcd (etcd-server-m0)"
    assert reports.health(report) == {"etcd": "https://10.0.0.1:2379/health"}
    assert reports.failed_restarts(entries) == ""
    assert reports.consumers([{"metadata": {"name": "broken"}, "data": {"loaded": "{"}}], wanted) == []


def test_reports_carry_restarts_that_are_not_done():
    _, wanted = _stored()
    loaded = {"etcd": {"etcd-ca": "old"}, "kube-apiserver": {"ca": "old"}}
    restarts = {"etcd": {"state": reports.FAILED, "message": "restarting etcd exited 1: boom"},
                "kube-apiserver": {"state": reports.WAITING, "message": "node-1 is restarting its kube-apiserver"}}
    report = reports.config_map("x", "ns", "node-0", loaded, {}, restarts)
    entries = reports.consumers([report], wanted)
    assert [e["restart"] for e in entries] == ["Failed: restarting etcd exited 1: boom",
                                               "Waiting: node-1 is restarting its kube-apiserver"]
    assert reports.failed_restarts(entries) == "node-0/etcd (Failed: restarting etcd exited 1: boom)"


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
    from clusterpki.agent.agent import Agent

    _, wanted = _stored()
    components = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    stored = {c: {k: base64.b64decode(v) for k, v in s["data"].items()} for c, s in wanted.items()}
    files, sources = layout.files_from_stored(stored, "m0"), layout.sources("m0")

    class Api:
        report = None

        async def get_or_none(self, what, path):
            return self.report

    api = Api()
    agent = Agent(api, "ns", "x", tmp_path, "m0", "node-0", components, restarters.Command("true"))
    agent.secrets = wanted
    current = {c: agent._revisions(c, files, sources) for c in components}
    api.report = reports.config_map("x", "ns", "node-0", {
        "etcd": current["etcd"], "kube-apiserver": {**current["kube-apiserver"], "sa": "old"},
        "kube-controller-manager": current["kube-controller-manager"], "kube-scheduler": current["kube-scheduler"]},
        {}, {"kube-controller-manager": {"state": reports.WAITING, "message": "m1 restarts"}})
    await agent._resume(files, sources)
    assert agent.owed == {"kube-apiserver", "kube-controller-manager"}

    fresh = Agent(Api(), "ns", "x", tmp_path, "m0", "node-0", components, restarters.Command("true"))
    fresh.secrets = wanted
    await fresh._resume(files, sources)
    assert fresh.owed == set(), "a first run owes nothing for files that are already there"
