"""What the proofs on real components share: the agent's credentials as the manifests give them, TLS
contexts from kubeadm's files, and a client load that records every request's outcome.

The clients:
- ``admin`` re-reads admin.conf before each request (a client that follows its kubeconfig) and reads
  the default Namespace, a quorum read through etcd;
- ``token`` presents a ServiceAccount token minted before any rotation, and trusts pki/ca.crt;
- ``front-proxy`` authenticates as the front proxy (requestheader), with the front-proxy-client pair on disk.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from tests.helpers import REPO

def following_the_ca(kubeconfig: Path, ca_file: Path) -> Path:
    """The kubeconfig with its cluster's CA read from ``ca_file`` (as a pod reads its projected ca.crt)."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"].pop("certificate-authority-data", None)
        cluster["cluster"]["certificate-authority"] = str(ca_file)
    kubeconfig.write_text(yaml.safe_dump(config))
    return kubeconfig


def bin_dir() -> Path:
    return next(p.parent for p in Path.home().glob(".cache/clusterpki-k8s/*/kube-apiserver"))


def agent_kubeconfigs(cluster, body: dict, directory: Path) -> dict[str, Path]:
    """Each member's agent credentials, as a user gets them: the objects ``clusterpki agent-manifests``
    prints for the ClusterPKI ``body`` (its DaemonSets left out: the tests run the agents as processes),
    applied with kubectl, and a token of each member's own ServiceAccount."""
    namespace = body["metadata"]["namespace"]
    spec_file = directory / "clusterpki.yaml"
    spec_file.write_text(yaml.safe_dump(body))
    printed = subprocess.run([sys.executable, "-m", "clusterpki", "agent-manifests", "-f", str(spec_file), "-n",
                              namespace], capture_output=True, text=True, check=True, cwd=REPO).stdout
    documents = [d for d in yaml.safe_load_all(printed) if d["kind"] != "DaemonSet"]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))
    accounts = [d["metadata"]["name"] for d in documents if d["kind"] == "ServiceAccount"]
    prefix = f"clusterpki-agent-{body['metadata']['name']}-"
    return {account.removeprefix(prefix): cluster.token_kubeconfig(directory / f"{account}.kubeconfig",
                                                                 namespace=namespace, account=account)
            for account in accounts}


def context(ca: bytes, cert: bytes | None = None, key: bytes | None = None) -> ssl.SSLContext:
    made = ssl.create_default_context(cadata=ca.decode())
    if cert is not None:
        with tempfile.NamedTemporaryFile("wb") as c, tempfile.NamedTemporaryFile("wb") as k:
            c.write(cert), k.write(key)
            c.flush(), k.flush()
            made.load_cert_chain(c.name, k.name)
    return made


def admin_context(directory: Path) -> ssl.SSLContext:
    config = yaml.safe_load((directory / "admin.conf").read_text())
    user, cluster = config["users"][0]["user"], config["clusters"][0]["cluster"]
    return context(base64.b64decode(cluster["certificate-authority-data"]),
                   base64.b64decode(user["client-certificate-data"]), base64.b64decode(user["client-key-data"]))


# What a restart of an etcd member costs requests by itself, measured with ``python bench/etcd_restarts.py``
# on etcd 3.4.23 with no PKI change at all (about 1 request in 5,000 during 6 restarts, 8 busy clients):
# - SIGTERM closes the client listener and etcd stops its gRPC server at once, before its HTTP server,
#   which carries gRPC on a TLS client port (etcd 3.5 too, unless --listen-client-http-urls moves HTTP
#   off it), has drained: requests in flight on that member then, within 0.05 s, end in an empty HTTP 200
#   or a stream without trailers, which the apiserver's etcd client does not retry (etcd-io/etcd#17790);
# - a leader that stops hands leadership over 7 s later, and writes in flight then time out.
# SIGKILL fails more. A PKI tool cannot avoid them, so the proof counts them apart, only inside an etcd
# restart, and fails on every other error.
ETCD_RESTART_ERRORS = ("malformed header: missing HTTP content-type", "server closed the stream without sending trailers",
                       "possibly due to previous leader failure", "etcdserver: leader changed")


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
                    return admin_context(self.directory), {}
                if client == "token":
                    return context((pki / "ca.crt").read_bytes()), {"Authorization": f"Bearer {self.token}"}
                return context((pki / "ca.crt").read_bytes(), (pki / "front-proxy-client.crt").read_bytes(),
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
                tls, headers = await asyncio.to_thread(self._setup, client)
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session:
                    path = "/api/v1/namespaces/default" if client == "admin" else "/api"
                    async with session.get(f"{self.url}{path}", headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=5)) as response:
                        if response.status != 200:
                            error = f"HTTP {response.status}: {(await response.text())[:200]}"
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            self.outcomes[client].append((time.time(), error))
            await asyncio.sleep(0.1)

    async def run(self) -> None:
        await asyncio.gather(*(self._client(c) for c in self.outcomes))

    def failures(self) -> list[tuple[str, float, str]]:
        return [(client, at, error) for client, outcomes in self.outcomes.items() for at, error in outcomes if error]

    def failures_but_etcds_own(self, restarts: list[tuple[float, float]]) -> tuple[list, list]:
        """The failures split in two: all those that must not happen, and those an etcd member's restart
        causes by itself (ETCD_RESTART_ERRORS, within one of the ``restarts``: (started, ended))."""
        def etcds_own(at: float, error: str) -> bool:
            return any(e in error for e in ETCD_RESTART_ERRORS) and any(s <= at <= end + 1 for s, end in restarts)
        own = [f for f in self.failures() if etcds_own(f[1], f[2])]
        return [f for f in self.failures() if f not in own], own

    def served_since(self, moment: float) -> bool:
        """Whether every client has been served since ``moment``."""
        return all(any(at > moment and error is None for at, error in outcomes) for outcomes in self.outcomes.values())


async def stop_watching(watch, load: Load | None, load_task: asyncio.Task | None,
                        node_agents: list[subprocess.Popen]) -> None:
    """The end of a proof with nodes: the watch of Nodes (a ``tests.nodes.NodeWatch``), the clients, and
    the node agents stopped, each only if it was started."""
    if watch is not None:
        watch.stop()
    if load_task is not None:
        load.stopped.set()
        await load_task
    for process in node_agents:
        process.terminate()
        process.wait(timeout=30)
