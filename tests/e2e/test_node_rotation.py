"""A ``ca`` rotation with real kubelets on two worker nodes, on a control plane the operator itself runs in.

The control plane is a kubeadm one's, run from files: ``clusterpki render`` writes the control-plane
node's ``/etc/kubernetes``, and etcd, kube-apiserver and kube-controller-manager start from it with
kubeadm v1.24's flags (``tests/consumers.py``: the Node authorizer, NodeRestriction, bootstrap tokens,
kube-controller-manager signing with ``pki/ca.crt``). It is taken over as a user would: the README's
install, ``clusterpki import``, the operator as its ServiceAccount with ``--csr-policy``, the
control-plane agent with its command restarter. Two workers join with a bootstrap token
(``../shared/k8s/node.sh``: real kubelets v1.24 and containerd; the first runs a static pod), and a
``clusterpki node-agent`` runs in each node's own mount and pid namespaces, as the node, restarting the
kubelet as its systemd unit would.

Then ``rotate-ca=ca``. Required: every Node is Ready at every look and its Lease keeps being renewed;
each kubelet ends with a client certificate from the new CA and a kubelet.conf that trusts it alone;
the apiserver reaches each kubelet (``proxy/healthz``) and reads the static pod's logs after; each
kubelet was restarted exactly twice; the operator's status counted the nodes. The operator and agents trust the apiserver through
``pki/ca.crt`` (as a pod through its projected ``ca.crt``) and follow it through the rotation.
"""

from __future__ import annotations

import asyncio
import base64
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
from clusterpki.agent import restarters
from clusterpki.pki import certificates
from cryptography import x509

from tests import consumers, proof
from tests.controlplane import ControlPlane, free_port_block
from tests.helpers import REPO
from tests.nodes import Kubelet, next_address, node_sh, token
from tests.runners import OperatorProcess

NAMESPACE, NAME, MEMBER = "kube-system", "cluster", "cp0"
WORKERS = ("worker-1", "worker-2")
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
    """Looks at every worker's Ready condition and Lease every second, through admin.conf (re-read each
    time: the agent rewrites it in the rotation)."""

    def __init__(self, admin: Path) -> None:
        super().__init__(daemon=True)
        self.admin, self.stopped = admin, threading.Event()
        self.ready: dict[str, list[tuple[float, str]]] = {n: [] for n in WORKERS}
        self.renewals: dict[str, set[str]] = {n: set() for n in WORKERS}

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            for name in WORKERS:
                node = kubectl(self.admin, "get", "node", name, "-o", "json", check=False)
                if node.returncode == 0:
                    conditions = json.loads(node.stdout)["status"]["conditions"]
                    self.ready[name].append((time.time(), next(c["status"] for c in conditions if c["type"] == "Ready")))
                lease = kubectl(self.admin, "-n", "kube-node-lease", "get", "lease", name, "-o",
                                "jsonpath={.spec.renewTime}", check=False)
                if lease.returncode == 0:
                    self.renewals[name].add(lease.stdout)


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
         "--node", node.name, "--restart-command", f"bash {restart_script}", "--health",
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


STATIC_POD = """apiVersion: v1
kind: Pod
metadata:
  name: probe
  namespace: default
spec:
  hostNetwork: true
  containers:
  - name: probe
    image: registry.k8s.io/pause:3.7
"""


def join(node: Kubelet, server: str, ca: Path, token: str, static_pods: Path | None = None) -> None:
    extra = ["--static-pods", str(static_pods)] if static_pods else []
    joined = subprocess.run(["bash", str(node_sh()), "up", str(node.directory), node.name, node.ip, server, str(ca),
                             "--bootstrap-token", token, "--wait", "ready", *extra], capture_output=True, text=True,
                            timeout=240)
    assert joined.returncode == 0, f"{joined.stderr}\n{node.log()[-3000:]}"


def reached(admin: Path, node: str) -> bool:
    """The apiserver reaches the kubelet (its apiserver-kubelet-client against the kubelet's client CA)."""
    return kubectl(admin, "get", "--raw", f"/api/v1/nodes/{node}/proxy/healthz", check=False).stdout == "ok"


def logs_read(admin: Path) -> bool:
    """``kubectl logs`` of worker-1's static pod: the apiserver streams from the kubelet."""
    return kubectl(admin, "logs", f"probe-{WORKERS[0]}", check=False).returncode == 0


def probe_container(admin: Path) -> tuple[str, bool]:
    """The static pod's container, as its mirror pod says: its ID, and whether it is ready."""
    found = kubectl(admin, "get", "pod", f"probe-{WORKERS[0]}", "-o", "json", check=False)
    if found.returncode != 0:
        return "", False
    statuses = (json.loads(found.stdout).get("status") or {}).get("containerStatuses") or [{}]
    return statuses[0].get("containerID", ""), bool(statuses[0].get("ready"))


async def restarted_by_its_manifest(admin: Path, manifests: Path) -> float:
    """kubeadm's restart, as the agent's ``--restart static-pod`` makes it (a new annotation in the
    manifest), on a real kubelet: a new container runs, ready. Returns how long it took."""
    before, _ = await asyncio.to_thread(probe_container, admin)
    assert before, "the static pod runs"
    started = time.monotonic()
    await restarters.StaticPods(manifests).restart("probe")

    def recreated() -> bool:
        container, ready = probe_container(admin)
        return bool(container) and container != before and ready
    await wait_for(recreated, 90, "the static pod recreated by its kubelet")
    return time.monotonic() - started


async def test_workers_kubelets_stay_ready_through_a_ca_rotation(tmp_path):
    root = Path(tempfile.mkdtemp(prefix="cpki-self-"))
    workers = [Kubelet(Path(tempfile.mkdtemp(prefix="cpki-node-")), name, next_address()) for name in WORKERS]
    directory, state, health = start_control_plane(root)
    admin = directory / "admin.conf"
    operator = agent = watcher = None
    agents: list[subprocess.Popen] = []
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

        joining = token(admin, "--auto-approve")
        static = root / "static-pods"
        static.mkdir()
        (static / "probe.yaml").write_text(STATIC_POD)
        server = f"https://{health['kube-apiserver'].split('/')[2]}"
        for index, node in enumerate(workers):
            await asyncio.to_thread(join, node, server, directory / "pki" / "ca.crt", joining,
                                    static if index == 0 else None)
        for node in workers:
            await wait_for(lambda node=node: reached(admin, node.name), 90, f"the apiserver reaching {node.name}")
        await wait_for(lambda: logs_read(admin), 90, "the logs of a static pod of worker-1")
        old_ca = x509.load_pem_x509_certificate((directory / "pki" / "ca.crt").read_bytes())

        await wait_for(lambda: status_of(admin).get("consumersCurrent") == f"{len(COMPONENTS)}/{len(COMPONENTS)}",
                       90, "the control-plane agent reporting")
        agents = [node_agent(node, restart_script(node)) for node in workers]
        every = f"{len(workers)}/{len(workers)}"
        await wait_for(lambda: status_of(admin).get("nodesCurrent") == every, 90, "the nodes reporting")
        watcher = Watcher(admin)
        watcher.start()

        kubectl(admin, "-n", NAMESPACE, "annotate", "clusterpki", NAME, "pki.clusterpki.dev/rotate-ca=ca@node-proof")
        await wait_for(lambda: (status_of(admin).get("caRotation") or {}).get("phase") == "Completed", 480,
                       "the ca rotation Completed")
        await wait_for(lambda: status_of(admin).get("nodesCurrent") == every, 60, "the nodes current")
        renewals_before = {n: len(r) for n, r in watcher.renewals.items()}
        await asyncio.sleep(15)  # the nodes live on after it: Ready, their Leases renewed
        watcher.stopped.set()
        watcher.join()

        for node in workers:
            looks = watcher.ready[node.name]
            assert looks and all(status == "True" for _, status in looks), [r for r in looks if r[1] != "True"]
            assert len(watcher.renewals[node.name]) > renewals_before[node.name], f"{node.name}'s Lease renewed"
        new_ca = x509.load_pem_x509_certificate((directory / "pki" / "ca.crt").read_bytes())
        assert new_ca.serial_number != old_ca.serial_number, (state / "agent.log").read_text()[-3000:]
        for node in workers:
            client = node.client_certificate()
            assert client is not None and certificates.signed_by(client, new_ca), f"{node.name}'s client certificate"
            conf = yaml.safe_load((node.directory / "root" / "etc" / "kubernetes" / "kubelet.conf").read_text())
            trusted = x509.load_pem_x509_certificates(base64.b64decode(
                conf["clusters"][0]["cluster"]["certificate-authority-data"]))
            assert trusted == [new_ca], f"{node.name}'s kubelet.conf trusts the new CA alone"
            assert reached(admin, node.name)
            said = (node.directory / "node-agent.log").read_text()
            assert said.count("restarting the kubelet") == 2, said[-3000:]
            assert "PRIVATE KEY" not in said
        assert logs_read(admin)
        recreated = await restarted_by_its_manifest(admin, static)
        restarts = [(c, round(end - start, 1)) for c, start, end in consumers.windows(state)]
        print(f"control-plane restarts (component, seconds): {restarts}; kubelet restarts: 2 per node; "
              f"Ready looks: {sum(len(v) for v in watcher.ready.values())}, all True; "
              f"a static pod recreated by the agent's static-pod restarter in {recreated:.1f}s")
        for component in COMPONENTS:
            fatal = [line for line in (state / f"{component}.log").read_text(errors="replace").splitlines()
                     if line.startswith("F1") or line.startswith("F0")]
            assert not fatal, f"{component} exited: {fatal[:3]}"
    finally:
        if watcher is not None:
            watcher.stopped.set()
        for process in agents:
            process.terminate()
            process.wait(timeout=30)
        if agent is not None:  # its group: a restart it runs must not start a component after the stops below
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=30)
        for node in workers:
            node.down()
        if operator is not None:
            operator.stop()
        for component in reversed(COMPONENTS):
            consumers.stop(component, state)
    shutil.rmtree(root, ignore_errors=True)  # kept for a look when the test fails
    for node in workers:
        shutil.rmtree(node.directory, ignore_errors=True)
