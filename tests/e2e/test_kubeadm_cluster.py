"""The kubeadm proof: a one-node kubeadm control plane, run as static pods by a real kubelet, with two
workers, taken over and rotated through every authority.

The cluster is kubeadm v1.24's, made without clusterpki: ``tests/kubeadm_openssl.py`` writes
``/etc/kubernetes`` with the openssl CLI as kubeadm lays it out (some keys PKCS#8, as ``openssl genpkey``
writes them), and ``../shared/k8s/kubeadm-lib.sh`` runs etcd, kube-apiserver, kube-controller-manager
and kube-scheduler as static pods with kubeadm's flags on node ``cp1`` (a real kubelet v1.24 with its own
containerd), as ``kubeadm init`` does, its ``kubelet.conf`` then pointed at the kubelet's rotated client
certificate (``kubeadm init phase kubelet-finalize``). Two workers join with a bootstrap token.

It is taken over as the README says: the install, ``clusterpki import``, the operator as its
ServiceAccount with ``--csr-policy``, the control-plane agent with ``--restart static-pod``, and a
``clusterpki node-agent`` on every node (run in the node's mount and pid namespaces, restarting the
kubelet as its systemd unit would). The takeover restarts nothing and rewrites no file.

Then, under client load: a renewal of every leaf, and rotations of ``ca``, ``etcd-ca``,
``front-proxy-ca`` and ``sa``. Required: no component exits but when the one apiserver's restart costs
kube-controller-manager and kube-scheduler their leader lease (as on any one-node kubeadm control plane);
a watch of Nodes never sees one NotReady; node Leases keep renewing; the apiserver reaches every kubelet
(``proxy/healthz``) and reads a static pod's logs, before and after; the kubelets end with client
certificates from the new CA; and no request fails but while the one apiserver, or the one etcd member
it stores in, restarts. It prints each restart and how long it took.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from clusterpki.pki import certificates
from cryptography import x509

from tests import kubeadm_openssl, proof
from tests.controlplane import ControlPlane, harness
from tests.helpers import REPO, openssl
from tests.nodes import Kubelet, NodeWatch, log_time, next_address, node_agent, node_sh, reached, token
from tests.runners import OperatorProcess

NAMESPACE, NAME, CONTROL_PLANE = "clusterpki-system", "cluster", "cp1"  # the manifests' --csr-policy
WORKERS = ("worker-1", "worker-2")
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
TARGETS = ("ca", "etcd-ca", "front-proxy-ca", "sa")
FATAL = re.compile(r" std(?:err|out) [PF] (F\d{4} .*)$")  # a klog fatal line in a CRI container log
LEADER_LOST = "leaderelection lost"
RESTARTING = re.compile(r"^\[(\S+ \S+)\].*: restarting (\S+)$")
HEALTHY = re.compile(r"^\[(\S+ \S+)\].*: (\S+) is healthy again, ([\d.]+)s after its restart")

pytestmark = [pytest.mark.skipif(shutil.which("nsenter") is None, reason="needs nsenter (util-linux)"),
              pytest.mark.xdist_group("kubeadm-proof"), pytest.mark.proof]


def kubectl(admin: Path, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    result = subprocess.run(["kubectl", f"--kubeconfig={admin}", "--request-timeout=10s", *args], capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result


def kubeadm_lib(script: str, timeout: float = 420) -> str:
    """``script`` in bash, with ``../shared/k8s/kubeadm-lib.sh`` sourced; its output."""
    library = harness().parent / "kubeadm-lib.sh"
    done = subprocess.run(["bash", "-c", f". {library} && {script}"], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{script}: {done.stderr[-3000:]}"
    return done.stdout


def kubeadm_etc(node: Kubelet) -> Path:
    """kubeadm's /etc/kubernetes on ``node``, made with openssl alone; three keys as PKCS#8."""
    etc = kubeadm_openssl.make(node.directory / "root" / "etc" / "kubernetes", node.name, node.ip, f"{node.ip}:6443")
    for key in ("pki/apiserver.key", "pki/etcd/server.key", "pki/ca.key"):
        openssl("pkey", "-in", str(etc / key), "-out", str(etc / f"{key}.pkcs8"))
        (etc / f"{key}.pkcs8").replace(etc / key)
    return etc


def control_plane_up(node: Kubelet, etc: Path) -> str:
    """kubeadm-lib's ``kubeadm_control_plane_up``, step by step, with the bootstrap token of
    :func:`tests.nodes.token` (which asks again when node.sh writes an all-digit token ID as a number);
    returns that token."""
    admin = etc / "admin.conf"
    kubeadm_lib(f"kubeadm_static_pods {etc} {node.name} {node.ip} && kubeadm_kubelet_conf {etc} {node.name} {node.ip}")
    started = subprocess.run(["bash", str(node_sh()), "up", str(node.directory), node.name, node.ip,
                              f"https://{node.ip}:6443", str(etc / "pki" / "ca.crt"), "--kubeconfig",
                              str(etc / "kubelet.conf"), "--wait", "healthz"], capture_output=True, text=True, timeout=300)
    assert started.returncode == 0, started.stderr
    kubeadm_lib(f"_kubeadm_wait 300 kubectl --kubeconfig {admin} get --raw /readyz")
    joining = token(admin, "--auto-approve")
    kubeadm_lib(f"_kubeadm_wait 120 _kubeadm_ready {admin} {node.name} && kubeadm_approve_serving {admin} {node.name} "
                f"&& _kubeadm_wait 30 kubectl --kubeconfig {admin} get --raw /api/v1/nodes/{node.name}/proxy/healthz "
                f"&& kubectl --kubeconfig {admin} -n kube-system wait --for=condition=Ready pod --all --timeout=120s")
    return joining


def kubelet_finalize(node: Kubelet, etc: Path) -> None:
    """``kubeadm init phase kubelet-finalize``: kubelet.conf names the kubelet's rotated client certificate
    instead of embedding the one it was first given."""
    current = node.directory / "root" / "var" / "lib" / "kubelet" / "pki" / "kubelet-client-current.pem"
    deadline = time.monotonic() + 60
    while not current.is_symlink():  # to /var/lib/kubelet/pki/...: dangling from here
        assert time.monotonic() < deadline, "the control-plane kubelet wrote no kubelet-client-current.pem"
        time.sleep(1)
    conf = yaml.safe_load((etc / "kubelet.conf").read_text())
    pem = "/var/lib/kubelet/pki/kubelet-client-current.pem"
    conf["users"][0]["user"] = {"client-certificate": pem, "client-key": pem}
    (etc / "kubelet.conf").write_text(yaml.safe_dump(conf))


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


def everyone_current(admin: Path) -> bool:
    status = status_of(admin)
    return (status.get("consumersCurrent") == f"{len(COMPONENTS)}/{len(COMPONENTS)}"
            and status.get("nodesCurrent") == f"{1 + len(WORKERS)}/{1 + len(WORKERS)}")


def logs_read(admin: Path) -> bool:
    """``kubectl logs`` of a static pod: the apiserver streams them from cp1's kubelet."""
    return kubectl(admin, "-n", "kube-system", "logs", f"etcd-{CONTROL_PLANE}", "--tail=1", check=False).returncode == 0


def files_of(etc: Path) -> dict[str, bytes]:
    return {str(p.relative_to(etc)): p.read_bytes() for p in sorted(etc.rglob("*"))
            if p.is_file() and p.parent.name != "manifests"}


def restarts_of(agent_log: str) -> list[tuple[str, float, float]]:
    """The agent's restarts: (component, started, healthy again), from its log."""
    found, started = [], {}
    for line in agent_log.splitlines():
        if match := RESTARTING.match(line):
            started[match[2]] = log_time(match[1])
        elif (match := HEALTHY.match(line)) and match[2] in started:
            found.append((match[2], started.pop(match[2]), log_time(match[1])))
    return found


def fatal_lines(node: Kubelet) -> dict[str, list[str]]:
    """Every klog fatal line of the static pods' containers, by component."""
    found: dict[str, list[str]] = {}
    for path in (node.directory / "root" / "var" / "log" / "pods").glob("kube-system_*/*/*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if match := FATAL.search(line):
                found.setdefault(path.parent.name, []).append(match[1])
    return found


async def settle(admin: Path, what: str, changed) -> None:
    """Wait until ``changed(status)`` says the operator acted, then for every consumer and node current."""
    await wait_for(lambda: changed(status_of(admin)), 900, what)
    await wait_for(lambda: everyone_current(admin), 300, f"every consumer and node current after {what}")


async def test_a_kubeadm_cluster_is_taken_over_and_rotated_with_its_static_pods_and_workers(tmp_path):
    cp = Kubelet(Path(tempfile.mkdtemp(prefix="cpki-kubeadm-")), CONTROL_PLANE, next_address())
    workers = [Kubelet(Path(tempfile.mkdtemp(prefix="cpki-node-")), name, next_address()) for name in WORKERS]
    etc = kubeadm_etc(cp)
    admin, server = etc / "admin.conf", f"https://{cp.ip}:6443"
    operator = agent = watch = load = load_task = None
    node_agents: list[subprocess.Popen] = []
    try:
        joining = await asyncio.to_thread(control_plane_up, cp, etc)
        kubelet_finalize(cp, etc)
        for node in workers:
            kubeadm_lib(f"kubeadm_worker_up {node.directory} {node.name} {node.ip} {server} {etc}/pki/ca.crt "
                        f"{joining} {admin}")
        cluster = ControlPlane(admin)
        installed = cluster.install()
        assert installed.returncode == 0, installed.stderr
        before = files_of(etc)

        imported = subprocess.run([sys.executable, "-m", "clusterpki", "import", "-n", NAMESPACE, NAME, "--dir", str(etc)],
                                  capture_output=True, text=True, cwd=REPO, env={**os.environ, "KUBECONFIG": str(admin)})
        assert imported.returncode == 0, imported.stderr
        kubectl(admin, "-n", NAMESPACE, "annotate", "clusterpki", NAME, "pki.clusterpki.dev/rotate-ca-grace=2s")
        operator = proof_operator(cluster, etc, tmp_path)
        await wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True"
                                   for c in status_of(admin).get("conditions") or []), 60, "the ClusterPKI Ready")
        agent = control_plane_agent(cluster, etc, cp, tmp_path)
        node_agents = [node_agent(node, NAMESPACE, NAME) for node in (cp, *workers)]
        await wait_for(lambda: everyone_current(admin), 180, "the agents and node agents reporting")
        said = (tmp_path / "agent.log").read_text()
        assert "restarting" not in said and "which does not run" not in said, f"the takeover restarted: {said[-2000:]}"
        after = files_of(etc)
        assert {f: after.get(f) for f in before} == before, \
            f"the takeover rewrote {sorted(f for f in before if after.get(f) != before[f])}"
        for node in (cp, *workers):
            await wait_for(lambda node=node: reached(admin, node.name), 60, f"the apiserver reaching {node.name}")
        assert logs_read(admin)

        watch = NodeWatch(admin)
        watch.start()
        load = proof.Load(etc, server, await asyncio.to_thread(minted_token, admin))
        load_task = asyncio.create_task(load.run())
        serial = apiserver_serial(status_of(admin))
        run = subprocess.run([sys.executable, "-m", "clusterpki", "renew", "-n", NAMESPACE, NAME], cwd=REPO,
                             capture_output=True, text=True, env={**os.environ, "KUBECONFIG": str(admin)})
        assert run.returncode == 0, run.stderr
        await settle(admin, "the renewal", lambda s: apiserver_serial(s) not in (None, serial))
        for index, target in enumerate(TARGETS):
            value = f"{target}@kubeadm-{index}"
            kubectl(admin, "-n", NAMESPACE, "annotate", "--overwrite", "clusterpki", NAME,
                    f"pki.clusterpki.dev/rotate-ca={value}")
            await settle(admin, f"the rotation of {target}", lambda s, value=value: (
                (s.get("caRotation") or {}).get("request") == value
                and (s.get("caRotation") or {}).get("phase") == "Completed"))
        renewed_before = {n: len(watch.renewals.get(n, ())) for n in (cp.name, *WORKERS)}
        await asyncio.sleep(10)  # the nodes live on after it: Ready, their Leases renewed
        for node in (cp, *workers):
            assert reached(admin, node.name), node.name
        # the last restart's static pod may still be getting its mirror pod back from the kubelet
        await wait_for(lambda: logs_read(admin), 60, "the logs of a static pod after the rotations")
    finally:
        await proof.stop_watching(watch, load, load_task, node_agents)
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
        if operator is not None:
            operator.stop()
        for node in (*workers, cp):
            node.down()

    restarts = restarts_of((tmp_path / "agent.log").read_text())
    print("restarts (component, seconds until healthy again):",
          [(c, round(end - start, 1)) for c, start, end in restarts])
    outages = [(s, e) for c, s, e in restarts if c in ("etcd", "kube-apiserver")]
    failed = [f for f in load.failures() if not any(s - 1 <= f[1] <= served_again(load, f[0], e) for s, e in outages)]
    assert failed == [], failed[:10]
    print(f"requests: {sum(len(o) for o in load.outcomes.values())}, failed while the apiserver or etcd "
          f"restarted: {len(load.failures())}")

    # A kubelet v1.24 that starts reports its own Node NotReady for a second or two ("container runtime
    # status check may not have completed yet"), whoever restarts it: allowed just after that node's own
    # kubelet restarts, nowhere else, and never Unknown (the node controller never lost a node).
    kubelets = {node.name: [clock(r) for r in node.restarts()] for node in (cp, *workers)}
    assert watch.seen and watch.not_ready_but_after_own_restart([cp, *workers]) == [], (
        f"kubelets restarted at {kubelets}; components at {[(c, clock(s), clock(e)) for c, s, e in restarts]}")
    not_ready = [(s.node, clock(s.since), s.message) for s in watch.seen if s.status != "True"]
    print(f"Node events seen: {len(watch.seen)}; NotReady, each just after its own kubelet's restart: {not_ready}")
    for name in (cp.name, *WORKERS):
        assert len(watch.renewals.get(name, ())) > renewed_before[name], f"{name}'s Lease renewed"
    new_ca = x509.load_pem_x509_certificate((etc / "pki" / "ca.crt").read_bytes())
    for node in (cp, *workers):
        client = node.client_certificate()
        assert client is not None and certificates.signed_by(client, new_ca), f"{node.name}'s client certificate"
        conf = yaml.safe_load((node.directory / "root" / "etc" / "kubernetes" / "kubelet.conf").read_text())
        trusted = x509.load_pem_x509_certificates(base64.b64decode(
            conf["clusters"][0]["cluster"]["certificate-authority-data"]))
        assert trusted == [new_ca], f"{node.name}'s kubelet.conf trusts the new CA alone"
        said = (node.directory / "node-agent.log").read_text()
        assert said.count("restarting the kubelet") == 2, said[-3000:]  # one ca rotation; no other authority's
        assert "PRIVATE KEY" not in said
    for component, lines in fatal_lines(cp).items():
        assert all(LEADER_LOST in line for line in lines), f"{component} exited: {lines[:3]}"
    assert "PRIVATE KEY" not in (tmp_path / "agent.log").read_text()
    shutil.rmtree(cp.directory, ignore_errors=True)  # kept for a look when the test fails
    for node in workers:
        shutil.rmtree(node.directory, ignore_errors=True)


def clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(epoch))


def served_again(load: proof.Load, client: str, healthy: float) -> float:
    """When ``client`` was first served after a restart that was healthy again at ``healthy``: after an
    etcd member's restart the apiserver's etcd client reconnects with a backoff of its own, so requests
    may time out for a few seconds after etcd answers its health check."""
    return next((at for at, error in load.outcomes[client] if at > healthy and error is None), float("inf"))


def apiserver_serial(status: dict) -> str | None:
    return next((c["serialNumber"] for c in status.get("certificates") or [] if c["name"] == "apiserver"), None)


def minted_token(admin: Path) -> str:
    """A token of default/default for an hour, minted before any rotation."""
    return kubectl(admin, "-n", "default", "create", "token", "default", "--duration=1h").stdout.strip()


def proof_operator(cluster: ControlPlane, etc: Path, tmp: Path) -> OperatorProcess:
    kubeconfig = proof.following_the_ca(cluster.token_kubeconfig(tmp / "operator.kubeconfig"), etc / "pki" / "ca.crt")
    operator = OperatorProcess(kubeconfig, tmp / "operator.log", "-n", NAMESPACE, "--csr-policy", f"{NAMESPACE}/{NAME}")
    operator.start()
    return operator


def control_plane_agent(cluster: ControlPlane, etc: Path, node: Kubelet, tmp: Path) -> subprocess.Popen:
    """The control-plane agent with its credentials from ``clusterpki agent-manifests``, restarting
    kubeadm's static pods; health checked on the node's own address, as kubeadm's probes do."""
    body = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "clusterpki", NAME, "-o", "json").stdout)
    credentials = proof.agent_kubeconfigs(cluster, body, tmp)
    (tmp / "cluster.yaml").write_text(yaml.safe_dump(body))  # the README's recipe, checked by the apiserver
    printed = subprocess.run([sys.executable, "-m", "clusterpki", "agent-manifests", "-f", str(tmp / "cluster.yaml")],
                             capture_output=True, text=True, check=True, cwd=REPO).stdout
    dry = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", "-", stdin=printed).stdout
    assert f"daemonset.apps/clusterpki-node-agent-{NAME} serverside-applied" in dry, dry
    member = body["spec"]["etcd"]["members"][0]["name"]
    health = {"etcd": f"https://{node.ip}:2379/health", "kube-apiserver": f"https://{node.ip}:6443/readyz",
              "kube-controller-manager": f"https://{node.ip}:10257/healthz",
              "kube-scheduler": f"https://{node.ip}:10259/healthz"}
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "clusterpki"), "agent", "-n", NAMESPACE, NAME, "--dir", str(etc),
         "--member", member, *[a for c in COMPONENTS for a in ("--component", c)],
         *[a for c, url in health.items() for a in ("--health", f"{c}={url}")], "--healthy-for", "3",
         "--restart-interval", "0", "--restart", "static-pod"],
        cwd=REPO, stdout=open(tmp / "agent.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "KUBECONFIG": str(proof.following_the_ca(credentials[member], etc / "pki" / "ca.crt"))})
