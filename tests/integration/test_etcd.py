"""A real etcd cluster boots from rendered ``pki/etcd/*`` with TLS and client-certificate auth on both
the client and the peer port, and refuses a client certificate from another CA."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane import free_port_block
from tests.helpers import document, render

pytestmark = pytest.mark.integration

ETCD, ETCDCTL = shutil.which("etcd"), shutil.which("etcdctl")
if not (ETCD and ETCDCTL):
    if os.environ.get("CI"):
        raise RuntimeError("etcd and etcdctl must be installed in CI (.ci/run installs etcd-server and etcd-client)")
    pytest.skip("etcd is not installed (apt-get install etcd-server etcd-client)", allow_module_level=True)

MEMBERS = ("cp-0", "cp-1")




def etcdctl(endpoints: list[str], pki: Path, client: str, *args: str,
            timeout: str = "5s") -> subprocess.CompletedProcess:
    return subprocess.run(
        [ETCDCTL, f"--endpoints={','.join(endpoints)}", f"--cacert={pki / 'etcd/ca.crt'}",
         f"--cert={pki / client}.crt", f"--key={pki / client}.key", "--dial-timeout=2s",
         f"--command-timeout={timeout}", *args],
        capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"}, timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[list[str], dict[str, Path]]]:
    """Two etcd members, each rendered into its own DIR with --etcd-member, sharing one etcd CA."""
    tmp = tmp_path_factory.mktemp("etcd")
    base = free_port_block(2 * len(MEMBERS))  # below the ephemeral range: a full run's clients took one once
    ports = {m: (base + 2 * i, base + 2 * i + 1) for i, m in enumerate(MEMBERS)}
    body = document("etcd-it", etcd={"members": [{"name": m, "ips": ["127.0.0.1"]} for m in MEMBERS]})
    dirs = {m: tmp / m for m in MEMBERS}
    assert render(tmp, dirs["cp-0"], body, "--etcd-member", "cp-0") == 0
    (dirs["cp-1"] / "pki/etcd").mkdir(parents=True)  # the second member brings the first's etcd CA
    for name in ("ca.crt", "ca.key"):
        shutil.copy2(dirs["cp-0"] / "pki/etcd" / name, dirs["cp-1"] / "pki/etcd" / name)
    assert render(tmp, dirs["cp-1"], body, "--etcd-member", "cp-1") == 0

    initial = ",".join(f"{m}=https://127.0.0.1:{ports[m][1]}" for m in MEMBERS)
    processes = []
    for member in MEMBERS:
        client, peer = ports[member]
        etcd_pki = dirs[member] / "pki/etcd"
        log = open(tmp / f"{member}.log", "w")
        processes.append((subprocess.Popen([
            ETCD, f"--name={member}", f"--data-dir={tmp / member / 'data'}",
            f"--listen-client-urls=https://127.0.0.1:{client}", f"--advertise-client-urls=https://127.0.0.1:{client}",
            f"--listen-peer-urls=https://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=https://127.0.0.1:{peer}",
            f"--initial-cluster={initial}", "--initial-cluster-state=new",
            f"--cert-file={etcd_pki / 'server.crt'}", f"--key-file={etcd_pki / 'server.key'}",
            f"--trusted-ca-file={etcd_pki / 'ca.crt'}", "--client-cert-auth",
            f"--peer-cert-file={etcd_pki / 'peer.crt'}", f"--peer-key-file={etcd_pki / 'peer.key'}",
            f"--peer-trusted-ca-file={etcd_pki / 'ca.crt'}", "--peer-client-cert-auth",
        ], stdout=log, stderr=subprocess.STDOUT), log))
    endpoints = [f"https://127.0.0.1:{ports[m][0]}" for m in MEMBERS]
    try:
        deadline = time.monotonic() + 30
        while True:
            health = etcdctl(endpoints, dirs["cp-0"] / "pki", "etcd/healthcheck-client", "endpoint", "health")
            if health.returncode == 0:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in processes):
                logs = "\n".join((tmp / f"{m}.log").read_text()[-2000:] for m in MEMBERS)
                pytest.fail(f"etcd did not become healthy: {health.stderr}\n{logs}")
            time.sleep(0.2)
        yield endpoints, dirs, tmp
    finally:
        for process, log in processes:  # the data is thrown away: no graceful leader hand-over needed
            process.kill()
            process.wait()
            log.close()


def rejections(tmp: Path) -> list[str]:
    """etcd's log lines for refused TLS clients on the first member."""
    return [line for line in (tmp / "cp-0.log").read_text().splitlines() if "rejected connection" in line]


def test_both_members_are_healthy_with_the_healthcheck_client(cluster):
    endpoints, dirs, _ = cluster
    result = etcdctl(endpoints, dirs["cp-1"] / "pki", "etcd/healthcheck-client", "endpoint", "health")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("is healthy") == 2  # etcdctl prints health on stderr


def test_members_joined_over_mutual_tls_peers(cluster):
    endpoints, dirs, _ = cluster
    result = etcdctl(endpoints, dirs["cp-0"] / "pki", "etcd/healthcheck-client", "member", "list")
    assert result.returncode == 0, result.stderr
    assert sorted(line.split(", ")[2] for line in result.stdout.splitlines()) == list(MEMBERS)
    assert all("started" in line for line in result.stdout.splitlines())


def test_the_apiserver_client_reads_and_writes(cluster):
    endpoints, dirs, _ = cluster
    pki = dirs["cp-0"] / "pki"
    assert etcdctl(endpoints, pki, "apiserver-etcd-client", "put", "/registry/probe", "ok").returncode == 0
    result = etcdctl(endpoints, pki, "apiserver-etcd-client", "get", "/registry/probe", "--print-value-only")
    assert result.stdout.strip() == "ok"


def test_a_client_certificate_from_another_ca_is_refused(cluster, tmp_path):
    endpoints, dirs, tmp = cluster
    stranger = tmp_path / "stranger"
    assert render(tmp_path, stranger, document("stranger")) == 0
    # Trust the real etcd CA (so the server is accepted), but present a client pair of another CA.
    (stranger / "pki/etcd/ca.crt").write_bytes((dirs["cp-0"] / "pki/etcd/ca.crt").read_bytes())
    before = len(rejections(tmp))
    result = etcdctl(endpoints[:1], stranger / "pki", "etcd/healthcheck-client", "get", "/registry/probe",
                     timeout="1s")
    assert result.returncode != 0
    refused = rejections(tmp)[before:]
    assert refused and "failed to verify client certificate" in refused[0]
    assert "certificate signed by unknown authority" in refused[0]


def test_a_cluster_ca_client_certificate_is_refused(cluster):
    """The apiserver's kubelet client is signed by the cluster CA, not the etcd CA: etcd must refuse it."""
    endpoints, dirs, tmp = cluster
    before = len(rejections(tmp))
    result = etcdctl(endpoints[:1], dirs["cp-0"] / "pki", "apiserver-kubelet-client", "get", "/registry/probe",
                     timeout="1s")
    assert result.returncode != 0
    assert "certificate signed by unknown authority" in rejections(tmp)[before]
