"""Restarts roll across members, on the real apiserver: two agents (members m0 and m1) with the manifests'
Role, each restarting its kube-scheduler through a command of this test's. The command records when each
restart runs; a health endpoint of this test's stands for each member's instance, so a test can make one
unhealthy, and a flag file makes one member's restart fail.

Real components are restarted by the HA proof (``test_ha.py``); here the command is the better tool,
because a test needs to make a restart fail, or a member unhealthy, on purpose."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import pki
from tests.proof import agent_kubeconfigs
from tests.helpers import REPO

RESTART = ('echo "start $(date +%s.%N)" >> {log}; sleep 1; '
           'if [ -e {fail} ]; then echo "no config"; exit 1; fi; echo "end $(date +%s.%N)" >> {log}')


class Health:
    """A member's health endpoint, answering 200 or 500 as the test says."""

    def __init__(self) -> None:
        self.ok = True
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200 if health.ok else 500)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/healthz"


class Member:
    def __init__(self, name: str, tmp: Path) -> None:
        self.name, self.dir = name, tmp / name
        self.log, self.fail = tmp / f"{name}.restarts", tmp / f"{name}.fail"
        self.health = Health()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, namespace: str, kubeconfig: Path) -> None:
        self.dir.mkdir(exist_ok=True)
        output = open(self.dir.parent / f"{self.name}.agent.log", "ab")
        self.process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "clusterpki"), "agent", "-n", namespace, "cp", "--dir", str(self.dir),
            "--member", self.name, "--component", "kube-scheduler",
            "--health", f"kube-scheduler={self.health.url}", "--healthy-for", "0.5", "--restart-interval", "0",
            "--restart", "command",
            "--restart-command", RESTART.format(log=self.log, fail=self.fail), cwd=REPO, stdout=output,
            stderr=output, env={**os.environ, "KUBECONFIG": str(kubeconfig)})

    async def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            await self.process.wait()
            self.process = None
        self.health.server.shutdown()

    def windows(self) -> list[tuple[float, float]]:
        lines = self.log.read_text().split("\n") if self.log.exists() else []
        starts = [float(line.split()[1]) for line in lines if line.startswith("start")]
        ends = [float(line.split()[1]) for line in lines if line.startswith("end")]
        return list(zip(starts, ends, strict=False))


BODY = {"etcd": {"members": [{"name": "m0", "ips": ["127.0.0.1"]}, {"name": "m1", "ips": ["127.0.0.1"]}]}}


@pytest.fixture
def kubeconfig(cluster, namespace, tmp_path) -> dict[str, Path]:
    """Each member's agent credentials."""
    return agent_kubeconfigs(cluster, pki("cp", namespace, **BODY), tmp_path)


@pytest.fixture
async def members(tmp_path) -> AsyncIterator[list[Member]]:
    found = [Member("m0", tmp_path), Member("m1", tmp_path)]
    try:
        yield found
    finally:
        for member in found:
            await member.stop()


async def status(api, namespace: str) -> dict:
    return (await api.get("clusterpkis", "cp", namespace)).get("status") or {}


async def all_current(api, namespace: str) -> bool:
    entries = (await status(api, namespace)).get("consumers") or []
    return len(entries) == 2 and all(e["current"] for e in entries)


def condition(found: dict, kind: str) -> dict | None:
    return next((c for c in found.get("conditions") or [] if c["type"] == kind), None)


async def renew(api, namespace: str, nonce: str) -> None:
    await api.patch("clusterpkis", "cp", {"metadata": {"annotations": {
        "pki.clusterpki.dev/renew": f"kube-scheduler@{nonce}"}}}, namespace)


async def test_members_restart_one_at_a_time_and_a_failure_stops_the_roll(operator, api, namespace, kubeconfig,
                                                                          members):
    await api.apply_pki(pki("cp", namespace, **BODY))
    await api.ready(namespace, "cp")
    for member in members:
        await member.start(namespace, kubeconfig[member.name])
    await api.wait_for(lambda: all_current(api, namespace), 30, "both agents reporting")

    before = [len(m.windows()) for m in members]  # their first rounds restarted them already
    await renew(api, namespace, "one")
    await api.wait_for(lambda: all(len(m.windows()) == n + 1 for m, n in zip(members, before, strict=True)), 60,
                       "both members restarted")
    for a_start, a_end in members[0].windows():
        for b_start, b_end in members[1].windows():
            assert a_end <= b_start or b_end <= a_start, "two members restarted the same component at once"
    await api.wait_for(lambda: all_current(api, namespace), 30, "both members current")
    healthy = condition(await status(api, namespace), "RestartsHealthy")
    assert healthy["status"] == "True", healthy

    members[1].fail.touch()
    members[0].fail.touch()
    await renew(api, namespace, "two")

    async def stopped():
        found = condition(await status(api, namespace), "RestartsHealthy")
        return found if found and found["status"] == "False" else None
    failed = await api.wait_for(stopped, 60, "the RestartsHealthy condition to turn False")
    assert failed["reason"] == "RestartFailed" and "no config" in failed["message"], failed
    first = "m0" if "m0/kube-scheduler" in failed["message"] else "m1"
    other = members[1] if first == "m0" else members[0]
    await asyncio.sleep(4)
    entries = {e["name"]: e for e in (await status(api, namespace))["consumers"]}
    assert entries[f"{other.name}/kube-scheduler"].get("restart", {}).get("state") == "Waiting", \
        "the other member waits while the failed one holds the turn"
    assert other.log.read_text().count("start") == before[members.index(other)] + 1, "the roll stopped"
    assert await api.has_event(namespace, "RestartFailed", kind="Warning")

    for member in members:
        member.fail.unlink()
    await api.wait_for(lambda: all_current(api, namespace), 60, "the roll finishing once the restart succeeds")
    healthy = condition(await status(api, namespace), "RestartsHealthy")
    assert healthy["status"] == "True", healthy


async def test_a_restart_waits_for_the_other_members_to_be_healthy(operator, api, namespace, kubeconfig, members):
    await api.apply_pki(pki("cp", namespace, **BODY))
    await api.ready(namespace, "cp")
    for member in members:
        await member.start(namespace, kubeconfig[member.name])
    await api.wait_for(lambda: all_current(api, namespace), 30, "both agents reporting")
    down, up = members
    down.process.terminate()
    await down.process.wait()
    down.process = None
    down.health.ok = False
    restarted = len(up.windows())  # its first round restarted it, with the files written for the first time

    await renew(api, namespace, "one")

    async def waiting():
        entries = {e["name"]: e for e in (await status(api, namespace)).get("consumers") or []}
        return entries.get("m1/kube-scheduler", {}).get("restart")
    why = await api.wait_for(waiting, 30, "m1 waiting for m0's health")
    assert (why["state"], why["reason"]) == ("Waiting", "PeerUnhealthy"), why
    assert why["message"].startswith("the kube-scheduler of m0 is not healthy: ") and "HTTP 500" in why["message"], why
    assert len(up.windows()) == restarted

    down.health.ok = True
    await api.wait_for(lambda: len(up.windows()) == restarted + 1, 30, "m1 restarting once m0 is healthy")
