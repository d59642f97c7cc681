"""The agent's health probe: 200 is healthy; any other answer, or none, says why not."""

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clusterpki.agent import health
from tests.runners import free_port


@pytest.fixture
def server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200 if self.path == "/readyz" else 500)
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


async def test_200_is_healthy_and_anything_else_says_why(server, tmp_path):
    assert await health.problem("kube-apiserver", f"{server}/readyz", tmp_path) is None
    assert await health.problem("kube-apiserver", f"{server}/livez", tmp_path) == f"{server}/livez answers HTTP 500"
    url = f"http://127.0.0.1:{free_port()}/readyz"
    assert await health.problem("kube-apiserver", url, tmp_path) == f"{url} does not answer (ClientConnectorError)"


async def test_down_means_nothing_listens_and_an_unhealthy_instance_is_not_down(server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert await health.down(f"https://127.0.0.1:{free}/readyz", interval=0.01)
    assert not await health.down(f"{server}/anything", interval=0.01), "it answers (even 500): it runs"
