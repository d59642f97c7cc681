"""A fresh three-member etcd comes up from its agents alone, on real etcd: nothing runs and no file
exists when the agents start. Each writes its member's files and starts its etcd (through the command
restarter of ``tests/consumers.py``, which waits for etcd's health). A member alone is never healthy
without a quorum, so a start must not wait for the restart Lease or for the other members' health:
an instance that does not run is started at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests import consumers, proof
from tests.controlplane import free_port_block
from tests.e2e.conftest import pki
from tests.helpers import REPO

MEMBERS = ("m0", "m1", "m2")


async def test_a_new_etcd_cluster_starts_from_its_agents_alone(cluster, operator, api, namespace, tmp_path):
    base = free_port_block(6)
    ports = {name: (base + 2 * i, base + 2 * i + 1) for i, name in enumerate(MEMBERS)}
    body = pki("cp", namespace, etcd={"members": [{"name": name, "ips": ["127.0.0.1"]} for name in MEMBERS]})
    await api.apply_pki(body)
    await api.ready(namespace, "cp")
    kubeconfigs = proof.agent_kubeconfigs(cluster, body, tmp_path)
    agents, states = [], {}
    try:
        for name in MEMBERS:
            out, state = tmp_path / name / "kubernetes", tmp_path / name / "state"
            state.mkdir(parents=True)
            commands = consumers.commands(out / "pki", proof.bin_dir(), state, name, ports, None)
            (state / "commands.json").write_text(json.dumps({"etcd": commands["etcd"]}))
            (state / "config.json").write_text(json.dumps({"pki": str(out / "pki"), "etcd_port": ports[name][0]}))
            states[name] = state
            restart = f"{sys.executable} -m tests.consumers restart etcd {state}"
            log = open(state / "agent.log", "ab")
            agents.append(await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "clusterpki"), "agent", "-n", namespace, "cp", "--dir", str(out),
                "--member", name, "--component", "etcd", "--health", f"etcd=https://127.0.0.1:{ports[name][0]}/health",
                "--healthy-for", "1", "--restart", "command", "--restart-command", restart, cwd=REPO, stdout=log,
                stderr=log, env={**os.environ, "KUBECONFIG": str(kubeconfigs[name])}))

        async def all_current():
            entries = ((await api.get("clusterpkis", "cp", namespace)).get("status") or {}).get("consumers") or []
            return len(entries) == 3 and all(e["current"] for e in entries)
        await api.wait_for(all_current, 120, "every etcd member started and reporting")
        pki_dir = tmp_path / "m0" / "kubernetes" / "pki"
        health = subprocess.run(
            ["etcdctl", "--endpoints=" + ",".join(f"https://127.0.0.1:{c}" for c, _ in ports.values()),
             f"--cacert={pki_dir}/etcd/ca.crt", f"--cert={pki_dir}/etcd/healthcheck-client.crt",
             f"--key={pki_dir}/etcd/healthcheck-client.key", "endpoint", "health"],
            capture_output=True, text=True, timeout=30, env={**os.environ, "ETCDCTL_API": "3"})
        said = health.stdout + health.stderr
        assert health.returncode == 0 and said.count("is healthy") == 3, said
        for name in MEMBERS:
            assert "starting etcd, which does not run" in (states[name] / "agent.log").read_text()
    finally:
        for agent in agents:
            agent.terminate()
            await agent.wait()
        for state in states.values():
            consumers.stop("etcd", state)
