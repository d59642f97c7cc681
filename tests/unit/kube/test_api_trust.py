"""The API client follows a CA file through a rotation: a server certificate that fails verification
drops the session, and the next request reads the CA file again. A local TLS server plays the
apiserver (what matters is the client's TLS handling, which no API emulator exercises)."""

from __future__ import annotations

import ipaddress
import ssl
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from clusterpki.kube.api import Api, ApiError
from clusterpki.pki import certificates, engine, keys, kubeconfig, spec, times
from kubernetes import client

from tests.helpers import document


async def test_a_new_ca_in_the_ca_file_is_taken_after_a_verification_failure(tmp_path: Path):
    now = times.now()
    old, new = (engine.build(spec.from_resource(document("p")), engine.Existing(), now).cas["ca"] for _ in range(2))
    key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    leaf = certificates.sign_leaf(certificates.Identity("apiserver", usages=(certificates.SERVER_AUTH,),
                                                        ips=(ipaddress.ip_address("127.0.0.1"),)),
                                  key.public_key(), new, timedelta(hours=1), now)
    (tmp_path / "tls.crt").write_bytes(kubeconfig.pem_bundle([leaf]))
    (tmp_path / "tls.key").write_bytes(keys.private_pem(key))
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    async def version(_: web.Request) -> web.Response:
        return web.json_response({"gitVersion": "v1.24.0"})
    app = web.Application()
    app.router.add_get("/version", version)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=served)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(kubeconfig.pem_bundle([old.cert]))  # the client still trusts the old CA
    configuration = client.Configuration(host=f"https://127.0.0.1:{port}")
    configuration.ssl_ca_cert = str(ca_file)
    api = Api(configuration)
    try:
        with pytest.raises(ApiError, match="ClientConnectorCertificateError"):
            await api.request("get", "the version", "GET", "/version")
        ca_file.write_bytes(kubeconfig.pem_bundle([new.cert]))  # the kubelet updates the projected ca.crt
        assert (await api.request("get", "the version", "GET", "/version"))["gitVersion"] == "v1.24.0"
    finally:
        await api.close()
        await runner.cleanup()
