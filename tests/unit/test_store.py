"""The Secrets store's call mechanics, without a server."""

from __future__ import annotations

import threading

from kubernetes import client

from clusterpki.store import ApiError, SecretStore


class Response:
    """What the client returns with ``_preload_content=False``: the body is read on access."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.readers: list[threading.Thread] = []

    @property
    def data(self) -> bytes:
        self.readers.append(threading.current_thread())
        return self.body


async def test_a_response_is_read_and_parsed_in_the_pool_not_on_the_event_loop():
    """Reading it on the loop would block the loop and hold the connection out of the pool."""
    store = SecretStore(client.Configuration())
    response = Response(b'{"kind": "Secret"}')
    try:
        assert await store._call("get", "Secret a/b", lambda **_: response) == {"kind": "Secret"}
    finally:
        store.close()
    assert response.readers and threading.current_thread() not in response.readers


async def test_an_unparsable_body_is_an_api_error_that_quotes_nothing_of_it():
    store = SecretStore(client.Configuration())
    try:
        await store._call("get", "Secret a/b", lambda **_: Response(b"tls.key: secret-bytes"))
    except ApiError as exc:
        assert "secret-bytes" not in str(exc) and exc.status == 0
        assert exc.__context__ is None and exc.__cause__ is None  # the JSON error's .doc is the body
    else:
        raise AssertionError("an unparsable body was accepted")
    finally:
        store.close()
