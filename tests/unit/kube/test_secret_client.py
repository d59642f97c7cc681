"""The Secret client's request mechanics against a local HTTP server: errors say nothing of the bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from clusterpki.kube.api import Api, ApiError
from clusterpki.kube.secret_client import SecretClient
from kubernetes import client


@pytest.fixture
async def server() -> AsyncIterator[dict]:
    """A server answering every request with the response in ``replies['next']``."""
    replies: dict = {}

    async def answer(request: web.Request) -> web.Response:
        replies["seen"] = request
        status, body = replies["next"]
        return web.Response(status=status, body=body, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    replies["url"] = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    try:
        yield replies
    finally:
        await runner.cleanup()


def store_for(url: str, token: str = "t0ken") -> SecretClient:
    configuration = client.Configuration()
    configuration.host = url
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return SecretClient(Api(configuration))


async def test_a_request_carries_the_token_and_returns_the_parsed_body(server):
    store = store_for(server["url"])
    server["next"] = (200, b'{"kind": "Secret", "metadata": {"name": "x"}}')
    try:
        assert (await store.get("ns", "x"))["kind"] == "Secret"
    finally:
        await store.api.close()
    assert server["seen"].headers["Authorization"] == "Bearer t0ken"
    assert server["seen"].headers["User-Agent"].startswith("clusterpki/")
    assert server["seen"].path == "/api/v1/namespaces/ns/secrets/x"


async def test_an_error_is_the_server_s_reason_and_a_missing_secret_is_none(server):
    store = store_for(server["url"])
    try:
        server["next"] = (404, b'{"kind": "Status", "reason": "NotFound", "message": "secrets \\"x\\" not found"}')
        assert await store.get("ns", "x") is None
        server["next"] = (409, b'{"kind": "Status", "reason": "Conflict", "message": "the object has been modified"}')
        with pytest.raises(ApiError) as raised:
            await store.replace({"metadata": {"namespace": "ns", "name": "x"}, "data": {"tls.key": "c2VjcmV0"}})
        assert str(raised.value) == "replace Secret ns/x failed: HTTP 409 Conflict: the object has been modified"
        assert "c2VjcmV0" not in str(raised.value)
    finally:
        await store.api.close()


async def test_an_unparsable_body_is_an_api_error_that_quotes_nothing_of_it(server):
    store = store_for(server["url"])
    try:
        for status in (200, 500):
            server["next"] = (status, b"tls.key: secret-bytes")
            with pytest.raises(ApiError) as raised:
                await store.get("ns", "x")
            assert "secret-bytes" not in str(raised.value) and raised.value.status == status
            assert raised.value.__context__ is None and raised.value.__cause__ is None  # .doc would be the body
    finally:
        await store.api.close()


async def test_an_unreachable_server_is_an_api_error():
    store = store_for("http://127.0.0.1:1")
    try:
        with pytest.raises(ApiError) as raised:
            await store.list("ns", "x")
        assert raised.value.status == 0 and "ClientConnectorError" in str(raised.value)
    finally:
        await store.api.close()
