"""Requests to the Kubernetes API: the operator's, the CLI's and the CSR handlers' one transport.

Credentials come from the official client (kubeconfig, in-cluster service account, token refresh);
requests go over aiohttp, Kopf's own HTTP library, on the event loop: no thread pool, and callers
work with plain dicts. Errors are re-raised as :class:`ApiError` carrying only the status and the
server's reason, so no request body (which may hold private keys) can reach a log line or an
exception message.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes import client, config

from clusterpki import __version__
from clusterpki.errors import UserError

CONNECTIONS = 32  # requests in flight at once
READ_BUFFER = 2**20  # a watch event is one line, and a Node's can be large (its images); lines up to twice this
TIMEOUT = aiohttp.ClientTimeout(total=60)
AUTH_REFRESH = 60  # seconds between looks at the credentials (a projected token is rotated on disk)
MERGE_PATCH = "application/merge-patch+json"
PARTIAL_METADATA = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
PARTIAL_METADATA_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json"


class ApiError(Exception):
    """An API call that failed; ``str()`` is safe to log and to show in an Event."""

    def __init__(self, verb: str, what: str, status: int, reason: str) -> None:
        super().__init__(f"{verb} {what} failed: HTTP {status} {reason}".rstrip())
        self.status = status
        self.reason = reason
        self.what = what

    @property
    def namespace_terminating(self) -> bool:
        """The namespace is being deleted: the apiserver refuses anything new in it, for good."""
        return self.status == 403 and "because it is being terminated" in self.reason


@dataclass(frozen=True)
class Source:
    """Where the credentials come from: ``--kubeconfig`` and ``--context`` when given, else client-go's
    order: ``KUBECONFIG``, the in-cluster service account in a pod, ``~/.kube/config``."""
    kubeconfig: str | None = None
    context: str | None = None

    def describe(self) -> str:
        """The place, for an error message: a flag, a variable or a file, never what it holds."""
        context = f" (context {self.context})" if self.context else ""
        if self.kubeconfig:
            return f"--kubeconfig {self.kubeconfig}{context}"
        if os.environ.get("KUBECONFIG"):
            return f"KUBECONFIG={os.environ['KUBECONFIG']}{context}"
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not self.context:
            return "the pod's service account"
        return f"~/.kube/config{context}"


_source = Source()


def source() -> Source:
    """Where the credentials come from now."""
    return _source


def use(chosen: Source) -> None:
    """Take the credentials from ``chosen`` from now on (the CLI's ``--kubeconfig`` and ``--context``)."""
    global _source
    _source = chosen


def load_configuration() -> client.Configuration:
    """The credentials of the chosen :class:`Source`, read now (a token or certificate rotated on disk is
    read afresh). A problem is one line that names where they were looked for."""
    source, configuration = _source, client.Configuration()
    kubeconfig = source.kubeconfig or os.environ.get("KUBECONFIG")
    if kubeconfig and not any(Path(f).is_file() for f in kubeconfig.split(os.pathsep) if f):
        raise UserError(f"cannot load Kubernetes credentials from {source.describe()}: no such file")
    try:
        if kubeconfig or source.context:
            config.load_kube_config(config_file=kubeconfig, context=source.context,
                                    client_configuration=configuration)
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
    except config.ConfigException as exc:  # worded by the client: names and paths, never a token or key
        raise UserError(f"cannot load Kubernetes credentials from {source.describe()}: "
                        f"{_missing_context(source, kubeconfig) or exc}") from None
    except Exception as exc:  # unreadable YAML, a missing file...: its text may quote the file, so not shown
        raise UserError(f"cannot load Kubernetes credentials from {source.describe()}: "
                        f"{getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    return configuration


def _missing_context(source: Source, kubeconfig: str | None) -> str | None:
    """kubectl's words for a ``--context`` the kubeconfig does not have, with the ones it has."""
    try:
        contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception:  # noqa: BLE001 (unreadable: the client's own words stand)
        return None
    names = [c.get("name") for c in contexts or [] if isinstance(c, dict)]
    if source.context is None or source.context in names:
        return None
    return f"context {source.context!r} is not in it (it has {', '.join(map(str, names)) or 'none'})"


def configuration_of(kubeconfig: Path, context: str | None = None) -> client.Configuration:
    """The client configuration of one kubeconfig file (a node's ``kubelet.conf``), read now."""
    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=str(kubeconfig), context=context, client_configuration=configuration)
    except config.ConfigException as exc:
        raise UserError(f"cannot use {kubeconfig}: {exc}") from None
    except Exception as exc:  # as in load_configuration: the text of a YAML error may quote the file
        raise UserError(f"cannot use {kubeconfig}: {getattr(exc, 'strerror', None) or type(exc).__name__}") from None
    return configuration


def connection_info(configuration: client.Configuration) -> dict[str, Any]:
    """The same credentials for Kopf's own API client (arguments of ``kopf.ConnectionInfo``)."""
    authorization = configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
    scheme, _, token = authorization.partition(" ")
    return {"server": configuration.host, "ca_path": configuration.ssl_ca_cert,
            "insecure": not configuration.verify_ssl, "scheme": scheme or None, "token": token or None,
            "certificate_path": configuration.cert_file, "private_key_path": configuration.key_file}


class Api:
    """Requests to the API server with the credentials of a client configuration, over one aiohttp
    session (made on first use, in the running loop). A server certificate that fails verification
    drops the session: the next request makes a new one, reading the CA file again (in a pod, the
    projected ``ca.crt``, which follows the cluster's CA through a rotation)."""

    def __init__(self, configuration: client.Configuration,
                 reload: Callable[[], client.Configuration] | None = None) -> None:
        """``reload``: the credentials read afresh (a token file the kubelet, or anyone, rotates), looked at
        every AUTH_REFRESH seconds and at once when the server answers 401."""
        self._configuration, self._reload = configuration, reload
        self._session: aiohttp.ClientSession | None = None
        self._authorization: tuple[float, str | None] = (float("-inf"), None)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            configuration = self._configuration
            context: ssl.SSLContext | bool = False
            if configuration.host.startswith("https"):
                context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
                if configuration.cert_file:
                    context.load_cert_chain(configuration.cert_file, configuration.key_file)
                if not configuration.verify_ssl:
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            self._session = aiohttp.ClientSession(
                base_url=configuration.host, connector=aiohttp.TCPConnector(ssl=context, limit=CONNECTIONS),
                headers={"User-Agent": f"clusterpki/{__version__}", "Accept": "application/json"},
                timeout=TIMEOUT, proxy=configuration.proxy or None, read_bufsize=READ_BUFFER)
        return self._session

    def _headers(self, content_type: str | None, accept: str | None = None) -> dict[str, str]:
        """The Authorization header, from the client's configuration (which refreshes a rotated token)
        at most once a minute, and the body's content type."""
        at, value = self._authorization
        if time.monotonic() - at > AUTH_REFRESH:
            value = self._token()
            self._authorization = (time.monotonic(), value)
        headers = {"Authorization": value} if value else {}
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        return headers

    def _token(self) -> str | None:
        """The Authorization header's value, from the credentials read afresh when they can be (else as
        they were)."""
        if self._reload is not None:
            try:
                self._configuration = self._reload()
            except UserError:
                pass
        return self._configuration.get_api_key_with_prefix("BearerToken", alias="authorization")

    async def request(self, verb: str, what: str, method: str, path: str, body: Any = None,
                      params: Mapping[str, str] | None = None, content_type: str | None = None,
                      accept: str | None = None) -> Any:
        """One request; the parsed JSON response. ``verb`` and ``what`` word the error, if any. A 401 reads
        the credentials afresh and tries once more (a token rotated on disk since the last look)."""
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        for attempt in range(2):
            status, raw, failure = await self._send(method, path, data, params, content_type, accept)
            if status != 401 or self._reload is None or attempt:
                break
            self._authorization = (float("-inf"), None)
        if failure or status >= 400:
            raise ApiError(verb, what, status, failure or _reason(raw))
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            failure = "the response is not JSON"
        # Raised here, outside the handler, so that not even __context__ keeps the original (a JSON
        # error's .doc is the whole body, a Secret's keys included).
        raise ApiError(verb, what, status, failure)

    async def _send(self, method: str, path: str, data: str | None, params: Mapping[str, str] | None,
                    content_type: str | None, accept: str | None) -> tuple[int, bytes, str]:
        """(status, body, what failed on the way: "" when the server answered)."""
        try:
            async with self._open().request(method, path, data=data, params=params,
                                            headers=self._headers(content_type or "application/json", accept)) as response:
                return response.status, await response.read(), ""
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:  # unreachable, reset, timed out
            await self._drop_if_untrusted(exc)
            return 0, b"", self._failure(exc)

    async def get_or_none(self, what: str, path: str) -> Any:
        """GET one object; None when it does not exist."""
        try:
            return await self.request("get", what, "GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def stream(self, what: str, path: str, params: Mapping[str, str], timeout: float,
                     accept: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch, one dict each, until the server ends it."""
        try:
            async with self._open().get(path, params=params, headers=self._headers(None, accept),
                                        timeout=aiohttp.ClientTimeout(total=None, sock_read=timeout)) as response:
                if response.status >= 400:
                    raise ApiError("watch", what, response.status, _reason(await response.read()))
                while line := await response.content.readline():
                    yield json.loads(line)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError) as exc:
            failure = self._failure(exc)
            await self._drop_if_untrusted(exc)
        else:
            return
        raise ApiError("watch", what, 0, failure)

    def _failure(self, exc: BaseException) -> str:
        """What went wrong on the way, and with which server: the exception's kind alone (its text may hold
        what was read)."""
        return f"{type(exc).__name__} with {self._configuration.host}"

    async def _drop_if_untrusted(self, exc: BaseException) -> None:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError) and self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _reason(raw: bytes) -> str:
    """The server's reason and message from a Status body; for Secrets these never echo data."""
    try:
        body = json.loads(raw)
        return f"{body.get('reason', '')}: {body.get('message', '')}".strip(": ")
    except (TypeError, ValueError, AttributeError):  # not a Status: say nothing of what it holds
        return ""
