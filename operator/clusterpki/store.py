"""A small store over the Kubernetes API: Secrets, and the few other writes the operator makes.

Credentials come from the official client (kubeconfig, in-cluster service account, token refresh);
requests go over aiohttp, Kopf's own HTTP library, on the event loop: no thread pool, and the
operator works with plain dicts. Errors are re-raised as :class:`ApiError` carrying only the status
and the server's reason, so no request body (which may hold private keys) can reach a log line or
an exception message.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timezone
from typing import Any

import aiohttp
from kubernetes import client, config

from clusterpki import __version__, secrets, settings

Secret = dict[str, Any]
HOST = socket.gethostname()[:128]
CONNECTIONS = 32  # requests in flight at once
TIMEOUT = aiohttp.ClientTimeout(total=60)
AUTH_REFRESH = 60  # seconds between looks at the credentials (a projected token is rotated on disk)
CLUSTERPKIS = f"/apis/{settings.GROUP}/{settings.VERSION}"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
MERGE_PATCH = "application/merge-patch+json"
EVENT_SERIES = 4096  # Event series remembered, the most recent ones
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


def load_configuration() -> client.Configuration:
    """``KUBECONFIG`` when it is set, else the in-cluster configuration in a pod, else
    ``~/.kube/config``: client-go's order. ``KUBECONFIG`` is read now, not when the client library
    was imported."""
    configuration = client.Configuration()
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
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
    session (made on first use, in the running loop)."""

    def __init__(self, configuration: client.Configuration) -> None:
        self._configuration = configuration
        self._session: aiohttp.ClientSession | None = None
        self._authorization: tuple[float, str | None] = (float("-inf"), None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

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
                timeout=TIMEOUT, proxy=configuration.proxy or None)
        return self._session

    def _headers(self, content_type: str | None, accept: str | None = None) -> dict[str, str]:
        """The Authorization header, from the client's configuration (which refreshes a rotated token)
        at most once a minute, and the body's content type."""
        at, value = self._authorization
        if time.monotonic() - at > AUTH_REFRESH:
            value = self._configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
            self._authorization = (time.monotonic(), value)
        headers = {"Authorization": value} if value else {}
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        return headers

    async def request(self, verb: str, what: str, method: str, path: str, body: Any = None,
                      params: Mapping[str, str] | None = None, content_type: str | None = None,
                      accept: str | None = None) -> Any:
        """One request; the parsed JSON response. ``verb`` and ``what`` word the error, if any."""
        data = None if body is None else json.dumps(body, separators=(",", ":"))
        try:
            async with self._open().request(method, path, data=data, params=params,
                                            headers=self._headers(content_type or "application/json", accept)) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:  # unreachable, reset, timed out
            status, raw, failure = 0, b"", type(exc).__name__
        else:
            failure = ""
        if failure or status >= 400:
            raise ApiError(verb, what, status, failure or _reason(raw))
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            failure = "the response is not JSON"
        # Raised here, outside the handler, so that not even __context__ keeps the original (a JSON
        # error's .doc is the whole body, a Secret's keys included).
        raise ApiError(verb, what, status, failure)

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
            failure = type(exc).__name__
        else:
            return
        raise ApiError("watch", what, 0, failure)


class SecretStore(Api):
    """Secrets, and the writes the operator makes to ClusterPKIs (their status), CSRs and Events."""

    def __init__(self, configuration: client.Configuration) -> None:
        super().__init__(configuration)
        # The Event posted last for each (namespace, object, type, reason, message), and its count: a
        # repeat is counted on it, as client-go's recorder does, not posted as another Event.
        self._series: OrderedDict[tuple[str, ...], tuple[str, int]] = OrderedDict()

    async def list(self, namespace: str, pki_name: str) -> list[Secret]:
        """The Secrets carrying one ClusterPKI's labels: one LIST by label, from the apiserver's watch
        cache (``resourceVersion=0``; a quorum read from etcd would scan the whole namespace). A read a
        moment stale is safe: every write carries the resourceVersion it read, or is a create, so a
        stale read ends in a 409 and a retry, never in a second write."""
        body = await self.request("list", f"Secrets of {namespace}/{pki_name}", "GET", _secrets(namespace),
                                  params={"labelSelector": secrets.selector(pki_name), "resourceVersion": "0"})
        return body.get("items") or []

    async def names(self, namespace: str, selector: str = "") -> dict[str, dict[str, str]]:
        """The name and labels of the Secrets of a namespace (that match ``selector``): their metadata
        only, from the apiserver's watch cache (``resourceVersion=0``), not their data."""
        params = {"resourceVersion": "0", **({"labelSelector": selector} if selector else {})}
        body = await self.request("list", f"the Secrets of namespace {namespace}", "GET", _secrets(namespace),
                                  params=params, accept=PARTIAL_METADATA)
        return {item["metadata"]["name"]: item["metadata"].get("labels") or {} for item in body.get("items") or []}

    async def get(self, namespace: str, name: str) -> Secret | None:
        try:
            return await self.request("get", f"Secret {namespace}/{name}", "GET", _secrets(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, secret: Secret) -> Secret:
        """Create; HTTP 409 AlreadyExists when it exists, e.g. made meanwhile by another replica."""
        meta = secret["metadata"]
        return await self.request("create", f"Secret {meta['namespace']}/{meta['name']}", "POST",
                                  _secrets(meta["namespace"]), secret)

    async def replace(self, secret: Secret) -> Secret:
        """Replace with optimistic concurrency: a Secret changed since it was read gives HTTP 409."""
        meta = secret["metadata"]
        return await self.request("replace", f"Secret {meta['namespace']}/{meta['name']}", "PUT",
                                  _secrets(meta["namespace"], meta["name"]), secret)

    async def delete(self, namespace: str, name: str) -> None:
        await self.request("delete", f"Secret {namespace}/{name}", "DELETE", _secrets(namespace, name))

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a ClusterPKI's status subresource."""
        await self.request("patch", f"the status of ClusterPKI {namespace}/{name}", "PATCH",
                           f"{_clusterpki(namespace, name)}/status", {"status": status}, content_type=MERGE_PATCH)

    async def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge-patch annotations onto a ClusterPKI (``clusterpki renew`` and ``rotate-ca``)."""
        await self.request("annotate", f"ClusterPKI {namespace}/{name}", "PATCH", _clusterpki(namespace, name),
                           {"metadata": {"annotations": annotations}}, content_type=MERGE_PATCH)

    async def decide_csr(self, csr: dict[str, Any]) -> None:
        """PUT a CSR with its Approved or Denied condition to the ``approval`` subresource."""
        name = csr["metadata"]["name"]
        await self.request("decide", f"CSR {name}", "PUT", f"{CSRS}/{name}/approval", _minimal_csr(csr))

    async def set_certificate(self, csr: dict[str, Any]) -> None:
        """PUT a CSR with ``status.certificate`` to the ``status`` subresource."""
        name = csr["metadata"]["name"]
        await self.request("sign", f"CSR {name}", "PUT", f"{CSRS}/{name}/status", _minimal_csr(csr))

    async def post_event(self, involved: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about a ClusterPKI, as ``kubectl describe`` shows them. The same Event again
        raises the count of the first one (``x4 over 2m``); once the apiserver has let that expire, a
        new series starts."""
        meta = involved["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = message[:1024]
        what = f"an Event on {meta['namespace']}/{meta['name']}"
        key = (meta["namespace"], meta.get("uid", ""), kind, reason, message)
        if key in self._series:
            event_name, count = self._series.pop(key)
            try:
                await self.request("count", what, "PATCH", f"/api/v1/namespaces/{meta['namespace']}/events/{event_name}",
                                   {"count": count + 1, "lastTimestamp": now}, content_type=MERGE_PATCH)
            except ApiError as exc:
                if exc.status != 404:
                    raise
            else:
                self._remember(key, event_name, count + 1)
                return
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": kind, "reason": reason, "message": message, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "clusterpki", "host": HOST},
        }
        posted = await self.request("post", what, "POST", f"/api/v1/namespaces/{meta['namespace']}/events", event)
        self._remember(key, posted["metadata"]["name"], 1)

    def _remember(self, key: tuple[str, ...], event_name: str, count: int) -> None:
        self._series[key] = (event_name, count)
        if len(self._series) > EVENT_SERIES:
            self._series.popitem(last=False)


def _secrets(namespace: str, name: str | None = None) -> str:
    path = f"/api/v1/namespaces/{namespace}/secrets"
    return f"{path}/{name}" if name else path


def _clusterpki(namespace: str, name: str) -> str:
    return f"{CLUSTERPKIS}/namespaces/{namespace}/{settings.PLURAL}/{name}"


def _minimal_csr(csr: dict[str, Any]) -> dict[str, Any]:
    """Only what a subresource PUT needs."""
    spec_keys = ("request", "signerName", "usages", "username", "groups", "uid", "expirationSeconds", "extra")
    status = csr.get("status") or {}
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": csr["metadata"]["name"], "resourceVersion": csr["metadata"].get("resourceVersion")},
            "spec": {k: v for k, v in (csr.get("spec") or {}).items() if k in spec_keys},
            "status": {k: v for k, v in status.items() if k in ("conditions", "certificate")}}


def _reason(raw: bytes) -> str:
    """The server's reason and message from a Status body; for Secrets these never echo data."""
    try:
        body = json.loads(raw)
        return f"{body.get('reason', '')}: {body.get('message', '')}".strip(": ")
    except (TypeError, ValueError, AttributeError):  # not a Status: say nothing of what it holds
        return ""
