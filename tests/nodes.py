"""Real kubelets v1.24 from ``../shared/k8s/node.sh``, each with its own containerd on a loopback address.

A test starts one with :meth:`Kubelet.up` and a bootstrap token from :func:`bootstrap_token`, as
``kubeadm join`` would, and reads what the kubelet holds from the node's own ``/var/lib/kubelet``.
Addresses are 127.0.3.x, distinct per xdist worker: the kubelets of both workers share this host's
network, and each listens on its address's port 10250.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import yaml
from cryptography import x509

from tests.controlplane import ControlPlane, harness
from tests.helpers import REPO

_NEXT = itertools.count(1)


def log_time(stamp: str) -> float:
    """Epoch seconds of an agent's log time stamp (``[%(asctime)s]``, the host's local time)."""
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


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

    def restarts(self) -> list[float]:
        """When ``node_agent`` restarted this node's kubelet (epoch seconds), from its log."""
        path = self.directory / "node-agent.log"
        said = path.read_text() if path.exists() else ""
        return [log_time(line[1:24]) for line in said.splitlines() if "restarting the kubelet" in line]

    def signal(self, number: int) -> None:
        """Signal the kubelet process (SIGSTOP: it stops updating its Node; SIGCONT: it goes on)."""
        listed = subprocess.run(["bash", str(node_sh()), "ps", str(self.directory)], capture_output=True, text=True,
                                timeout=30).stdout
        pids = [int(line.split()[0]) for line in listed.splitlines() if "/kubelet --config" in line]
        assert pids, f"no kubelet among {listed}"
        for pid in pids:
            os.kill(pid, number)


def _kubectl(admin: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", f"--kubeconfig={admin}", "--request-timeout=10s", *args], capture_output=True,
                          text=True, timeout=60)


def reached(admin: Path, node: str) -> bool:
    """The apiserver reaches the kubelet (its apiserver-kubelet-client against the kubelet's client CA)."""
    return _kubectl(admin, "get", "--raw", f"/api/v1/nodes/{node}/proxy/healthz").stdout == "ok"


def node_agent(node: Kubelet, namespace: str, name: str) -> subprocess.Popen:
    """``clusterpki node-agent`` inside the node's mount and pid namespaces (its /etc/kubernetes,
    /var/lib/kubelet and processes), with the node's own kubelet.conf; it restarts the kubelet as its
    systemd unit would (stopped from inside the node, the node starts it again 5 s later)."""
    script = node.directory / "restart-kubelet.sh"
    script.write_text("set -e\npid=$(pgrep -f '/kubelet --config' | head -1)\nkill \"$pid\"\n"
                      "while kill -0 \"$pid\" 2>/dev/null; do sleep 0.2; done\n")
    listed = subprocess.run(["bash", str(node_sh()), "ps", str(node.directory)], capture_output=True, text=True,
                            timeout=30).stdout
    pid = next(line.split()[0] for line in listed.splitlines() if "/kubelet --config" in line)
    return subprocess.Popen(
        ["nsenter", "-t", pid, "-m", "-p", "--", sys.executable, "-m", "clusterpki", "node-agent", "-n", namespace, name,
         "--node", node.name, "--restart-command", f"bash {script}", "--health", f"http://{node.ip}:10248/healthz",
         "--healthy-for", "2", "--resync", "2"],
        cwd=REPO, stdout=open(node.directory / "node-agent.log", "ab"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(REPO / "operator")})


class Seen(NamedTuple):
    """One Node as a watch saw it: when, and its Ready condition as its kubelet (or the node controller) set it."""
    at: float
    node: str
    status: str
    reason: str
    since: float  # the condition's lastTransitionTime
    message: str


_READY = '{.status.conditions[?(@.type=="Ready")].'
_SEEN = ('jsonpath={.metadata.name}{"|"}' + _READY + 'status}{"|"}' + _READY + 'reason}{"|"}'
         + _READY + 'lastTransitionTime}{"|"}' + _READY + 'message}{"\\n"}')  # tabs: kubectl -w aligns them


def _seen(line: str) -> Seen | None:
    """What one line of the watch says; None when it is not a Node as ``_SEEN`` prints it."""
    fields = line.rstrip("\n").split("|", 4)
    if len(fields) != 5 or not fields[0]:
        return None
    name, status, reason, since, message = fields
    when = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp() if since else 0.0
    return Seen(time.time(), name, status, reason, when, message)


class NodeWatch(threading.Thread):
    """A watch of Nodes (``kubectl get nodes -w``, started again whenever the one apiserver restarts), and
    the node Leases' renewTimes, looked at every 5 s."""

    def __init__(self, admin: Path) -> None:
        super().__init__(daemon=True)
        self.admin, self.stopped = admin, threading.Event()
        self.seen: list[Seen] = []
        self.unreadable: list[str] = []  # lines of the watch that are not a Node as _SEEN prints it
        self.renewals: dict[str, set[str]] = {}
        self.process: subprocess.Popen | None = None

    def run(self) -> None:
        leases = threading.Thread(target=self._leases, daemon=True)
        leases.start()
        while not self.stopped.is_set():
            self.process = subprocess.Popen(
                ["kubectl", f"--kubeconfig={self.admin}", "get", "nodes", "-w", "-o", _SEEN],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            for line in self.process.stdout:
                seen = _seen(line)
                if seen is None:
                    self.unreadable.append(line)
                else:
                    self.seen.append(seen)
            self.process.wait()
            self.stopped.wait(1)
        leases.join()

    def _leases(self) -> None:
        while not self.stopped.wait(5):
            found = _kubectl(self.admin, "-n", "kube-node-lease", "get", "leases", "-o", "json")
            if found.returncode == 0:
                for lease in json.loads(found.stdout)["items"]:
                    self.renewals.setdefault(lease["metadata"]["name"], set()).add(lease["spec"].get("renewTime"))

    def not_ready_but_after_own_restart(self, nodes: list[Kubelet], within: float = 30) -> list[Seen]:
        """What the watch saw of the nodes that was not Ready, but for what a kubelet v1.24 reports of
        itself as it starts ("container runtime status check may not have completed yet": False,
        KubeletNotReady, a second or two): such a condition is excused when the kubelet set it (its
        lastTransitionTime) within ``within`` seconds of its node agent restarting it. The time the watch
        saw it is no measure: after an apiserver restart the watch lists again what the kubelets posted
        meanwhile. An Unknown (the node controller lost the node) is never excused."""
        restarted = {node.name: node.restarts() for node in nodes}
        assert not self.unreadable, f"the watch printed what is not a Node: {self.unreadable[:3]}"
        assert restarted.keys() <= {seen.node for seen in self.seen}, "the watch saw every node"
        return [seen for seen in self.seen
                if seen.node in restarted and seen.status != "True"
                and not (seen.status == "False" and seen.reason == "KubeletNotReady"
                         and any(r - 1 <= seen.since <= r + within for r in restarted[seen.node]))]

    def stop(self) -> None:
        self.stopped.set()
        if self.process is not None:
            self.process.terminate()
        self.join(timeout=30)
