"""A ``ca`` rotation with a real kubelet on a worker node, on a control plane the operator itself runs in.

The control plane is a kubeadm one's, run from files: ``clusterpki render`` writes the control-plane
node's ``/etc/kubernetes``, and etcd, kube-apiserver and kube-controller-manager start from it with
kubeadm v1.24's flags (``tests/consumers.py``: the Node authorizer, NodeRestriction, bootstrap tokens,
kube-controller-manager signing with ``pki/ca.crt``). It is taken over as a user would: the README's
install, ``clusterpki import``, the operator as its ServiceAccount with ``--csr-policy``, the
control-plane agent with its command restarter. A worker joins with a bootstrap token
(``../shared/k8s/node.sh``: a real kubelet v1.24 and containerd), and ``clusterpki node-agent`` runs in the
node's own mount namespace, as the node, restarting the kubelet as its systemd unit would.

Then ``rotate-ca=ca``. Required: the Node is Ready at every look and its Lease keeps being renewed; the
kubelet ends with a client certificate from the new CA and a kubelet.conf that trusts it; the apiserver
reaches the kubelet (``proxy/healthz``) after; the kubelet was restarted exactly twice; the operator's
status counted the node and held the phases for it. The operator and agents trust the apiserver through
``pki/ca.crt`` (as a pod through its projected ``ca.crt``) and follow it through the rotation.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from clusterpki.pki import certificates
from cryptography import x509

from tests import consumers, proof
from tests.controlplane import ControlPlane, free_port_block
from tests.helpers import REPO
from tests.nodes import Kubelet, next_address, node_sh
from tests.runners import OperatorProcess

NAMESPACE, NAME, MEMBER, NODE = "kube-system", "cluster", "cp0", "worker-1"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager")

# On the HA proof's worker, one after the other: the two heaviest proofs at once on two cores would
# time each other's restarts and health checks, not the PKI's.
pytestmark = [pytest.mark.skipif(shutil.which("nsenter") is None, reason="needs nsenter (util-linux)"),
              pytest.mark.xdist_group("ha-proof")]


def kubectl(admin: Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["kubectl", f"--kubeconfig={admin}", *args], input=stdin, capture_output=True, text=True,
                            timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result


def following_the_ca(kubeconfig: Path, ca_file: Path) -> Path:
    """The kubeconfig with its cluster's CA read from ``ca_file`` (as a pod reads its projected ca.crt)."""
    config = yaml.safe_load(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"].pop("certificate-authority-data", None)
        cluster["cluster"]["certificate-authority"] = str(ca_file)
    kubeconfig.write_text(yaml.safe_dump(config))
    return kubeconfig


class Watcher(threading.Thread):
    """Looks at the Node's Ready condition and its Lease every second, through admin.conf (re-read each
    time: the agent rewrites it in the rotation)."""

    def __init__(self, admin: Path) -> None:
        super().__init__(daemon=True)
        self.admin, self.stopped = admin, threading.Event()
        self.ready: list[tuple[float, str]] = []
        self.renewals: set[str] = set()

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            node = kubectl(self.admin, "get", "node", NODE, "-o", "json", check=False)
            if node.returncode == 0:
                status = next(c["status"] for c in json.loads(node.stdout)["status"]["conditions"] if c["type"] == "Ready")
                self.ready.append((time.time(), status))
            lease = kubectl(self.admin, "-n", "kube-node-lease", "get", "lease", NODE, "-o",
                            "jsonpath={.spec.renewTime}", check=False)
            if lease.returncode == 0:
                self.renewals.add(lease.stdout)


async def wait_for(probe, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(probe)
        if found:
            return found
        await asyncio.sleep(1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def status_of(admin: Path) -> dict:
    """The ClusterPKI's status; empty while the one apiserver restarts."""
    found = kubectl(admin, "-n", NAMESPACE, "get", "clusterpki", NAME, "-o", "json", check=False)
    return (json.loads(found.stdout).get("status") or {}) if found.returncode == 0 else {}


def start_control_plane(root: Path) -> tuple[Path, Path, dict]:
    base = free_port_block(5)
    etcd, api_port, kcm_port = {MEMBER: (base, base + 1)}, base + 2, base + 3
    directory, state = root / "cp" / "kubernetes", root / "cp" / "state"
    state.mkdir(parents=True)
    spec = {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI", "metadata": {"name": NAME},
            "spec": {"controlPlaneEndpoint": f"127.0.0.1:{api_port}",
                     "etcd": {"members": [{"name": MEMBER, "ips": ["127.0.0.1"]}]}}}
    (root / "clusterpki.yaml").write_text(yaml.safe_dump(spec))
    subprocess.run([sys.executable, "-m", "clusterpki", "render", "-f", str(root / "clusterpki.yaml"), "--out",
                    str(directory)], check=True, capture_output=True, cwd=REPO)
    commands = consumers.commands(directory / "pki", proof.bin_dir(), state, MEMBER, etcd, api_port, kcm_port)
    (state / "commands.json").write_text(json.dumps({c: commands[c] for c in COMPONENTS}))
    ports = {"kube-controller-manager": kcm_port}
    (state / "config.json").write_text(json.dumps({"pki": str(directory / "pki"), "etcd_port": etcd[MEMBER][0],
                                                   "api_port": api_port, "ports": ports}))
    for component in COMPONENTS:
        consumers.start(component, state)
    health = {"etcd": f"https://127.0.0.1:{etcd[MEMBER][0]}/health",
              "kube-apiserver": f"https://127.0.0.1:{api_port}/readyz",
              "kube-controller-manager": f"https://127.0.0.1:{kcm_port}/healthz"}
    return directory, state, health


def node_agent(node: Kubelet, restart_script: Path) -> subprocess.Popen:
    """``clusterpki node-agent`` inside the node's mount and pid namespaces (its /etc/kubernetes,
    /var/lib/kubelet and processes), with the node's own kubelet.conf."""
    listed = subprocess.run(["bash", str(node_sh()), "ps", str(node.directory)], capture_output=True, text=True,
                            timeout=30).stdout
    pid = next(line.split()[0] for line in listed.splitlines() if "/kubelet --config" in line)
    log = open(node.directory / "node-agent.log", "ab")
    return subprocess.Popen(
        ["nsenter", "-t", pid, "-m", "-p", "--", sys.executable, "-m", "clusterpki", "node-agent", "-n", NAMESPACE, NAME,
         "--node", NODE, "--restart-command", f"bash {restart_script}", "--health",
         f"http://{node.ip}:10248/healthz", "--healthy-for", "2", "--resync", "2"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO / "operator")})


def restart_script(node: Kubelet) -> Path:
    """Restart the kubelet as its systemd unit would: stop it (from inside the node's pid namespace);
    the node starts it again 5 s later."""
    script = node.directory / "restart-kubelet.sh"
    script.write_text("""set -e
pid=$(pgrep -f '/kubelet --config' | head -1)
kill "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
""")
    return script


async def test_a_worker_s_kubelet_stays_ready_through_a_ca_rotation(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="cpki-self-"))
    node = Kubelet(Path(tempfile.mkdtemp(prefix="cpki-node-")), NODE, next_address())
    directory, state, health = start_control_plane(root)
    admin = directory / "admin.conf"
    operator = agent = node_agent_process = watcher = None
    try:
        cluster = ControlPlane(admin)
        installed = cluster.install()
        assert installed.returncode == 0, installed.stderr
        subprocess.run([sys.executable, "-m", "clusterpki", "import", "-n", NAMESPACE, NAME, "--dir", str(directory)],
                       check=True, capture_output=True, cwd=REPO, env={**os.environ, "KUBECONFIG": str(admin)})
        kubectl(admin, "-n", NAMESPACE, "annotate", "clusterpki", NAME, "pki.clusterpki.dev/rotate-ca-grace=10s")
        # import takes 127.0.0.1 in etcd's certificate for kubeadm's default name, not the member's address;
        # here the member's address it is (its certificate holds it already: nothing is re-issued)
        kubectl(admin, "-n", NAMESPACE, "patch", "clusterpki", NAME, "--type=json", "-p",
                '[{"op": "add", "path": "/spec/etcd/members/0/ips", "value": ["127.0.0.1"]}]')
        operator = OperatorProcess(following_the_ca(cluster.token_kubeconfig(tmp_path / "operator.kubeconfig"),
                                                    directory / "pki" / "ca.crt"),
                                   tmp_path / "operator.log", "-n", NAMESPACE, "--csr-policy", f"{NAMESPACE}/{NAME}")
        await asyncio.to_thread(operator.start)
        await wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True"
                                   for c in status_of(admin).get("conditions") or []), 60, "the ClusterPKI Ready")

        body = json.loads(kubectl(admin, "-n", NAMESPACE, "get", "clusterpki", NAME, "-o", "json").stdout)
        credentials = proof.agent_kubeconfigs(cluster, body, tmp_path)
        restart = f"{sys.executable} -m tests.consumers restart \"$CLUSTERPKI_COMPONENT\" {state}"
        agent_log = open(state / "agent.log", "ab")
        agent = subprocess.Popen(
            [str(Path(sys.executable).parent / "clusterpki"), "agent", "-n", NAMESPACE, NAME, "--dir", str(directory),
             "--member", MEMBER, *[a for c in COMPONENTS for a in ("--component", c)],
             *[a for c, url in health.items() for a in ("--health", f"{c}={url}")], "--healthy-for", "1",
             "--restart-interval", "0", "--restart", "command", "--restart-command", restart],
            cwd=REPO, stdout=agent_log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "KUBECONFIG": str(following_the_ca(credentials[MEMBER], directory / "pki" / "ca.crt"))})

        token = subprocess.run(["bash", str(node_sh()), "token", str(admin), "--auto-approve"], capture_output=True,
                               text=True, timeout=60, check=True).stdout.strip().splitlines()[-1]
        joined = subprocess.run(["bash", str(node_sh()), "up", str(node.directory), NODE, node.ip,
                                 f"https://{health['kube-apiserver'].split('/')[2]}", str(directory / "pki" / "ca.crt"),
                                 "--bootstrap-token", token, "--wait", "ready"], capture_output=True, text=True,
                                timeout=240)
        assert joined.returncode == 0, f"{joined.stderr}\n{node.log()[-3000:]}"
        await wait_for(lambda: kubectl(admin, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/healthz",
                                       check=False).stdout == "ok", 90, "the apiserver reaching the kubelet")
        old_ca = x509.load_pem_x509_certificate((directory / "pki" / "ca.crt").read_bytes())

        await wait_for(lambda: status_of(admin).get("consumersCurrent") == f"{len(COMPONENTS)}/{len(COMPONENTS)}",
                       90, "the control-plane agent reporting")
        node_agent_process = node_agent(node, restart_script(node))
        await wait_for(lambda: status_of(admin).get("nodesCurrent") == "1/1", 90, "the node reporting")
        watcher = Watcher(admin)
        watcher.start()

        kubectl(admin, "-n", NAMESPACE, "annotate", "clusterpki", NAME, "pki.clusterpki.dev/rotate-ca=ca@node-proof")
        await wait_for(lambda: (status_of(admin).get("caRotation") or {}).get("phase") == "Completed", 480,
                       "the ca rotation Completed")
        await wait_for(lambda: status_of(admin).get("nodesCurrent") == "1/1", 60, "the node current")
        renewals_before = len(watcher.renewals)
        await asyncio.sleep(15)  # the node lives on after it: Ready, its Lease renewed
        watcher.stopped.set()
        watcher.join()

        assert watcher.ready and all(status == "True" for _, status in watcher.ready), \
            [r for r in watcher.ready if r[1] != "True"]
        assert len(watcher.renewals) > renewals_before, "the node's Lease was renewed after the rotation"
        new_ca = x509.load_pem_x509_certificate((directory / "pki" / "ca.crt").read_bytes())
        assert new_ca.serial_number != old_ca.serial_number, (state / "agent.log").read_text()[-3000:]
        client = node.client_certificate()
        assert client is not None and certificates.signed_by(client, new_ca), "the kubelet's client certificate"
        kubelet_conf = yaml.safe_load((node.directory / "root" / "etc" / "kubernetes" / "kubelet.conf").read_text())
        assert kubelet_conf["clusters"][0]["cluster"]["certificate-authority-data"]
        assert kubectl(admin, "get", "--raw", f"/api/v1/nodes/{NODE}/proxy/healthz").stdout == "ok"
        restarts = [(c, round(end - start, 1)) for c, start, end in consumers.windows(state)]
        print(f"control-plane restarts (component, seconds): {restarts}; kubelet restarts: 2; "
              f"Ready looks: {len(watcher.ready)}, all True")
        said = (node.directory / "node-agent.log").read_text()
        assert said.count("restarting the kubelet") == 2, said[-3000:]
        assert "PRIVATE KEY" not in said
        for component in COMPONENTS:
            fatal = [line for line in (state / f"{component}.log").read_text(errors="replace").splitlines()
                     if line.startswith("F1") or line.startswith("F0")]
            assert not fatal, f"{component} exited: {fatal[:3]}"
    finally:
        if watcher is not None:
            watcher.stopped.set()
        if node_agent_process is not None:
            node_agent_process.terminate()
            node_agent_process.wait(timeout=30)
        if agent is not None:  # its group: a restart it runs must not start a component after the stops below
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=30)
        node.down()
        if operator is not None:
            operator.stop()
        for component in reversed(COMPONENTS):
            consumers.stop(component, state)
    shutil.rmtree(root, ignore_errors=True)  # kept for a look when the test fails
    shutil.rmtree(node.directory, ignore_errors=True)
