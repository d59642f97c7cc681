"""``clusterpki run`` as a process against the emulator, and the metrics it serves on /metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.operator.test_issuance import LEAVES, pki


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_run_serves_the_metric_families(api, emulator, kubeconfig, tmp_path):
    metrics_port, health_port = free_port(), free_port()
    log = open(tmp_path / "operator.log", "w")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterpki", "run", "-A", "--standalone", "--metrics-port", str(metrics_port),
        "--liveness", f"http://127.0.0.1:{health_port}/healthz", stdout=log, stderr=log,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    try:
        async with aiohttp.ClientSession() as session:
            async def healthy():
                try:
                    async with session.get(f"http://127.0.0.1:{health_port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False
            await api.wait_for(healthy, timeout=20, what="the liveness endpoint")
            await api.apply_pki(pki("alpha"))
            await api.apply_pki(pki("broken", serviceCIDR="nope"))
            obj = await api.ready("team-a", "alpha")
            await api.ready("team-a", "broken", status="False")
            async with session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response:
                text = await response.text()
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 30)
        log.close()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))))

    entries = {e["name"]: e for e in obj["status"]["certificates"]}
    apiserver = dict(namespace="team-a", cluster_pki="alpha", component="apiserver", issuer="ca")
    not_after = time.mktime(time.strptime(entries["apiserver"]["notAfter"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert value("clusterpki_certificate_not_after_timestamp_seconds", **apiserver) == not_after
    assert value("clusterpki_certificate_renewal_timestamp_seconds", **apiserver) < not_after
    assert value("clusterpki_ready", namespace="team-a", cluster_pki="alpha") == 1
    assert value("clusterpki_ready", namespace="team-a", cluster_pki="broken") == 0
    assert value("clusterpki_issuance_total", namespace="team-a", cluster_pki="alpha",
                 reason="new") == len(LEAVES) + 4  # leaves, 3 CAs and the SA key
    assert value("clusterpki_reconcile_errors_total", namespace="team-a", cluster_pki="broken",
                 reason="InvalidSpec") >= 1
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"clusterpki_certificate_not_after_timestamp_seconds", "clusterpki_certificate_renewal_timestamp_seconds",
            "clusterpki_ready", "clusterpki_issuance", "clusterpki_reconcile_errors",
            "clusterpki_csr_decisions"} <= families  # counters are named without _total here
