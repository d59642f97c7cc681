"""Real kubelets v1.24 from ``../shared/k8s/node.sh``, each with its own containerd on a loopback address.

A test starts one with :meth:`Kubelet.up` and a bootstrap token from :func:`bootstrap_token`, as
``kubeadm join`` would, and reads what the kubelet holds from the node's own ``/var/lib/kubelet``.
Addresses are 127.0.3.x, distinct per xdist worker: the kubelets of both workers share this host's
network, and each listens on its address's port 10250.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import yaml
from cryptography import x509

from tests.controlplane import ControlPlane, harness

_NEXT = itertools.count(1)


def node_sh() -> Path:
    script = harness()
    assert script is not None, "no ../shared/k8s harness"
    return script.parent / "node.sh"


def next_address() -> str:
    """A loopback address no other kubelet of this test run uses."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return f"127.0.3.{worker * 50 + next(_NEXT)}"


def bootstrap_token(cluster: ControlPlane) -> str:
    """A bootstrap token as ``kubeadm token create`` makes one, *without* kubeadm's auto-approval
    bindings: kube-controller-manager's csrapproving then approves no kubelet CSR."""
    return token(cluster.kubeconfig)


def token(kubeconfig: Path, *options: str) -> str:
    """``node.sh token KUBECONFIG OPTIONS``. Its random token ID and secret are hex, put unquoted in
    YAML: one of digits alone (the ID, about one time in 16) is read as a number and the Secret is
    refused (seen in a full run). That is the harness's (../shared/k8s/node.sh); a new token is tried."""
    for _ in range(5):
        result = subprocess.run(["bash", str(node_sh()), "token", str(kubeconfig), *options], capture_output=True,
                                text=True, timeout=60)
        if result.returncode == 0:
            return result.stdout.strip().splitlines()[-1]
        if "cannot unmarshal number" not in result.stderr:
            break
    raise AssertionError(f"node.sh token failed: {result.stderr}")


def server_of(cluster: ControlPlane) -> str:
    return yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]


class Kubelet:
    """One node: ``directory`` is its root (``node.sh``'s DIR), ``name`` its Node, ``ip`` its address."""

    def __init__(self, directory: Path, name: str, ip: str) -> None:
        self.directory, self.name, self.ip = directory, name, ip

    def up(self, cluster: ControlPlane, token: str, wait: str = "none") -> None:
        assert cluster.directory is not None, "kubelets join a booted control plane (its CA is in hpki/)"
        result = subprocess.run(
            ["bash", str(node_sh()), "up", str(self.directory), self.name, self.ip, server_of(cluster),
             str(cluster.directory / "hpki" / "ca.crt"), "--bootstrap-token", token, "--wait", wait],
            capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"node.sh up failed: {result.stderr}\n{self.log()[-3000:]}"

    def down(self) -> None:
        subprocess.run(["bash", str(node_sh()), "down", str(self.directory)], capture_output=True, timeout=120)

    def log(self) -> str:
        path = self.directory / "kubelet.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _pki(self, name: str) -> Path:
        """A file of the node's /var/lib/kubelet/pki, as the host sees it (the kubelet's ``*-current.pem``
        links are absolute inside the node; the node agent's are relative)."""
        path = self.directory / "root" / "var" / "lib" / "kubelet" / "pki" / name
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        return self.directory / "root" / target.lstrip("/") if target.startswith("/") else path.parent / target

    def _current(self, kind: str) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificates(self._pki(f"kubelet-{kind}-current.pem").read_bytes())[0]
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def client_certificate(self) -> x509.Certificate | None:
        """The client certificate the kubelet uses now (``kubelet-client-current.pem``)."""
        return self._current("client")

    def serving_certificate(self) -> x509.Certificate | None:
        return self._current("server")

    def client_pem(self) -> Path:
        """Its client certificate and key (one file), as whoever roots the node has them."""
        return self._pki("kubelet-client-current.pem")

    def signal(self, number: int) -> None:
        """Signal the kubelet process (SIGSTOP: it stops updating its Node; SIGCONT: it goes on)."""
        listed = subprocess.run(["bash", str(node_sh()), "ps", str(self.directory)], capture_output=True, text=True,
                                timeout=30).stdout
        pids = [int(line.split()[0]) for line in listed.splitlines() if "/kubelet --config" in line]
        assert pids, f"no kubelet among {listed}"
        for pid in pids:
            os.kill(pid, number)
