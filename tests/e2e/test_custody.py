"""The chain of custody, tried as the attacker would on the real control plane: mallory, a principal
that may only create, update and patch Secrets and ConfigMaps in the ClusterPKI's namespace (no get, no
rights on ClusterPKIs or Leases), sending raw PATCH requests as herself (impersonated). Beside her, the
real operator (its ServiceAccount) and a real agent (its member's ServiceAccount, from
``clusterpki agent-manifests``) writing a kubeadm directory and restarting through a command that
records each restart.

What must hold: nothing she writes reaches the agent's files, nothing she writes restarts anything or
moves a rotation on, each tampered Secret is restored with a SecretTampered Event, and the agent's own
credentials read only what its member needs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from clusterpki.pki import certificates, keys, spec, times
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.e2e.conftest import pki
from tests.helpers import REPO
from tests.kube import Api, cert_of
from tests.proof import agent_kubeconfigs

MEMBERS = {"etcd": {"members": [{"name": "m0"}, {"name": "m1"}]}}
EVIL = certificates.create_ca("mallory", keys.generate(spec.KeyAlgorithm.ECDSA_P256), timedelta(days=1), times.now())
EVIL_PEM = EVIL.public_bytes(serialization.Encoding.PEM)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Mallory:
    """Raw requests as system:serviceaccount:<ns>:mallory (impersonated by the admin's session)."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.headers = {"Impersonate-User": f"system:serviceaccount:{namespace}:mallory"}

    async def patch(self, plural: str, name: str, patch: dict, kind: str = "merge") -> int:
        url = self.api.url + self.api.path(plural, self.namespace, name)
        async with self.api.session.patch(url, data=json.dumps(patch), headers={
                **self.headers, "Content-Type": f"application/{kind}-patch+json"}) as response:
            return response.status

    async def create(self, plural: str, body: dict) -> int:
        url = self.api.url + self.api.path(plural, self.namespace)
        async with self.api.session.post(url, json=body, headers=self.headers) as response:
            return response.status

    async def get(self, plural: str, name: str) -> int:
        url = self.api.url + self.api.path(plural, self.namespace, name)
        async with self.api.session.get(url, headers=self.headers) as response:
            return response.status


@pytest.fixture
async def mallory(api: Api, namespace: str) -> Mallory:
    await api.create("serviceaccounts", {"metadata": {"name": "mallory"}}, namespace)
    await api.create("roles", {"metadata": {"name": "mallory"}, "rules": [
        {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["create", "update", "patch"]}]},
        namespace)
    await api.create("rolebindings", {"metadata": {"name": "mallory"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mallory"}, "subjects": [
        {"kind": "ServiceAccount", "name": "mallory", "namespace": namespace}]}, namespace)
    found = Mallory(api, namespace)
    assert await found.get("secrets", "x") == 403, "she cannot read Secrets"
    return found


class AgentProcess:
    """``clusterpki agent`` for one member, as a process, restarting through a command that records it."""

    def __init__(self, member: str, tmp: Path, kubeconfig: Path, namespace: str) -> None:
        self.member, self.kubeconfig, self.namespace = member, kubeconfig, namespace
        self.dir, self.restarts = tmp / member / "kubernetes", tmp / member / "restarts"
        self.log = tmp / member / "agent.log"
        self.process: asyncio.subprocess.Process | None = None

    def args(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "clusterpki", "agent", "-n", self.namespace, "cp", "--dir", str(self.dir),
                "--member", self.member, "--restart", "command", "--restart-command",
                f'echo "$CLUSTERPKI_COMPONENT" >> {self.restarts}', "--resync", "2", "--restart-interval", "0", *extra]

    async def start(self, *extra: str) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        output = open(self.log, "ab")
        self.process = await asyncio.create_subprocess_exec(
            *self.args(*extra), cwd=REPO, stdout=output, stderr=output,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})

    async def stop(self, kill: bool = False) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill() if kill else self.process.terminate()
            await self.process.wait()

    def restarted(self) -> list[str]:
        return self.restarts.read_text().split() if self.restarts.exists() else []

    def file(self, path: str) -> bytes:
        return (self.dir / path).read_bytes()


@pytest.fixture
async def agents(operator, api, namespace, cluster, tmp_path) -> AsyncIterator[dict[str, AgentProcess]]:
    """The ClusterPKI ``cp`` issued, and both members' agents running and reporting current."""
    body = pki("cp", namespace, **MEMBERS)
    body["metadata"]["annotations"] = {spec.GRACE_ANNOTATION: "3s"}
    await api.apply_pki(body)
    await api.ready(namespace, "cp")
    credentials = agent_kubeconfigs(cluster, body, tmp_path)
    found = {m: AgentProcess(m, tmp_path, credentials[m], namespace) for m in ("m0", "m1")}
    for agent in found.values():
        await agent.start()
    await api.wait_for(lambda: all_current(api, namespace, 8), 40, "both agents current")
    try:
        yield found
    finally:
        for agent in found.values():
            await agent.stop()
        for agent in found.values():
            assert "PRIVATE KEY" not in agent.log.read_text()


async def all_current(api: Api, namespace: str, count: int) -> bool:
    entries = ((await api.get("clusterpkis", "cp", namespace)).get("status") or {}).get("consumers") or []
    return len(entries) == count and all(e["current"] for e in entries)


async def tampered_event(api: Api, namespace: str, secret: str) -> bool:
    return await api.has_event(namespace, "SecretTampered", f"Secret {secret} ", kind="Warning")


async def watch_files(agents: dict[str, AgentProcess], seconds: float) -> list[bytes]:
    """Every version of every file of both agents' directories seen over ``seconds``."""
    seen = []
    for _ in range(int(seconds / 0.1)):
        for agent in agents.values():
            for path in agent.dir.rglob("*"):  # the staged files of a write included
                try:
                    seen.append(path.read_bytes())
                except (FileNotFoundError, IsADirectoryError):  # renamed into place meanwhile
                    continue
        await asyncio.sleep(0.1)
    return seen


@pytest.mark.parametrize("extra", [{}, {"immutable": True}, {"corrupt": True}],
                         ids=["append", "append-immutable", "append-with-a-corrupt-tls.crt"])
async def test_a_ca_appended_to_a_bundle_never_reaches_a_node(api, namespace, mallory, agents, extra):
    restarts = {m: a.restarted() for m, a in agents.items()}
    original = (await api.get("secrets", "cp-ca", namespace))["data"]
    bundle = base64.b64decode(original["ca.crt"]) + EVIL_PEM
    patch: dict = {"data": {"ca.crt": b64(bundle)}}
    if extra.get("corrupt"):
        patch["data"]["tls.crt"] = b64(b"not a certificate")
    if extra.get("immutable"):
        patch["immutable"] = True
    assert await mallory.patch("secrets", "cp-ca", patch) == 200
    seen = await watch_files(agents, 4)
    assert not any(EVIL_PEM.strip() in content for content in seen), "her CA reached a node"
    await api.wait_for(lambda: tampered_event(api, namespace, "cp-ca"), what="the SecretTampered Event")
    restored = await api.get("secrets", "cp-ca", namespace)
    assert restored["data"] == original and not restored.get("immutable")
    assert {m: a.restarted() for m, a in agents.items()} == restarts, "nothing was restarted"
    await api.ready(namespace, "cp")


@pytest.mark.parametrize("secret, key", [("cp-etcd-ca", "ca.crt"), ("cp-front-proxy-ca", "ca.crt"),
                                         ("cp-apiserver", "ca.crt"), ("cp-sa", "sa.pub")])
async def test_other_bundles_and_keys_are_restored_and_never_reach_a_node(api, namespace, mallory, agents, secret, key):
    evil = EVIL_PEM if key == "ca.crt" else keys.public_pem(keys.generate(spec.KeyAlgorithm.ECDSA_P256))
    original = (await api.get("secrets", secret, namespace))["data"]
    assert await mallory.patch("secrets", secret, {"data": {key: b64(base64.b64decode(original[key]) + evil)}}) == 200
    seen = await watch_files(agents, 3)
    assert not any(evil.strip() in content for content in seen)
    await api.wait_for(lambda: tampered_event(api, namespace, secret), what="the SecretTampered Event")
    assert (await api.get("secrets", secret, namespace))["data"] == original


async def test_a_forged_spare_during_preparing_is_replaced_and_never_trusted(api, namespace, mallory, agents):
    await rotate_to(api, namespace, "etcd-ca", "Preparing")
    spare = await api.wait_for(lambda: api.get("secrets", "cp-etcd-ca-next", namespace), what="the spare")
    forged_key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    forged = certificates.create_ca("etcd-ca", forged_key, timedelta(days=3650), times.now())
    assert await mallory.patch("secrets", "cp-etcd-ca-next", {"data": {
        "tls.crt": b64(forged.public_bytes(serialization.Encoding.PEM)), "tls.key": b64(keys.private_pem(forged_key)),
        "ca.crt": b64(forged.public_bytes(serialization.Encoding.PEM))}}) == 200
    forged_pem = forged.public_bytes(serialization.Encoding.PEM).strip()
    seen = await watch_files(agents, 4)
    assert not any(forged_pem in content for content in seen)
    await api.wait_for(lambda: api.has_event(namespace, "RotationRestarted", kind="Warning"), what="RotationRestarted")

    async def moved_in():
        rotation = ((await api.get("clusterpkis", "cp", namespace)).get("status") or {}).get("caRotation") or {}
        return rotation.get("phase") in ("Completing", "Completed")
    await api.wait_for(moved_in, 60, "the etcd-ca rotation past its move")
    signing = cert_of(await api.get("secrets", "cp-etcd-ca", namespace))
    assert signing not in (cert_of(spare), forged), "only a spare the operator made and recorded is moved in"


@pytest.mark.parametrize("field", ["exec", "auth-provider", "token"])
async def test_a_kubeconfig_with_code_or_a_token_never_reaches_a_node(api, namespace, mallory, agents, field):
    from clusterpki.pki import documents

    restarts = agents["m0"].restarted()
    login = documents.load(base64.b64decode((await api.get("secrets", "cp-kube-controller-manager", namespace))
                                            ["data"]["kubeconfig"]))
    login["users"][0]["user"][field] = {"exec": {"command": "/bin/sh", "args": ["-c", "touch /tmp/pwned"],
                                                 "apiVersion": "client.authentication.k8s.io/v1"},
                                        "auth-provider": {"name": "oidc", "config": {"cmd-path": "/bin/sh"}},
                                        "token": "mallory"}[field]
    assert await mallory.patch("secrets", "cp-kube-controller-manager",
                               {"data": {"kubeconfig": b64(documents.dump(login).encode())}}) == 200
    seen = await watch_files(agents, 4)
    assert not any(b"/bin/sh" in content or b"mallory" in content for content in seen)
    await api.wait_for(lambda: tampered_event(api, namespace, "cp-kube-controller-manager"), what="the Event")
    assert agents["m0"].restarted() == restarts


async def rotate_to(api: Api, namespace: str, target: str, phase: str) -> None:
    await api.patch("clusterpkis", "cp", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca": f"{target}@{phase}"}}}, namespace)

    async def reached():
        rotation = ((await api.get("clusterpkis", "cp", namespace)).get("status") or {}).get("caRotation") or {}
        return rotation.get("request") == f"{target}@{phase}" and rotation.get("phase") == phase
    await api.wait_for(reached, 60, f"{target} {phase}")


async def test_the_halves_of_a_rotation_are_taken_by_fingerprint_only(api, namespace, mallory, agents):
    await rotate_to(api, namespace, "ca", "Rotating")
    await api.wait_for(lambda: api.get("secrets", "cp-ca-previous", namespace), what="the old CA moved out")
    assert await mallory.patch("secrets", "cp-ca-previous", {"data": {"tls.crt": b64(EVIL_PEM)}}) == 200
    seen = await watch_files(agents, 3)
    assert not any(EVIL_PEM.strip() in content for content in seen)
    stored = await api.secrets_of(namespace, "cp")
    assert all(EVIL_PEM.strip() not in base64.b64decode(s["data"].get("ca.crt", "")) for s in stored.values())
    evil_key = keys.public_pem(keys.generate(spec.KeyAlgorithm.ECDSA_P256))
    await api.wait_for(lambda: all_current(api, namespace, 8), 60, "the ca rotation's consumers current")
    await rotate_to(api, namespace, "sa", "Completed")
    assert await mallory.patch("secrets", "cp-sa-previous", {"data": {"sa.pub": b64(evil_key),
                                                                      "sa.key": b64(b"junk")}}) == 200
    await api.patch("clusterpkis", "cp", {"metadata": {"annotations": {"touched": "1"}}}, namespace)
    seen = await watch_files(agents, 3)
    assert not any(evil_key.strip() in content for content in seen), "her public key reached sa.pub"


async def test_a_ca_planted_before_the_clusterpki_is_adopted_and_never_rotated(api, namespace, mallory, operator):
    key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    planted = certificates.create_ca("kubernetes", key, timedelta(days=3650), times.now())
    assert await mallory.create("secrets", {"metadata": {"name": "cp-ca", "labels": {
        "pki.clusterpki.dev/cluster-pki": "cp", "pki.clusterpki.dev/component": "ca",
        "app.kubernetes.io/managed-by": "clusterpki"}}, "type": "kubernetes.io/tls", "data": {
        "tls.crt": b64(planted.public_bytes(serialization.Encoding.PEM)), "tls.key": b64(keys.private_pem(key))}}) == 201
    await asyncio.sleep(1.1)  # made a second before the ClusterPKI, in the apiserver's clock
    await api.apply_pki(pki("cp", namespace))
    obj = await api.ready(namespace, "cp")
    assert obj["status"]["record"]["adopted"] == ["ca"]
    await api.wait_for(lambda: api.has_event(namespace, "Adopted", "Adopted the ca CA brought in Secret cp-ca"),
                       what="the Adopted Event")
    await api.patch("clusterpkis", "cp", {"metadata": {"annotations": {"pki.clusterpki.dev/rotate-ca": "ca"}}},
                    namespace)
    await api.wait_for(lambda: api.has_event(namespace, "RotationRefused", kind="Warning"), what="RotationRefused")


async def test_forged_reports_move_nothing_and_agents_read_only_their_member_s(
        api, namespace, mallory, agents, cluster, tmp_path):
    # The old report format, a ConfigMap, written by her: the operator does not read ConfigMaps at all.
    assert await mallory.create("configmaps", {"metadata": {"name": "cp-consumer-m0", "labels": {
        "pki.clusterpki.dev/cluster-pki": "cp", "app.kubernetes.io/managed-by": "clusterpki-agent"}},
        "data": {"loaded": "{}", "health": json.dumps({"etcd": "http://169.254.169.254/"})}}) == 201
    assert await mallory.patch("leases", "cp-agent-m0", {"metadata": {"annotations": {"x": "y"}}}) == 403
    m0 = Api.session_for(agents["m0"].kubeconfig)
    url, session = m0
    async with session:
        as_m0 = Api(url, session)
        async with session.get(url + as_m0.path("secrets", namespace, "cp-etcd-peer-m1")) as response:
            assert response.status == 403, "a member never reads another member's etcd keys"
        async with session.get(url + as_m0.path("secrets", namespace, "cp-etcd-peer-m0")) as response:
            assert response.status == 200
        async with session.get(url + as_m0.path("secrets", namespace)) as response:
            assert response.status == 403, "no agent lists Secrets"
        async with session.put(url + as_m0.path("leases", namespace, "cp-agent-m1"), json={}) as response:
            assert response.status == 403, "an agent writes its own report only"
        async with session.post(url + as_m0.path("configmaps", namespace), json={"metadata": {"name": "z"}}) as r:
            assert r.status == 403


async def test_a_report_that_stops_counts_no_more_and_says_so(api, namespace, agents):
    await agents["m1"].stop(kill=True)
    await api.wait_for(lambda: api.has_event(namespace, "ConsumerStale", "The agent of member m1 stopped reporting",
                                             "Warning"), 30, "the ConsumerStale Event")
    entries = (await api.get("clusterpkis", "cp", namespace))["status"]["consumers"]
    assert {e["name"].partition("/")[0] for e in entries} == {"m0"}
    await rotate_to(api, namespace, "front-proxy-ca", "Completed")


async def test_an_agent_checks_everything_before_it_writes(api, namespace, agents, cluster, tmp_path):
    probe = AgentProcess("m0", tmp_path / "probe", agents["m0"].kubeconfig, namespace)
    cases = [
        (("--member", "cp-9"), "etcd member 'cp-9' is not in spec.etcd.members (m0, m1)"),
        (("--health", "etcd=https://169.254.169.254/health"), "169.254.169.254 is not an address of member m0"),
    ]
    for extra, words in cases:
        result = await _run(probe, *extra)
        assert result[0] != 0 and words in result[2] and result[2].count("\n") == 1, result
        assert not probe.dir.exists() or not any(probe.dir.iterdir())
    stranger = AgentProcess("m1", tmp_path / "stranger", agents["m0"].kubeconfig, namespace)
    code, _, err = await _run(stranger)
    assert code != 0 and err.count("\n") == 1, err
    assert "this agent may not get secrets " in err and "not those of member m1's agent" in err, err
    elsewhere = AgentProcess("m0", tmp_path / "elsewhere", agents["m0"].kubeconfig, "nowhere")
    code, _, err = await _run(elsewhere)
    assert code != 0 and "cannot read ClusterPKI nowhere/cp" in err and "HTTP 403" in err and err.count("\n") == 1
    missing = AgentProcess("m0", tmp_path / "missing", cluster.kubeconfig, namespace)
    code, _, err = await _run_named(missing, "nope")
    assert code != 0 and err == f"clusterpki: error: ClusterPKI {namespace}/nope does not exist\n", err
    for agent in (probe, stranger, elsewhere, missing):
        assert not agent.dir.exists() or not any(agent.dir.iterdir()), "nothing is written before the checks"


async def test_a_directory_of_another_pki_is_refused_unless_replaced(api, namespace, agents, tmp_path):
    other = tmp_path / "other"
    from tests.helpers import document, render
    assert render(tmp_path, other, document("other", **MEMBERS), "--etcd-member", "m0") == 0
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    stranger = AgentProcess("m0", tmp_path / "n", agents["m0"].kubeconfig, namespace)
    stranger.dir = other
    code, _, err = await _run(stranger)
    assert code != 0 and "holds a PKI that ClusterPKI" in err and "pki/ca.crt holds ca " in err, err
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before, "nothing was touched"
    await stranger.start("--replace")
    try:
        issued = cert_of(await api.get("secrets", "cp-ca", namespace))
        await api.wait_for(lambda: (other / "pki/ca.crt").read_bytes() != before[other / "pki/ca.crt"], 20,
                           "the files replaced")
        assert x509.load_pem_x509_certificates((other / "pki/ca.crt").read_bytes())[0] == issued
    finally:
        await stranger.stop()


async def _run_named(agent: AgentProcess, name: str) -> tuple[int, str, str]:
    return await _run(agent, argv=[a if a != "cp" else name for a in agent.args()])


async def _run(agent: AgentProcess, *extra: str, argv: list[str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *(argv or agent.args(*extra)), cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": str(agent.kubeconfig)})
    try:
        out, err = await asyncio.wait_for(process.communicate(), 30)
    except asyncio.TimeoutError:
        process.kill()
        raise
    return process.returncode, out.decode(), err.decode()

