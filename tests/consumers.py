"""A control plane that consumes the agent's files: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler processes of one member, started from DIR (kubeadm's layout) with kubeadm v1.24's flags
where kubeadm has them (kube-controller-manager with every default controller, its CSR signer among
them, and leader election), and restarted by the agent's command restarter.

``python -m tests.consumers restart COMPONENT STATE`` stops the component's process (SIGTERM),
starts it again with the command in STATE/commands.json, waits until it is healthy, and appends
``start``/``end`` lines with times to STATE/restarts.log, so that a client load can tell a failure
during a restart of a single instance from one that must not happen.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HEALTH_TIMEOUT = 60
STAY = 2.0  # seconds a restarted kube-controller-manager or kube-scheduler must stay up to count as healthy


def commands(pki: Path, bin_dir: Path, state: Path, member: str, members: dict[str, tuple[int, int]],
             api_port: int | None, kcm_port: int = 0, scheduler_port: int = 0) -> dict:
    """The command line of each component of ``member``, reading kubeadm's files below ``pki``'s parent.

    ``members`` gives every etcd member's client and peer port; ``api_port``, when this member runs a
    kube-apiserver, its port. The apiserver talks to every etcd member, and on SIGTERM it fails
    ``/readyz`` for 2 s before it stops listening, so a load balancer takes it out of rotation first."""
    d, p = pki.parent, pki
    etcd_port, peer_port = members[member]
    found = {
        "etcd": ["etcd", "--name", member, "--data-dir", str(state / "etcd-data"),
                 "--listen-client-urls", f"https://127.0.0.1:{etcd_port}",
                 "--advertise-client-urls", f"https://127.0.0.1:{etcd_port}",
                 "--listen-peer-urls", f"https://127.0.0.1:{peer_port}",
                 "--initial-advertise-peer-urls", f"https://127.0.0.1:{peer_port}",
                 "--initial-cluster", ",".join(f"{m}=https://127.0.0.1:{peer}" for m, (_, peer) in members.items()),
                 "--initial-cluster-state", "new", "--initial-cluster-token", f"proof-{os.getpid()}",
                 "--cert-file", f"{p}/etcd/server.crt", "--key-file", f"{p}/etcd/server.key",
                 "--trusted-ca-file", f"{p}/etcd/ca.crt", "--client-cert-auth",
                 "--peer-cert-file", f"{p}/etcd/peer.crt", "--peer-key-file", f"{p}/etcd/peer.key",
                 "--peer-trusted-ca-file", f"{p}/etcd/ca.crt", "--peer-client-cert-auth"],
        "kube-controller-manager": [  # kubeadm v1.24's flags, the port aside
            str(bin_dir / "kube-controller-manager"), f"--authentication-kubeconfig={d}/controller-manager.conf",
            f"--authorization-kubeconfig={d}/controller-manager.conf", "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}", f"--cert-dir={state / 'kcm-certdir'}",
            f"--client-ca-file={p}/ca.crt", "--cluster-name=kubernetes",
            f"--cluster-signing-cert-file={p}/ca.crt", f"--cluster-signing-key-file={p}/ca.key",
            "--controllers=*,bootstrapsigner,tokencleaner", f"--kubeconfig={d}/controller-manager.conf",
            "--leader-elect=true", f"--requestheader-client-ca-file={p}/front-proxy-ca.crt",
            f"--root-ca-file={p}/ca.crt", f"--service-account-private-key-file={p}/sa.key",
            "--use-service-account-credentials=true"],
        "kube-scheduler": [  # kubeadm v1.24's flags, the port aside
            str(bin_dir / "kube-scheduler"), f"--authentication-kubeconfig={d}/scheduler.conf",
            f"--authorization-kubeconfig={d}/scheduler.conf", "--bind-address=127.0.0.1",
            f"--secure-port={scheduler_port}", f"--cert-dir={state / 'scheduler-certdir'}",
            f"--kubeconfig={d}/scheduler.conf", "--leader-elect=true"],
    }
    if api_port is not None:
        found["kube-apiserver"] = [
            str(bin_dir / "kube-apiserver"),
            "--etcd-servers=" + ",".join(f"https://127.0.0.1:{client}" for client, _ in members.values()),
            f"--etcd-cafile={p}/etcd/ca.crt", f"--etcd-certfile={p}/apiserver-etcd-client.crt",
            f"--etcd-keyfile={p}/apiserver-etcd-client.key",
            "--bind-address=127.0.0.1", f"--secure-port={api_port}", "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none", "--shutdown-delay-duration=2s", f"--tls-cert-file={p}/apiserver.crt",
            f"--tls-private-key-file={p}/apiserver.key", f"--client-ca-file={p}/ca.crt",
            f"--service-account-key-file={p}/sa.pub", f"--service-account-signing-key-file={p}/sa.key",
            "--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/12",
            f"--requestheader-client-ca-file={p}/front-proxy-ca.crt", "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={p}/front-proxy-client.crt", f"--proxy-client-key-file={p}/front-proxy-client.key",
            f"--kubelet-client-certificate={p}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={p}/apiserver-kubelet-client.key",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",  # kubeadm's, as below
            "--enable-bootstrap-token-auth=true", "--allow-privileged=true",
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname", f"--cert-dir={state / 'certdir'}"]
    return found


def start(component: str, state: Path) -> None:
    healthy(component, state, launch(component, state))


def launch(component: str, state: Path) -> subprocess.Popen:
    """Start the component without waiting for its health: the members of a new etcd cluster must all
    be started before any of them is healthy."""
    argv = json.loads((state / "commands.json").read_text())[component]
    log = open(state / f"{component}.log", "ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (state / f"{component}.pid").write_text(str(process.pid))
    return process


def stop(component: str, state: Path) -> None:
    pid_file = state / f"{component}.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink()


def healthy(component: str, state: Path, process: subprocess.Popen) -> None:
    config = json.loads((state / "config.json").read_text())
    pki = Path(config["pki"])
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{component} exited {process.returncode}; see {state / (component + '.log')}")
        try:
            if component == "etcd":
                result = subprocess.run(["etcdctl", f"--endpoints=https://127.0.0.1:{config['etcd_port']}",
                                         f"--cacert={pki}/etcd/ca.crt", f"--cert={pki}/etcd/healthcheck-client.crt",
                                         f"--key={pki}/etcd/healthcheck-client.key", "endpoint", "health"],
                                        capture_output=True, timeout=5, env={**os.environ, "ETCDCTL_API": "3"})
                if result.returncode == 0:
                    return
            elif component == "kube-apiserver":
                context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
                context.load_cert_chain(str(pki / "apiserver-kubelet-client.crt"), str(pki / "apiserver-kubelet-client.key"))
                with urllib.request.urlopen(f"https://127.0.0.1:{config['api_port']}/readyz", context=context,
                                            timeout=5) as response:
                    if response.status == 200:
                        return
            elif stays_healthy(process, config["ports"][component]):
                return
        except (OSError, ssl.SSLError, subprocess.TimeoutExpired):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{component} was not healthy within {HEALTH_TIMEOUT}s")


def stays_healthy(process: subprocess.Popen, port: int) -> bool:
    """``/healthz`` answers 200, and still does after STAY seconds without the process having exited:
    kube-controller-manager answers its first /healthz before it starts its controllers, and a controller
    that cannot start (a signing file of two certificates) makes it exit only then."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # its own self-signed certificate
    for _ in range(2):
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=context, timeout=5) as response:
            if response.status != 200 or process.poll() is not None:
                return False
        time.sleep(STAY)
    return process.poll() is None


def restart(component: str, state: Path) -> None:
    with open(state / "restarts.log", "a") as log:
        log.write(f"start {component} {time.time()}\n")
    try:
        stop(component, state)
        start(component, state)
    finally:
        with open(state / "restarts.log", "a") as log:
            log.write(f"end {component} {time.time()}\n")


def windows(state: Path) -> list[tuple[str, float, float]]:
    """The restarts so far: (component, started, ended)."""
    found, open_at = [], {}
    path = state / "restarts.log"
    for line in (path.read_text().splitlines() if path.exists() else []):
        what, component, at = line.split()
        if what == "start":
            open_at[component] = float(at)
        elif component in open_at:
            found.append((component, open_at.pop(component), float(at)))
    return found


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "restart":
        raise SystemExit("usage: python -m tests.consumers restart COMPONENT STATE")
    restart(sys.argv[2], Path(sys.argv[3]))
