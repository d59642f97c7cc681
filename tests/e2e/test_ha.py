"""The proof on a highly available control plane of real components: three etcd members, two kube-apiservers
behind HAProxy (Debian's, on loopback), two kube-controller-managers and two kube-schedulers with kubeadm's
flags (every default controller, the CSR signer among them; leader election), and two worker nodes (real
kubelets v1.24 with containerd, joined through HAProxy with a bootstrap token).

The cluster runs its own PKI, as a kubeadm cluster taken over does: the README's multi-member render (one
run per member, the shared authorities copied in), the components started from those files, the README's
install into that cluster, ``clusterpki import`` of the three directories. Two operator replicas run in it
with leader election and ``--csr-policy`` (the leader is killed once in the middle of a rotation), three
``clusterpki agent`` processes (one per member) restart the components through their command restarter,
taking turns, and a ``clusterpki node-agent`` runs on each worker. The operators and agents trust the
apiservers through ``pki/ca.crt``, as a pod through its projected ``ca.crt``, and follow it.

Clients call through the load balancer throughout (see :mod:`tests.proof`): an automatic renewal,
rotations of ca, etcd-ca, front-proxy-ca and sa, and a second rotation of ca taken back in Rotating. Not one
request may fail, every rotation completes, no CA is issued twice (the few requests any restart of an etcd
member fails by itself are counted apart: see ``proof.ETCD_RESTART_ERRORS``), no component ever exits but to
be restarted (a kube-controller-manager that finds two certificates in its signing file exits), and a watch
of Nodes never sees a worker NotReady.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
import yaml
from clusterpki.kubeadm.render import shared_files
from clusterpki.pki import certificates
from cryptography import x509

from tests import consumers, proof
from tests.controlplane import ControlPlane, free_port_block
from tests.helpers import REPO
from tests.kube import FollowingApi, Recorder, cert_of
from tests.nodes import Kubelet, NodeWatch, next_address, node_agent, node_sh, reached, token
from tests.runners import OperatorProcess

MEMBERS = {"m0": ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"),
           "m1": ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"), "m2": ("etcd",)}
WORKERS = ("worker-1", "worker-2")
TARGETS = ("ca", "etcd-ca", "front-proxy-ca", "sa")
CAS = ("ca", "etcd-ca", "front-proxy-ca")
NAMESPACE, NAME = "kube-system", "cp"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
LEASE_NAMESPACE = "clusterpki-system"
FATAL = re.compile(r"^F\d{4} ")  # klog's fatal lines: the component exits

pytestmark = [pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs haproxy (.ci/run installs it)"),
              pytest.mark.skipif(shutil.which("nsenter") is None, reason="needs nsenter (util-linux)"),
              pytest.mark.xdist_group("ha-proof"), pytest.mark.proof]


class Member:
    """One control-plane member: its kubeadm directory, its components' state, and its agent."""

    def __init__(self, name: str, tmp: Path, members: dict[str, tuple[int, int]], api_port: int | None,
                 ports: dict[str, int]) -> None:
        self.name, self.components = name, MEMBERS[name]
        self.dir, self.state = tmp / name / "kubernetes", tmp / name / "state"
        self.dir.mkdir(parents=True)
        self.state.mkdir()
        self.etcd_port, self.api_port, self.ports = members[name][0], api_port, ports
        commands = consumers.commands(self.dir / "pki", proof.bin_dir(), self.state, name, members, api_port,
                                      ports.get("kube-controller-manager", 0), ports.get("kube-scheduler", 0))
        (self.state / "commands.json").write_text(json.dumps({c: commands[c] for c in self.components}))
        (self.state / "config.json").write_text(json.dumps({"pki": str(self.dir / "pki"), "etcd_port": self.etcd_port,
                                                            "api_port": api_port, "ports": ports}))
        self.agent: asyncio.subprocess.Process | None = None

    def health(self) -> list[str]:
        urls = {"etcd": f"etcd=https://127.0.0.1:{self.etcd_port}/health",
                "kube-apiserver": f"kube-apiserver=https://127.0.0.1:{self.api_port}/readyz",
                **{c: f"{c}=https://127.0.0.1:{port}/healthz" for c, port in self.ports.items()}}
        return [arg for c in self.components if c in urls for arg in ("--health", urls[c])]

    async def start_agent(self, namespace: str, kubeconfig: Path) -> None:
        restart = f"{sys.executable} -m tests.consumers restart \"$CLUSTERPKI_COMPONENT\" {self.state}"
        log = open(self.state / "agent.log", "ab")
        self.agent = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "clusterpki"), "agent", "-n", namespace, NAME, "--dir", str(self.dir),
            "--member", self.name, *[a for c in self.components for a in ("--component", c)],
            *self.health(), "--healthy-for", "1", "--restart-interval", "0", "--restart", "command",
            "--restart-command", restart, cwd=REPO, stdout=log, stderr=log,
            env={**os.environ, "KUBECONFIG": str(proof.following_the_ca(kubeconfig, self.dir / "pki" / "ca.crt"))})

    async def stop_agent(self) -> None:
        if self.agent is not None:
            self.agent.terminate()
            await self.agent.wait()

    def stop_components(self) -> None:
        for component in reversed(self.components):
            consumers.stop(component, self.state)


def haproxy_config(port: int, backends: list[int], path: Path) -> Path:
    """TCP passthrough (client certificates reach the apiservers), /readyz checked every 300 ms (down after
    2 failures, well within the apiservers' 2 s shutdown delay; up after 2, within the agents'
    --healthy-for 1), a check given 2 s to answer (HAProxy's default is the interval: on two busy cores
    a slow /readyz of the one apiserver left then took it out too, with a 500 from no apiserver at all),
    and a connection that fails retried on the other apiserver."""
    servers = "\n".join(f"  server api{i} 127.0.0.1:{p} check check-ssl verify none inter 300ms fall 2 rise 2"
                        for i, p in enumerate(backends))
    path.write_text(f"""global
  maxconn 2000
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout check 2s
  retries 3
  option redispatch
frontend apiserver
  bind 127.0.0.1:{port}
  default_backend apiservers
backend apiservers
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
{servers}
""")
    return path


def render_members(members: list[Member], lb: int, tmp: Path) -> None:
    """Each member's /etc/kubernetes from ``clusterpki render --all-members``, as the README says for several
    members (one directory each, sharing the CAs and sa.key), each copied to its member as to its node.
    Leaves valid for an hour."""
    spec_file = tmp / "cp.yaml"
    spec_file.write_text(yaml.safe_dump({
        "apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI", "metadata": {"name": NAME},
        "spec": {"controlPlaneEndpoint": f"127.0.0.1:{lb}", "validity": {"certificate": "1h"},
                 "etcd": {"members": [{"name": name, "ips": ["127.0.0.1"]} for name in MEMBERS]}}}))
    subprocess.run([sys.executable, "-m", "clusterpki", "render", "-f", str(spec_file), "--out", str(tmp / "rendered"),
                    "--all-members"], check=True, capture_output=True, cwd=REPO)
    for member in members:
        shutil.copytree(tmp / "rendered" / member.name, member.dir, dirs_exist_ok=True)
    assert all((m.dir / f).read_bytes() == (members[0].dir / f).read_bytes() for m in members for f in shared_files())


async def start_components(members: list[Member]) -> None:
    launched = [(m, consumers.launch("etcd", m.state)) for m in members]
    for member, process in launched:
        await asyncio.to_thread(consumers.healthy, "etcd", member.state, process)
    for member in members:
        for component in member.components[1:]:
            await asyncio.to_thread(consumers.start, component, member.state)


async def take_over(cluster: ControlPlane, members: list[Member], tmp: Path) -> list[OperatorProcess]:
    """The README's install into the cluster itself, ``clusterpki import`` of every member's directory, and
    two operator replicas as the manifests' ServiceAccount, following ``pki/ca.crt``."""
    installed = cluster.install()
    assert installed.returncode == 0, installed.stderr
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterpkis.pki.clusterpki.dev")
    dirs = [a for m in members for a in ("--dir", str(m.dir))]
    imported = subprocess.run([sys.executable, "-m", "clusterpki", "import", "-n", NAMESPACE, NAME, *dirs],
                              capture_output=True, text=True, cwd=REPO, env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
    assert imported.returncode == 0, imported.stderr
    # import cannot tell a member's own 127.0.0.1 from the one kubeadm puts in every etcd certificate
    cluster.kubectl("-n", NAMESPACE, "patch", "clusterpki", NAME, "--type=json", "-p", json.dumps(
        [{"op": "add", "path": f"/spec/etcd/members/{i}/ips", "value": ["127.0.0.1"]} for i in range(len(MEMBERS))]))
    cluster.kubectl("-n", NAMESPACE, "annotate", "clusterpki", NAME, "pki.clusterpki.dev/rotate-ca-grace=2s",
                    "pki.clusterpki.dev/max-token-lifetime=1h")
    kubeconfig = proof.following_the_ca(cluster.token_kubeconfig(tmp / "operator.kubeconfig"),
                                        members[0].dir / "pki" / "ca.crt")
    operators = [OperatorProcess(kubeconfig, tmp / f"operator-{i}.log", "-n", NAMESPACE, "--leader-elect",
                                 "--leader-election-namespace", LEASE_NAMESPACE, "--csr-policy", f"{NAMESPACE}/{NAME}")
                 for i in range(2)]
    for operator in operators:
        await asyncio.to_thread(operator.start)
    return operators


def join(node: Kubelet, server: str, ca: Path, joining: str) -> None:
    joined = subprocess.run(["bash", str(node_sh()), "up", str(node.directory), node.name, node.ip, server, str(ca),
                             "--bootstrap-token", joining, "--wait", "ready"], capture_output=True, text=True,
                            timeout=240)
    assert joined.returncode == 0, f"{joined.stderr}\n{node.log()[-3000:]}"


async def consumers_current(api, timeout: float = 240) -> None:
    count = sum(len(c) for c in MEMBERS.values())

    async def probe():
        status = (await api.get("clusterpkis", NAME, NAMESPACE)).get("status") or {}
        entries = status.get("consumers") or []
        return (len(entries) == count and all(e["current"] for e in entries)
                and status.get("nodesCurrent") == f"{len(WORKERS)}/{len(WORKERS)}")
    try:
        await api.wait_for(probe, timeout, "every consumer and node running the current Secrets")
    except AssertionError:
        status = (await api.get("clusterpkis", NAME, NAMESPACE)).get("status") or {}
        nodes = [(n["metadata"]["name"], (n["metadata"].get("annotations") or {}).get("pki.clusterpki.dev/kubelet"))
                 for n in await api.list("nodes")]
        csrs = [(c["metadata"]["name"], c["spec"]["signerName"], [x["type"] for x in (c.get("status") or {}).get(
            "conditions") or []], bool((c.get("status") or {}).get("certificate")))
                for c in await api.list("certificatesigningrequests")]
        raise AssertionError(f"consumers {status.get('consumers')}, nodes {status.get('nodes')}, rotation "
                             f"{status.get('caRotation')}, node reports {nodes}, CSRs {csrs}") from None


async def test_zero_failed_requests_through_every_rotation_on_an_ha_control_plane(tmp_path):
    base = free_port_block(14)
    etcd = {name: (base + 2 * i, base + 2 * i + 1) for i, name in enumerate(MEMBERS)}
    api_ports = {"m0": base + 6, "m1": base + 7}
    lb = base + 8
    ports = {"m0": {"kube-controller-manager": base + 9, "kube-scheduler": base + 10},
             "m1": {"kube-controller-manager": base + 11, "kube-scheduler": base + 12}}
    members = [Member(name, tmp_path, etcd, api_ports.get(name), ports.get(name, {})) for name in MEMBERS]
    workers = [Kubelet(Path(tempfile.mkdtemp(prefix="cpki-ha-node-")), name, next_address()) for name in WORKERS]
    admin = members[0].dir / "admin.conf"
    api = FollowingApi(admin)
    haproxy = load = load_task = watch = None
    operators: list[OperatorProcess] = []
    node_agents: list = []
    try:
        render_members(members, lb, tmp_path)
        await start_components(members)
        haproxy_log = open(tmp_path / "haproxy.log", "ab")
        haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(haproxy_config(lb, list(api_ports.values()),
                                                                             tmp_path / "haproxy.cfg"))],
                                   stdout=haproxy_log, stderr=subprocess.STDOUT)
        cluster = ControlPlane(admin)
        await api.wait_for(lambda: cluster.kubectl("get", "--raw", "/readyz", check=False).returncode == 0, 60,
                           "the apiservers ready behind HAProxy")
        operators = await take_over(cluster, members, tmp_path)
        await api.ready(NAMESPACE, NAME, timeout=60)
        body = await api.get("clusterpkis", NAME, NAMESPACE)
        kubeconfigs = proof.agent_kubeconfigs(cluster, body, tmp_path)
        for member in members:
            await member.start_agent(NAMESPACE, kubeconfigs[member.name])
        joining = token(admin, "--auto-approve")
        for node in workers:
            await asyncio.to_thread(join, node, f"https://127.0.0.1:{lb}", members[0].dir / "pki" / "ca.crt", joining)
            await api.wait_for(lambda node=node: reached(admin, node.name), 90, f"the apiserver reaching {node.name}")
        node_agents = [node_agent(node, NAMESPACE, NAME) for node in workers]
        await consumers_current(api)
        watch = NodeWatch(admin)
        watch.start()

        async with Recorder(api, "secrets", NAMESPACE, resume=True,
                            labelSelector=f"pki.clusterpki.dev/cluster-pki={NAME}") as recorded:
            url = f"https://127.0.0.1:{lb}"
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=proof.admin_context(members[0].dir))) as session:
                async def minted():
                    async with session.post(f"{url}/api/v1/namespaces/default/serviceaccounts/default/token",
                                            json={"spec": {"expirationSeconds": 3600}}) as response:
                        return (await response.json())["status"]["token"] if response.status == 201 else None
                minted_token = await api.wait_for(minted, timeout=60, what="a token of default/default")
            load = proof.Load(members[0].dir, url, minted_token)
            load_task = asyncio.create_task(load.run())
            load_started = datetime.now(timezone.utc).replace(microsecond=0)
            await asyncio.sleep(2)

            # The leaves rendered an hour long fall due now, once: those renewed, or re-issued by a
            # rotation, are valid for 2 hours, so no other renewal comes in the middle of the rotations.
            await api.patch("clusterpkis", NAME, {"spec": {"validity": {"certificate": "2h"}, "renewBefore": "59m"}},
                            NAMESPACE)

            async def renewed_when_due():
                return [e for e in await api.list("events", NAMESPACE)
                        if e["reason"] == "Renewed" and "due for renewal" in e["message"]]
            renewals = await api.wait_for(renewed_when_due, 180, "an automatic renewal")
            assert all(datetime.fromisoformat(e["firstTimestamp"].replace("Z", "+00:00")) >= load_started
                       for e in renewals), "the automatic renewal came before the clients started"
            await consumers_current(api)

            for index, target in enumerate(TARGETS):
                value = f"{target}@proof-{index}"
                await api.patch("clusterpkis", NAME, {"metadata": {"annotations": {
                    "pki.clusterpki.dev/rotate-ca": value}}}, NAMESPACE)
                if target == "ca":
                    await kill_the_leader_mid_rotation(api, operators)

                async def completed(value=value):
                    got = await api.get("clusterpkis", NAME, NAMESPACE)
                    rotation = (got.get("status") or {}).get("caRotation") or {}
                    return rotation.get("request") == value and rotation.get("phase") == "Completed"
                await api.wait_for(completed, 420, f"the rotation of {target} completed")
                await consumers_current(api)
                if target == "ca":  # before sa's: no rotation starts while sa's old key is still trusted
                    await rotate_and_take_back(api)

            last = max(end for m in members for _, _, end in consumers.windows(m.state))
            await api.wait_for(lambda: load.served_since(last), 60, "every client served after the last restart")
            for node in workers:
                assert reached(admin, node.name), node.name
    finally:
        await proof.stop_watching(watch, load, load_task, node_agents)
        for member in members:
            await member.stop_agent()
        for node in workers:
            node.down()
        for operator in operators:
            operator.stop()
        for member in members:
            member.stop_components()
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait()
        await api.close()

    restarts = {m.name: consumers.windows(m.state) for m in members}
    etcd_restarts = [(started, ended) for found in restarts.values() for c, started, ended in found if c == "etcd"]
    failed, etcds_own = load.failures_but_etcds_own(etcd_restarts)
    assert failed == [], failed[:10]
    assert len(etcds_own) <= 2 * len(etcd_restarts), etcds_own
    print(f"requests an etcd restart failed by itself: {len(etcds_own)} in {len(etcd_restarts)} etcd restarts")
    assert sum(len(outcomes) for outcomes in load.outcomes.values()) > 1000
    # a kubelet v1.24 reports its own Node NotReady for a second or two as it starts: see tests.nodes
    assert watch.seen and watch.not_ready_but_after_own_restart(workers) == []
    print(f"NotReady, each just after its own kubelet's restart: "
          f"{[(s.node, s.since, s.message) for s in watch.seen if s.status != 'True']}")
    for member in members:
        assert {c for c, _, _ in restarts[member.name]} == set(member.components), member.name
    every = [(m, c, s, e) for m, found in restarts.items() for c, s, e in found]
    for m1, c1, s1, e1 in every:
        for m2, c2, s2, e2 in every:
            assert m1 == m2 or c1 != c2 or e1 <= s2 or e2 <= s1, f"{c1} restarted on {m1} and {m2} at once"
    for ca in CAS:
        serials = {cert_of(obj).serial_number for kind, obj in recorded.events
                   if kind != "DELETED" and obj["metadata"]["labels"]["pki.clusterpki.dev/component"]
                   in (ca, f"{ca}-next", f"{ca}-previous")}
        made = 3 if ca == "ca" else 2  # the rotation taken back made one more
        assert len(serials) == made, f"{ca}: {len(serials)} CAs seen, each rotation makes exactly one new one"
    hidden = {name for gap in recorded.gaps for name in gap}
    assert not hidden & {f"{NAME}-{ca}{s}" for ca in CAS for s in ("", "-next", "-previous")}, recorded.gaps
    print(f"Secrets whose writes the apiservers' restarts hid from the recording (their last version recorded): "
          f"{recorded.gaps}")
    for member in members:
        assert "PRIVATE KEY" not in (member.state / "agent.log").read_text()
        for component in member.components:
            fatal = [line for line in (member.state / f"{component}.log").read_text(errors="replace").splitlines()
                     if FATAL.match(line)]
            assert not fatal, f"{component} on {member.name} exited: {fatal[:3]}"
    trusted = x509.load_pem_x509_certificate((members[0].dir / "pki" / "ca.crt").read_bytes())
    kubelet_restarts = {}
    for node in workers:
        client = node.client_certificate()
        assert client is not None and certificates.signed_by(client, trusted), f"{node.name}'s client certificate"
        said = (node.directory / "node-agent.log").read_text()
        kubelet_restarts[node.name] = said.count("restarting the kubelet")
        assert "PRIVATE KEY" not in said
    print(f"kubelet restarts: {kubelet_restarts}")
    shutil.rmtree(tmp_path, ignore_errors=True)
    for node in workers:
        shutil.rmtree(node.directory, ignore_errors=True)


async def rotate_and_take_back(api) -> None:
    """A second rotation of ``ca``, taken back (``rotate-ca-abort``) once every leaf is the new CA's: every
    consumer returns to the old CA, under the same load."""
    before = (await api.serials(NAMESPACE, NAME))["ca"]
    await api.patch("clusterpkis", NAME, {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca": "ca@taken-back"}}}, NAMESPACE)

    async def phase(name: str) -> bool:
        rotation = ((await api.get("clusterpkis", NAME, NAMESPACE)).get("status") or {}).get("caRotation") or {}
        return rotation.get("request") == "ca@taken-back" and rotation.get("phase") == name
    await api.wait_for(lambda: phase("Rotating"), 300, "the second ca rotation Rotating")
    await api.patch("clusterpkis", NAME, {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-abort": "proof"}}}, NAMESPACE)
    await api.wait_for(lambda: phase("Aborted"), 300, "the second ca rotation taken back")
    await consumers_current(api)
    assert (await api.serials(NAMESPACE, NAME))["ca"] == before, "the old CA signs again"


async def kill_the_leader_mid_rotation(api, operators: list[OperatorProcess]) -> None:
    """SIGKILL the leading replica once the rotation is under way; start it again as the standby."""
    async def preparing():
        rotation = ((await api.get("clusterpkis", NAME, NAMESPACE)).get("status") or {}).get("caRotation") or {}
        return rotation.get("phase") == "Preparing"
    await api.wait_for(preparing, 60, "the ca rotation Preparing")
    leader = next(o for o in operators if "Leading: holding the Lease" in o.log())
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait()
    leader.process = None
    await api.wait_for(lambda: any(o is not leader and "Leading: holding the Lease" in o.log() for o in operators),
                       30, "the standby leading")
    await asyncio.to_thread(leader.start)
