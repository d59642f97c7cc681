"""A token rotated on disk (a pod's projected token; a kubeconfig's ``tokenFile``) is followed: the server's
401 reads the credentials afresh and tries once more, and nothing is retried without a way to reload."""

from __future__ import annotations

import json

from aiohttp import web

from clusterpki.kube.api import Api, ApiError, configuration_of


async def test_a_401_reads_the_token_file_afresh_and_tries_once_more(tmp_path):
    seen: list[str] = []
    valid = ["token-a"]

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        ok = request.headers.get("Authorization") == f"Bearer {valid[0]}"
        return web.json_response({"ok": True} if ok else {"reason": "Unauthorized"}, status=200 if ok else 401)

    app = web.Application()
    app.router.add_get("/x", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    token = tmp_path / "token"
    token.write_text("token-a")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"tokenFile": str(token)}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    following = Api(configuration_of(kubeconfig), reload=lambda: configuration_of(kubeconfig))
    fixed = Api(configuration_of(kubeconfig))
    try:
        for client in (following, fixed):
            assert await client.request("get", "x", "GET", "/x") == {"ok": True}
        token.write_text("token-b")  # rotated, and the old one revoked, while the clients run
        valid[0] = "token-b"
        seen.clear()
        assert await following.request("get", "x", "GET", "/x") == {"ok": True}
        assert seen == ["Bearer token-a", "Bearer token-b"]
        seen.clear()
        try:
            await fixed.request("get", "x", "GET", "/x")
            raise AssertionError("a client without a way to reload has only its first token")
        except ApiError as exc:
            assert exc.status == 401 and seen == ["Bearer token-a"]
    finally:
        await following.close()
        await fixed.close()
        await runner.cleanup()
