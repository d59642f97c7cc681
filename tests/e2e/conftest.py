"""End-to-end tests on a real, disposable cluster named by ``CLUSTERPKI_E2E_KUBECONFIG``.

They install ``crds/`` and ``manifests/`` with that (admin) kubeconfig, then run the operator as the
manifests' ServiceAccount with a token from ``kubectl create token`` (neither Kopf nor the Kubernetes
client honour kubeconfig impersonation). They work only in namespaces they create, and delete those.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ADMIN_KUBECONFIG = os.environ.get("CLUSTERPKI_E2E_KUBECONFIG")

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    not ADMIN_KUBECONFIG, reason="CLUSTERPKI_E2E_KUBECONFIG does not name a disposable cluster")]


def kubectl(*args: str, stdin: str | None = None, kubeconfig: str | None = None, check: bool = True) -> str:
    result = subprocess.run(["kubectl", f"--kubeconfig={kubeconfig or ADMIN_KUBECONFIG}", *args],
                            input=stdin, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def kubectl_json(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def wait_for(probe: Callable[[], Any], timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def installed() -> None:
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterpkis.pki.clusterpki.dev")
    kubectl("apply", "-f", str(REPO / "manifests"))


@pytest.fixture(scope="session")
def operator_kubeconfig(installed: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for the cluster that authenticates as the ServiceAccount of manifests/."""
    token = kubectl("-n", "clusterpki-system", "create", "token", "clusterpki", "--duration=2h").strip()
    admin = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
    cluster = admin["clusters"][0]["cluster"]
    path = tmp_path_factory.mktemp("e2e") / "operator.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": "clusterpki", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "e2e", "user": "clusterpki"}}],
    }))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def namespace(installed: None) -> Iterator[str]:
    name = f"clusterpki-e2e-{secrets.token_hex(3)}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


class OperatorProcess:
    """``clusterpki run`` as a process, authenticated as the operator's ServiceAccount."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, extra: tuple[str, ...] = ()) -> None:
        self.kubeconfig, self.namespace, self.log_path, self.extra = kubeconfig, namespace, log, extra
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clusterpki", "run", "-n", self.namespace, "--standalone",
             "--liveness", f"http://127.0.0.1:{port}/healthz", *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        log.close()
        wait_for(lambda: self._healthy(port), 30, "the operator's liveness endpoint")

    def _healthy(self, port: int) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text()


@pytest.fixture(scope="module")
def operator(operator_kubeconfig: Path, namespace: str, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    process = OperatorProcess(operator_kubeconfig, namespace, tmp_path_factory.mktemp("log") / "operator.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()
