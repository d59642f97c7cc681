"""kubectl, a real Go TLS client, logs in with each rendered kubeconfig to a server that presents the
rendered apiserver certificate and requires client certificates from the rendered cluster CA.

No kube-apiserver binary is installable here, so the server is a small TLS endpoint answering
``/version``; it records each client's verified subject, which is what kube-apiserver's x509
authenticator maps to a user (CN) and groups (O)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.helpers import document, render

pytestmark = pytest.mark.integration

KUBECTL = shutil.which("kubectl")
if not KUBECTL:
    if os.environ.get("CI"):
        raise RuntimeError("kubectl must be installed in CI")
    pytest.skip("kubectl is not installed", allow_module_level=True)


class _Recorder(BaseHTTPRequestHandler):
    subjects: list[dict[str, list[str]]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        cert = self.connection.getpeercert()
        subject: dict[str, list[str]] = {}
        for rdn in cert["subject"]:
            for key, value in rdn:
                subject.setdefault(key, []).append(value)
        self.subjects.append(subject)
        body = json.dumps({"major": "1", "minor": "31", "gitVersion": "v1.31.0"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[Path, int]]:
    tmp = tmp_path_factory.mktemp("kubectl")
    out = tmp / "out"
    assert render(tmp, out, document("kc", controlPlaneEndpoint="127.0.0.1:6443")) == 0
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(out / "pki/apiserver.crt", out / "pki/apiserver.key")
    context.load_verify_locations(out / "pki/ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield out, httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("kubeconfig, user, groups", [
    ("admin.conf", "kubernetes-admin", ["system:masters"]),
    ("scheduler.conf", "system:kube-scheduler", []),
    ("controller-manager.conf", "system:kube-controller-manager", []),
    ("kube-proxy.conf", "system:kube-proxy", []),
])
def test_kubectl_logs_in_with_each_kubeconfig(server, tmp_path, kubeconfig, user, groups):
    out, port = server
    config = yaml.safe_load((out / kubeconfig).read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://127.0.0.1:6443"
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"  # the test server's port
    path = tmp_path / kubeconfig
    path.write_text(yaml.safe_dump(config))
    _Recorder.subjects.clear()
    result = subprocess.run([KUBECTL, "--kubeconfig", str(path), "version", "--output=json"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["serverVersion"]["gitVersion"] == "v1.31.0"
    assert _Recorder.subjects, "kubectl never reached the server"
    assert _Recorder.subjects[0] == {"commonName": [user], **({"organizationName": groups} if groups else {})}


def test_kubectl_refuses_a_server_outside_the_sans(server, tmp_path):
    """The apiserver certificate is bound to its SANs: 'localhost' is not one of them by default."""
    out, port = server
    config = yaml.safe_load((out / "admin.conf").read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://localhost:{port}"
    path = tmp_path / "admin.conf"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([KUBECTL, "--kubeconfig", str(path), "version", "--output=json"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "certificate is valid for" in result.stderr and "not localhost" in result.stderr
