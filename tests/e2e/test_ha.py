"""The proof on a highly available control plane of real components: three etcd members, two kube-apiservers
behind HAProxy (Debian's, on loopback), two kube-controller-managers and two kube-schedulers with kubeadm's
flags (every default controller, the CSR signer among them; leader election), all run from the files of three
``clusterpki agent`` processes (one per member) and restarted by their command restarter, taking turns.
Two operator replicas run with leader election; the leader is killed once in the middle of a rotation.

Clients call through the load balancer throughout (see :mod:`tests.proof`): an automatic renewal,
rotations of ca, etcd-ca, front-proxy-ca and sa, and a second rotation of ca taken back in Rotating. Not one request may fail, every
rotation completes, no CA is issued twice (the few requests any restart of an etcd member fails
by itself are counted apart: see ``proof.ETCD_RESTART_ERRORS``), and no component ever exits but to be restarted (a
kube-controller-manager that finds two certificates in its signing file exits).
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
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest

from clusterpki.agent.verify import verify
from clusterpki.kube import secrets
from clusterpki.kubeadm import layout, writer
from clusterpki.pki import spec
from clusterpki.pki.record import Record
from tests import consumers, proof
from tests.controlplane import free_port_block
from tests.e2e.conftest import pki
from tests.helpers import REPO
from tests.kube import Recorder, cert_of
from tests.runners import OperatorProcess

MEMBERS = {"m0": ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"),
           "m1": ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"), "m2": ("etcd",)}
TARGETS = ("ca", "etcd-ca", "front-proxy-ca", "sa")
CAS = ("ca", "etcd-ca", "front-proxy-ca")
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
LEASE_NAMESPACE = "clusterpki-system"
FATAL = re.compile(r"^F\d{4} ")  # klog's fatal lines: the component exits

pytestmark = [pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs haproxy (.ci/run installs it)"),
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
            str(Path(sys.executable).parent / "clusterpki"), "agent", "-n", namespace, "cp", "--dir", str(self.dir),
            "--member", self.name, *[a for c in self.components for a in ("--component", c)],
            *self.health(), "--healthy-for", "1", "--restart-interval", "0", "--restart", "command",
            "--restart-command", restart, cwd=REPO, stdout=log, stderr=log,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)})

    async def stop(self) -> None:
        if self.agent is not None:
            self.agent.terminate()
            await self.agent.wait()
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


def write_files(members: list[Member], found: dict[str, dict], body: dict) -> None:
    """Each member's kubeadm directory from the ClusterPKI's Secrets, verified against its record as its
    agent does: the components start from these, so the agents' first round finds nothing to change."""
    stored = {c: secrets.StoredSecret.from_object(s) for c, s in found.items()}
    issued = Record.from_status(body["status"]["record"])
    for member in members:
        checked = verify(stored, issued, None, spec.from_resource(body), member.name)
        assert checked.pki is not None, checked
        writer.write(member.dir, layout.files_for(checked.pki, member.name), set())


async def consumers_current(api, namespace: str, timeout: float = 240) -> None:
    count = sum(len(c) for c in MEMBERS.values())

    async def probe():
        entries = ((await api.get("clusterpkis", "cp", namespace)).get("status") or {}).get("consumers") or []
        return len(entries) == count and all(e["current"] for e in entries)
    await api.wait_for(probe, timeout, "every consumer running the current Secrets")


async def test_zero_failed_requests_through_every_rotation_on_an_ha_control_plane(
        cluster, operator_kubeconfig, api, namespace, tmp_path):
    base = free_port_block(14)
    etcd = {name: (base + 2 * i, base + 2 * i + 1) for i, name in enumerate(MEMBERS)}
    api_ports = {"m0": base + 6, "m1": base + 7}
    lb = base + 8
    ports = {"m0": {"kube-controller-manager": base + 9, "kube-scheduler": base + 10},
             "m1": {"kube-controller-manager": base + 11, "kube-scheduler": base + 12}}
    members = [Member(name, tmp_path, etcd, api_ports.get(name), ports.get(name, {})) for name in MEMBERS]

    await api.delete("leases", "clusterpki", LEASE_NAMESPACE, missing_ok=True)
    operators = [OperatorProcess(operator_kubeconfig, tmp_path / f"operator-{i}.log", "-n", namespace,
                                 "--leader-elect", "--leader-election-namespace", LEASE_NAMESPACE) for i in range(2)]
    for operator in operators:
        await asyncio.to_thread(operator.start)
    body = pki("cp", namespace, controlPlaneEndpoint=f"127.0.0.1:{lb}",
               etcd={"members": [{"name": name, "ips": ["127.0.0.1"]} for name in MEMBERS]},
               validity={"certificate": "3m"}, renewBefore="105s")
    body["metadata"]["annotations"] = {"pki.clusterpki.dev/rotate-ca-grace": "2s",
                                       "pki.clusterpki.dev/max-token-lifetime": "1h"}
    haproxy = load = load_task = None
    async with Recorder(api, "secrets", namespace, labelSelector="pki.clusterpki.dev/cluster-pki=cp") as recorded:
        try:
            await api.apply_pki(body)
            await api.ready(namespace, "cp", timeout=40)
            # The leaves issued now fall due in 75 s, once: those renewed then, or re-issued by a
            # rotation, are valid for 2 hours, so no other renewal comes in the middle of the rotations.
            await api.patch("clusterpkis", "cp", {"spec": {"validity": {"certificate": "2h"}}}, namespace)
            write_files(members, await api.secrets_of(namespace, "cp"), await api.get("clusterpkis", "cp", namespace))
            launched = [(m, consumers.launch("etcd", m.state)) for m in members]
            for member, process in launched:
                await asyncio.to_thread(consumers.healthy, "etcd", member.state, process)
            for member in members:
                for component in member.components[1:]:
                    await asyncio.to_thread(consumers.start, component, member.state)
            haproxy_log = open(tmp_path / "haproxy.log", "ab")
            haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(haproxy_config(lb, list(api_ports.values()),
                                                                                 tmp_path / "haproxy.cfg"))],
                                       stdout=haproxy_log, stderr=subprocess.STDOUT)

            kubeconfigs = proof.agent_kubeconfigs(cluster, body, tmp_path)
            for member in members:
                await member.start_agent(namespace, kubeconfigs[member.name])
            await consumers_current(api, namespace)

            url = f"https://127.0.0.1:{lb}"
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=proof.admin_context(members[0].dir))) as admin:
                async def minted():
                    async with admin.post(f"{url}/api/v1/namespaces/default/serviceaccounts/default/token",
                                          json={"spec": {"expirationSeconds": 3600}}) as response:
                        return (await response.json())["status"]["token"] if response.status == 201 else None
                token = await api.wait_for(minted, timeout=60, what="a token of default/default")
            load = proof.Load(members[0].dir, url, token)
            load_task = asyncio.create_task(load.run())
            load_started = datetime.now(timezone.utc).replace(microsecond=0)
            await asyncio.sleep(2)

            async def renewed_when_due():
                return [e for e in await api.list("events", namespace)
                        if e["reason"] == "Renewed" and "due for renewal" in e["message"]]
            renewals = await api.wait_for(renewed_when_due, 180, "an automatic renewal")
            assert all(datetime.fromisoformat(e["firstTimestamp"].replace("Z", "+00:00")) >= load_started
                       for e in renewals), "the automatic renewal came before the clients started"
            await consumers_current(api, namespace)

            for index, target in enumerate(TARGETS):
                value = f"{target}@proof-{index}"
                await api.patch("clusterpkis", "cp", {"metadata": {"annotations": {
                    "pki.clusterpki.dev/rotate-ca": value}}}, namespace)
                if target == "ca":
                    await kill_the_leader_mid_rotation(api, namespace, operators)

                async def completed(value=value):
                    got = await api.get("clusterpkis", "cp", namespace)
                    rotation = (got.get("status") or {}).get("caRotation") or {}
                    return rotation.get("request") == value and rotation.get("phase") == "Completed"
                await api.wait_for(completed, 300, f"the rotation of {target} completed")
                await consumers_current(api, namespace)
                if target == "ca":  # before sa's: no rotation starts while sa's old key is still trusted
                    await rotate_and_take_back(api, namespace)

            last = max(end for m in members for _, _, end in consumers.windows(m.state))
            await api.wait_for(lambda: load.served_since(last), 60, "every client served after the last restart")
        finally:
            if load_task is not None:
                load.stopped.set()
                await load_task
            for member in members:
                await member.stop()
            if haproxy is not None:
                haproxy.terminate()
                haproxy.wait()
            for operator in operators:
                operator.stop()
            await api.delete("leases", "clusterpki", LEASE_NAMESPACE, missing_ok=True)

    restarts = {m.name: consumers.windows(m.state) for m in members}
    etcd_restarts = [(started, ended) for found in restarts.values() for c, started, ended in found if c == "etcd"]
    failed, etcds_own = load.failures_but_etcds_own(etcd_restarts)
    assert failed == [], failed[:10]
    assert len(etcds_own) <= 2 * len(etcd_restarts), etcds_own
    print(f"requests an etcd restart failed by itself: {len(etcds_own)} in {len(etcd_restarts)} etcd restarts")
    assert sum(len(outcomes) for outcomes in load.outcomes.values()) > 1000
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
        assert len(serials) == made, f"{ca}: {len(serials)} CAs issued, each rotation makes exactly one new one"
    for member in members:
        assert "PRIVATE KEY" not in (member.state / "agent.log").read_text()
        for component in member.components:
            fatal = [line for line in (member.state / f"{component}.log").read_text(errors="replace").splitlines()
                     if FATAL.match(line)]
            assert not fatal, f"{component} on {member.name} exited: {fatal[:3]}"


async def rotate_and_take_back(api, namespace: str) -> None:
    """A second rotation of ``ca``, taken back (``rotate-ca-abort``) once every leaf is the new CA's: every
    consumer returns to the old CA, under the same load."""
    before = (await api.serials(namespace, "cp"))["ca"]
    await api.patch("clusterpkis", "cp", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca": "ca@taken-back"}}}, namespace)

    async def phase(name: str) -> bool:
        rotation = ((await api.get("clusterpkis", "cp", namespace)).get("status") or {}).get("caRotation") or {}
        return rotation.get("request") == "ca@taken-back" and rotation.get("phase") == name
    await api.wait_for(lambda: phase("Rotating"), 300, "the second ca rotation Rotating")
    await api.patch("clusterpkis", "cp", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-abort": "proof"}}}, namespace)
    await api.wait_for(lambda: phase("Aborted"), 300, "the second ca rotation taken back")
    await consumers_current(api, namespace)
    assert (await api.serials(namespace, "cp"))["ca"] == before, "the old CA signs again"


async def kill_the_leader_mid_rotation(api, namespace: str, operators: list[OperatorProcess]) -> None:
    """SIGKILL the leading replica once the rotation is under way; start it again as the standby."""
    async def preparing():
        rotation = ((await api.get("clusterpkis", "cp", namespace)).get("status") or {}).get("caRotation") or {}
        return rotation.get("phase") == "Preparing"
    await api.wait_for(preparing, 60, "the ca rotation Preparing")
    leader = next(o for o in operators if "Leading: holding the Lease" in o.log())
    leader.process.send_signal(signal.SIGKILL)
    leader.process.wait()
    leader.process = None
    await api.wait_for(lambda: any(o is not leader and "Leading: holding the Lease" in o.log() for o in operators),
                       30, "the standby leading")
    await asyncio.to_thread(leader.start)

