"""The proof on real components: etcd, kube-apiserver and kube-controller-manager run from the files
`clusterpki agent` writes, and are restarted by its command restarter, while clients keep calling
the apiserver through a renewal on request, automatic renewals, and rotations of ca, etcd-ca,
front-proxy-ca and sa. No request may fail, except while the single etcd or the single apiserver
restarts (the next issue's HA control plane removes that exception).

The clients:
- one re-reads admin.conf before each request (a client that follows its kubeconfig);
- one presents a ServiceAccount token minted before any rotation, and trusts pki/ca.crt;
- one authenticates as the front proxy (requestheader), with the front-proxy-client pair on disk.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from tests import consumers
from tests.controlplane import free_port_block
from tests.e2e.conftest import pki
from tests.helpers import REPO

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")
TARGETS = ("ca", "etcd-ca", "front-proxy-ca", "sa")
EXCUSED = ("etcd", "kube-apiserver")  # single instances: a request during their restart may fail
MARGIN = 1.0  # seconds around a restart in which a failure is counted as the restart's


def _bin_dir() -> Path:
    return next(p.parent for p in Path.home().glob(".cache/clusterpki-k8s/*/kube-apiserver"))


def _agent_kubeconfig(cluster, namespace: str, path: Path, pki_name: str = "cp") -> Path:
    """The agent's own ServiceAccount and namespaced Role, from manifests/agent/, edited for the
    ClusterPKI ``namespace/pki_name`` as its comment tells users to."""
    text = (REPO / "manifests/agent/agent.yaml").read_text().replace("example-restart-", f"{pki_name}-restart-")
    documents = [d for d in yaml.safe_load_all(text) if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    for document in documents:
        if document["kind"] != "ServiceAccount":
            document["metadata"]["namespace"] = namespace
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))
    return cluster.token_kubeconfig(path, namespace="clusterpki-system", account="clusterpki-agent")


def _context(ca: bytes, cert: bytes | None = None, key: bytes | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.decode())
    if cert is not None:
        with tempfile.NamedTemporaryFile("wb") as c, tempfile.NamedTemporaryFile("wb") as k:
            c.write(cert), k.write(key)
            c.flush(), k.flush()
            context.load_cert_chain(c.name, k.name)
    return context


def _admin(directory: Path) -> ssl.SSLContext:
    config = yaml.safe_load((directory / "admin.conf").read_text())
    user, cluster = config["users"][0]["user"], config["clusters"][0]["cluster"]
    return _context(base64.b64decode(cluster["certificate-authority-data"]),
                    base64.b64decode(user["client-certificate-data"]), base64.b64decode(user["client-key-data"]))


class Load:
    """Clients calling the apiserver until stopped; every outcome recorded with its time."""

    def __init__(self, directory: Path, url: str, token: str) -> None:
        self.directory, self.url, self.token = directory, url, token
        self.outcomes: dict[str, list[tuple[float, str | None]]] = {"admin": [], "token": [], "front-proxy": []}
        self.stopped = asyncio.Event()

    def _setup(self, client: str) -> tuple[ssl.SSLContext, dict]:
        pki = self.directory / "pki"
        for attempt in range(5):  # a pair read between the renames of its .crt and .key: read again
            try:
                if client == "admin":
                    return _admin(self.directory), {}
                if client == "token":
                    return _context((pki / "ca.crt").read_bytes()), {"Authorization": f"Bearer {self.token}"}
                return _context((pki / "ca.crt").read_bytes(), (pki / "front-proxy-client.crt").read_bytes(),
                                (pki / "front-proxy-client.key").read_bytes()), \
                    {"X-Remote-User": "alice", "X-Remote-Group": "system:authenticated"}
            except (ssl.SSLError, ValueError, OSError):
                if attempt == 4:
                    raise
                time.sleep(0.1)

    async def _client(self, client: str) -> None:
        while not self.stopped.is_set():
            error = None
            try:
                context, headers = await asyncio.to_thread(self._setup, client)
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
                    async with session.get(f"{self.url}/api", headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=5)) as response:
                        if response.status != 200:
                            error = f"HTTP {response.status}: {(await response.text())[:200]}"
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.outcomes[client].append((time.time(), error))
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        await asyncio.gather(*(self._client(c) for c in self.outcomes))

    def failures(self, restarts: list[tuple[str, float, float]]) -> list[tuple[str, float, str]]:
        windows = [(s - MARGIN, e + MARGIN) for c, s, e in restarts if c in EXCUSED]
        return [(client, at, error) for client, outcomes in self.outcomes.items() for at, error in outcomes
                if error and not any(s <= at <= e for s, e in windows)]


async def _consumers_current(api, namespace: str, name: str, timeout: float = 120) -> dict:
    async def probe():
        obj = await api.get("clusterpkis", name, namespace)
        status = (obj or {}).get("status") or {}
        entries = status.get("consumers") or []
        return obj if len(entries) == len(COMPONENTS) and all(e["current"] for e in entries) else None
    return await api.wait_for(probe, timeout=timeout, what="every consumer running the current Secrets")


async def test_renewals_and_rotations_on_real_components(cluster, operator, api, namespace, tmp_path):
    base = free_port_block(4)
    etcd_port, peer_port, api_port = base, base + 1, base + 2
    directory, state = tmp_path / "kubernetes", tmp_path / "state"
    directory.mkdir()
    state.mkdir()
    (state / "commands.json").write_text(json.dumps(
        consumers.commands(directory / "pki", _bin_dir(), state, etcd_port, peer_port, api_port)))
    (state / "config.json").write_text(json.dumps({"pki": str(directory / "pki"), "etcd_port": etcd_port,
                                                   "api_port": api_port}))
    body = pki("cp", namespace, controlPlaneEndpoint=f"127.0.0.1:{api_port}",
               etcd={"members": [{"name": "m0", "ips": ["127.0.0.1"]}]},
               validity={"certificate": "10m"}, renewBefore="8m")
    body["metadata"]["annotations"] = {"pki.clusterpki.dev/rotate-ca-grace": "2s",
                                       "pki.clusterpki.dev/max-token-lifetime": "1h"}
    await api.apply_pki(body)
    await api.ready(namespace, "cp")

    kubeconfig = _agent_kubeconfig(cluster, namespace, tmp_path / "agent.kubeconfig")
    restart = f"{sys.executable} -m tests.consumers restart \"$CLUSTERPKI_COMPONENT\" {state}"
    agent_log = open(tmp_path / "agent.log", "wb")
    agent = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "clusterpki"), "agent", "-n", namespace, "cp", "--dir", str(directory),
        "--member", "m0", "--agent-name", "node-0", *[a for c in COMPONENTS for a in ("--component", c)],
        "--restart", "command", "--restart-command", restart, cwd=REPO, stdout=agent_log, stderr=agent_log,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    load_task = None
    try:
        await _consumers_current(api, namespace, "cp")
        url = f"https://127.0.0.1:{api_port}"
        context = _admin(directory)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as admin:
            async def minted():
                async with admin.post(f"{url}/api/v1/namespaces/default/serviceaccounts/default/token",
                                      json={"spec": {"expirationSeconds": 3600}}) as response:
                    return (await response.json())["status"]["token"] if response.status == 201 else None
            token = await api.wait_for(minted, timeout=60, what="a token of default/default")
        load = Load(directory, url, token)
        load_task = asyncio.create_task(load.run())
        await asyncio.sleep(2)

        before = await api.serials(namespace, "cp")
        await api.patch("clusterpkis", "cp", {"metadata": {"annotations": {
            "pki.clusterpki.dev/renew": "@request-1"}}}, namespace)
        await api.wait_for(lambda: _renewed(api, namespace, before), timeout=60, what="every leaf renewed")
        await _consumers_current(api, namespace, "cp")

        for index, target in enumerate(TARGETS):
            value = f"{target}@proof-{index}"
            await api.patch("clusterpkis", "cp", {"metadata": {"annotations": {
                "pki.clusterpki.dev/rotate-ca": value}}}, namespace)

            async def completed(value=value):
                rotation = ((await api.get("clusterpkis", "cp", namespace)).get("status") or {}).get("caRotation") or {}
                return rotation if rotation.get("request") == value and rotation.get("phase") == "Completed" else None
            await api.wait_for(completed, timeout=180, what=f"the rotation of {target} completed")
            await _consumers_current(api, namespace, "cp")

        events = {reason for _, reason, _ in await api.events(namespace)}
        assert "Renewed" in events or "Reissued" in events

        def settled():
            last = max(e for _, _, e in consumers.windows(state))
            return all(any(at > last and error is None for at, error in outcomes)
                       for outcomes in load.outcomes.values())
        await api.wait_for(settled, timeout=60, what="every client served after the last restart")
    finally:
        if load_task is not None:
            load.stopped.set()
            await load_task
        agent.terminate()
        await agent.wait()
        for component in reversed(COMPONENTS):
            consumers.stop(component, state)

    restarts = consumers.windows(state)
    assert {c for c, _, _ in restarts} == set(COMPONENTS)
    failures = load.failures(restarts)
    assert failures == [], failures[:10]
    log = (tmp_path / "agent.log").read_text()
    assert "PRIVATE KEY" not in log


async def _renewed(api, namespace: str, before: dict[str, int]) -> bool:
    after = await api.serials(namespace, "cp")
    leaves = [c for c in before if c not in ("ca", "etcd-ca", "front-proxy-ca", "sa")]
    return all(after.get(c) != before[c] for c in leaves)
