"""A real, disposable control plane for tests and benches, as controller-runtime's envtest provides one.

:class:`ControlPlane` boots ``../shared/k8s/cluster.sh`` (kube-apiserver and kube-controller-manager
v1.24 over Debian's etcd, two registered Nodes) on free loopback ports and tears it down again.
``CLUSTERPKI_K8S_HARNESS`` names another ``cluster.sh``; ``K8S_BIN`` (read by ``cluster.sh``) names
other binaries. ``CLUSTERPKI_E2E_KUBECONFIG`` names an external disposable cluster instead, and takes
precedence over booting one.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HARNESS_ENV = "CLUSTERPKI_K8S_HARNESS"
EXTERNAL_ENV = "CLUSTERPKI_E2E_KUBECONFIG"
# The README's install command (tests/e2e/test_install.py checks that the README still says so).
INSTALL = "kubectl apply -f crds/ -f manifests/"
INSTALL_KUSTOMIZE = "kubectl apply -k manifests/"


def harness() -> Path | None:
    """The ``cluster.sh`` to boot control planes with, or None when there is none here."""
    path = Path(os.environ.get(HARNESS_ENV) or REPO.parent / "shared" / "k8s" / "cluster.sh")
    return path if path.is_file() else None


def unavailable() -> str | None:
    """Why no real control plane can be had, or None when one can (external or booted)."""
    if os.environ.get(EXTERNAL_ENV) or harness() is not None:
        return None
    return (f"no real control plane: set {EXTERNAL_ENV} to a disposable cluster's kubeconfig, or provide "
            f"{REPO.parent / 'shared/k8s/cluster.sh'} (or {HARNESS_ENV})")


def free_port_block(size: int = 3) -> int:
    """A loopback port whose next ``size - 1`` ports are free too (cluster.sh uses PORT..PORT+2), below
    the kernel's ephemeral range: a port in it may become the source port of any outgoing connection
    between this check and the listener's bind (HAProxy found its port taken so in the HA proof)."""
    for _ in range(200):
        port = random.randint(10000, _ephemeral_start() - size)
        sockets = []
        try:
            for offset in range(size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no block of free loopback ports")


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class ControlPlane:
    """One control plane: booted from the harness into ``directory``, or an external one."""

    def __init__(self, kubeconfig: Path, directory: Path | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.directory = directory  # None for an external cluster, which is never torn down

    @classmethod
    def boot(cls, directory: Path) -> ControlPlane:
        script = harness()
        if script is None:
            raise RuntimeError(unavailable())
        directory.mkdir(parents=True, exist_ok=True)
        # --bootstrap-tokens: real kubelets (tests/nodes.py) join it as kubeadm's workers do.
        command = ["bash", str(script), "up", str(directory), str(free_port_block()), "--bootstrap-tokens"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            subprocess.run(["bash", str(script), "down", str(directory)], capture_output=True, timeout=60)
            logs = "".join(f"\n--- {p.name}:\n{p.read_text()[-2000:]}" for p in sorted(directory.glob("*.log")))
            raise RuntimeError(f"the control plane did not boot: {result.stderr.strip()}{logs}")
        return cls(Path(result.stdout.strip().splitlines()[-1]), directory)

    @classmethod
    def external(cls) -> ControlPlane | None:
        path = os.environ.get(EXTERNAL_ENV)
        return cls(Path(path)) if path else None

    @property
    def booted(self) -> bool:
        return self.directory is not None

    def signer(self, ca_crt: Path, ca_key: Path) -> None:
        """Start kube-controller-manager's csrsigning with that CA (a booted control plane only)."""
        assert self.directory is not None, "only a booted control plane can start a signer"
        subprocess.run(["bash", str(harness()), "signer", str(self.directory), str(ca_crt), str(ca_key)],
                       check=True, capture_output=True, timeout=60)

    def down(self) -> None:
        if self.directory is not None:
            subprocess.run(["bash", str(harness()), "down", str(self.directory)], capture_output=True, timeout=120)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(["kubectl", f"--kubeconfig={self.kubeconfig}", *args], input=stdin,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def install(self, command: str = INSTALL) -> subprocess.CompletedProcess:
        """A README install command, exactly as a user types it in a checkout."""
        return subprocess.run(command, shell=True, cwd=REPO, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})

    def token_kubeconfig(self, path: Path, namespace: str = "clusterpki-system", account: str = "clusterpki",
                         duration: str = "4h") -> Path:
        """A kubeconfig that authenticates with a token of a ServiceAccount (``kubectl create token``):
        neither Kopf nor the Kubernetes client honour kubeconfig impersonation, so a real token it is."""
        token = self.kubectl("-n", namespace, "create", "token", account, f"--duration={duration}").stdout.strip()
        admin = json.loads(self.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": account,
            "clusters": [{"name": "cluster", "cluster": admin["clusters"][0]["cluster"]}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": account, "context": {"cluster": "cluster", "user": account}}],
        }))
        path.chmod(0o600)
        return path

    def requests(self) -> dict[tuple[str, str, str], float]:
        """The apiserver's own count of the requests it served so far, from ``apiserver_request_total``,
        by (verb, resource, subresource). Verbs as the apiserver names them: GET, LIST, WATCH, POST,
        PUT, PATCH, DELETE..."""
        from prometheus_client.parser import text_string_to_metric_families

        text = self.kubectl("get", "--raw", "/metrics").stdout
        counts: dict[tuple[str, str, str], float] = {}
        for family in text_string_to_metric_families(text):
            if family.name != "apiserver_request":
                continue
            for sample in family.samples:
                labels = sample.labels
                if sample.name.endswith("_total"):
                    key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
                    counts[key] = counts.get(key, 0) + sample.value
        return counts


WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY")


def difference(before: dict, after: dict) -> dict:
    """What changed between two readings of :meth:`ControlPlane.requests`, without the zeros."""
    return {key: after[key] - before.get(key, 0) for key in after if after[key] != before.get(key, 0)}
