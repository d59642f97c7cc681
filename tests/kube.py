"""A small async Kubernetes client for tests and benches, as ``kubectl`` drives a cluster.

The same :class:`Api` talks to the HTTP API emulator and to a real kube-apiserver: tests read and
write objects through it the way a user would, never through the operator's own code.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import functools
import inspect
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from cryptography import x509

REPO = Path(__file__).resolve().parent.parent
GROUP_PATH = "/apis/pki.clusterpki.dev/v1alpha1"
_BASES = {
    "clusterpkis": GROUP_PATH,
    "certificatesigningrequests": "/apis/certificates.k8s.io/v1",
    "leases": "/apis/coordination.k8s.io/v1",
    **dict.fromkeys(("roles", "rolebindings", "clusterroles", "clusterrolebindings"), "/apis/rbac.authorization.k8s.io/v1"),
}


class Api:
    """An aiohttp session against one API server, with the calls tests need."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = url, session

    @classmethod
    def session_for(cls, kubeconfig: Path, limit: int = 100, trace_configs: list | None = None,
                    force_close: bool = False) -> tuple[str, aiohttp.ClientSession]:
        """The server URL and an aiohttp session with a kubeconfig's credentials (client certificate or
        token), loaded by the official client as the operator loads its own."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
        headers = {}
        token = configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        connector = aiohttp.TCPConnector(ssl=context if configuration.host.startswith("https") else False,
                                         limit=limit, force_close=force_close)
        return configuration.host, aiohttp.ClientSession(connector=connector, headers=headers,
                                                         trace_configs=trace_configs)

    def path(self, plural: str, namespace: str | None, name: str | None = None) -> str:
        base = _BASES.get(plural, "/api/v1")
        path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        return f"{path}/{name}" if name else path

    def _url(self, plural: str, namespace: str | None, name: str | None = None) -> str:
        return self.url + self.path(plural, namespace, name)

    async def create(self, plural: str, body: dict[str, Any], namespace: str | None = None,
                     headers: dict[str, str] | None = None) -> dict[str, Any]:
        async with self.session.post(self._url(plural, namespace), json=body, headers=headers) as response:
            assert response.status == 201, await response.text()
            return await response.json()

    async def try_create(self, plural: str, body: dict[str, Any], namespace: str | None = None
                         ) -> tuple[int, dict[str, Any]]:
        """Create, returning the HTTP status and the body (an object or a Status) whatever happens."""
        async with self.session.post(self._url(plural, namespace), json=body) as response:
            return response.status, await response.json()

    async def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        async with self.session.get(self._url(plural, namespace, name)) as response:
            if response.status == 404:
                return None
            assert response.status == 200, await response.text()
            return await response.json()

    async def list(self, plural: str, namespace: str | None = None, **query: str) -> list[dict[str, Any]]:
        async with self.session.get(self._url(plural, namespace), params=query) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["items"]

    async def patch(self, plural: str, name: str, patch: Any, namespace: str | None = None,
                    kind: str = "merge", subresource: str = "") -> dict:
        url = self._url(plural, namespace, name) + (f"/{subresource}" if subresource else "")
        async with self.session.patch(url, json=patch,
                                      headers={"Content-Type": f"application/{kind}-patch+json"}) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def replace(self, plural: str, body: dict[str, Any], namespace: str | None = None) -> dict:
        async with self.session.put(self._url(plural, namespace, body["metadata"]["name"]), json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def replace_subresource(self, plural: str, body: dict[str, Any], subresource: str,
                                  namespace: str | None = None) -> dict:
        """PUT to a subresource, as ``kubectl certificate approve`` does to ``approval``."""
        url = f"{self._url(plural, namespace, body['metadata']['name'])}/{subresource}"
        async with self.session.put(url, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def delete(self, plural: str, name: str, namespace: str | None = None, missing_ok: bool = False) -> None:
        async with self.session.delete(self._url(plural, namespace, name)) as response:
            assert response.status in (200, 202) or (missing_ok and response.status == 404), await response.text()

    async def create_node(self, body: dict[str, Any]) -> None:
        """Register a Node as a kubelet does: the object, then its addresses through ``nodes/status``."""
        await self.create("nodes", {k: v for k, v in body.items() if k != "status"})
        await self.patch("nodes", body["metadata"]["name"], {"status": body["status"]}, subresource="status")

    async def apply_pki(self, body: dict[str, Any], defaults: bool = False) -> dict[str, Any]:
        """``kubectl apply`` of a ClusterPKI. A real apiserver applies the CRD's schema defaults itself;
        ``defaults`` fills them in for the emulator, which has no schema."""
        return await self.create("clusterpkis", with_schema_defaults(body) if defaults else body,
                                 body["metadata"]["namespace"])

    async def wait_for(self, probe: Callable[[], Awaitable[Any] | Any], timeout: float = 15, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or probe}")
            await asyncio.sleep(0.05)

    async def ready(self, namespace: str, name: str, status: str = "True", timeout: float = 15) -> dict[str, Any]:
        """The ClusterPKI once its Ready condition has ``status`` for its current generation."""
        async def probe() -> dict[str, Any] | None:
            obj = await self.get("clusterpkis", name, namespace)
            conditions = ((obj or {}).get("status") or {}).get("conditions") or []
            ready = next((c for c in conditions if c["type"] == "Ready"), None)
            generation = obj["metadata"]["generation"] if obj else None
            if ready and ready["status"] == status and obj["status"].get("observedGeneration") == generation:
                return obj
            return None
        return await self.wait_for(probe, timeout, f"{namespace}/{name} Ready={status}")

    async def events(self, namespace: str) -> list[tuple[str, str, str]]:
        return [(e["type"], e["reason"], e["message"]) for e in await self.list("events", namespace)]

    async def has_event(self, namespace: str, reason: str, message: str = "", kind: str | None = None) -> bool:
        """Whether an Event of that reason (and type) whose message starts with ``message`` exists."""
        return any(r == reason and m.startswith(message) and kind in (None, t)
                   for t, r, m in await self.events(namespace))

    async def secrets_of(self, namespace: str, name: str) -> dict[str, dict[str, Any]]:
        """The Secrets of one ClusterPKI by component, found by its label as a user would."""
        items = await self.list("secrets", namespace, labelSelector=f"pki.clusterpki.dev/cluster-pki={name}")
        return {s["metadata"]["labels"]["pki.clusterpki.dev/component"]: s for s in items}

    async def serials(self, namespace: str, name: str) -> dict[str, int]:
        """The serial number of each certificate of one ClusterPKI, by component."""
        return {c: cert_of(s).serial_number for c, s in (await self.secrets_of(namespace, name)).items()
                if "tls.crt" in (s.get("data") or {})}


class FollowingApi(Api):
    """An admin who reads its kubeconfig again whenever it changes, as each kubectl run does: the
    admin.conf of a cluster whose own PKI rotates. No connection is kept (each request opens its own),
    so none is left on an apiserver that restarted."""

    async def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        """As Api.get; a 5xx an etcd member's restart returns by itself (etcd-io/etcd#17790, counted apart in
        the load too) is read again, up to 5 times a second apart."""
        for attempt in range(5):
            try:
                return await super().get(plural, name, namespace)
            except AssertionError as exc:
                if attempt == 4 or '"code":5' not in str(exc):
                    raise
                await asyncio.sleep(1)
        return None

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig, self.url = kubeconfig, ""
        self._stamp: int | None = None
        self._sessions: list[aiohttp.ClientSession] = []

    @property
    def session(self) -> aiohttp.ClientSession:
        stamp = self.kubeconfig.stat().st_mtime_ns
        if stamp != self._stamp:
            self._stamp = stamp
            self.url, made = self.session_for(self.kubeconfig, force_close=True)
            self._sessions.append(made)
        return self._sessions[-1]

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()


TOO_OLD_TRIES = 6


class Recorder:
    """Every watch event of one kind of object, from the moment it starts: what a test needs to count
    writes on a real apiserver (each write of an object is one ADDED, MODIFIED or DELETED event).

    With ``resume``, across apiserver restarts: a watch that ends is opened again where it stopped. An
    apiserver that just started answers a version from before its start "too old" (its watch cache
    begins at its start; v1.24 sends a bookmark only as a watch times out, so a quiet selection keeps an
    old version): the objects are then listed, and each one that changed meanwhile is recorded as it is
    now, its versions in between unseen, in ``gaps``."""

    def __init__(self, api: Api, plural: str, namespace: str | None = None, resume: bool = False, **query: str) -> None:
        self.api, self.plural, self.namespace, self.query, self.resume = api, plural, namespace, query, resume
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.gaps: list[set[str]] = []  # the names whose changes a "too old" hid, one set per gap
        self._last: dict[str, str] = {}  # name -> the last resourceVersion recorded
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Recorder:
        self._task = asyncio.create_task(self._watch(await self._list()))
        await asyncio.sleep(0.1)  # the watch is open before the test acts
        return self

    async def __aexit__(self, *_: Any) -> None:
        await asyncio.sleep(0.5)  # let the last events arrive
        assert self._task is not None
        if self._task.done():  # it failed: the recording is not whole
            self._task.result()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _list(self, gap: bool = False) -> str:
        """The objects now (each one's version kept; after a gap, what changed recorded): the list's version."""
        url = self.api.url + self.api.path(self.plural, self.namespace)
        query = self.query if self.resume else {**self.query, "limit": "1"}
        async with self.api.session.get(url, params=query) as response:
            assert response.status == 200, f"list {self.plural}: HTTP {response.status}"
            listed = await response.json()
        if self.resume:
            now = {item["metadata"]["name"]: item for item in listed["items"]}
            if gap:
                self._record_gap(now)
            self._last = {name: item["metadata"]["resourceVersion"] for name, item in now.items()}
        return listed["metadata"]["resourceVersion"]

    def _record_gap(self, now: dict[str, dict[str, Any]]) -> None:
        changed = set()
        for name, item in now.items():
            if self._last.get(name) != item["metadata"]["resourceVersion"]:
                self.events.append(("ADDED" if name not in self._last else "MODIFIED", item))
                changed.add(name)
        for name in set(self._last) - set(now):
            self.events.append(("DELETED", {"metadata": {"name": name}}))
            changed.add(name)
        if changed:
            self.gaps.append(changed)

    async def _watch(self, version: str) -> None:
        url = self.api.url + self.api.path(self.plural, self.namespace)
        too_old = 0  # answers in a row: through the load balancer, the other apiserver may still hold it
        while True:
            params = {**self.query, "watch": "1", "resourceVersion": version, "allowWatchBookmarks": "false"}
            try:
                async with self.api.session.get(url, params=params,
                                                timeout=aiohttp.ClientTimeout(total=None)) as response:
                    if self.resume and response.status != 200:  # an apiserver not ready yet: again, soon
                        await asyncio.sleep(0.5)
                        continue
                    async for line in response.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        if event["type"] == "ERROR":
                            assert self.resume, f"the watch ended: {event}"
                            too_old += 1
                            if too_old >= TOO_OLD_TRIES:
                                version, too_old = await self._list(gap=True), 0
                            break
                        too_old = 0
                        self.events.append((event["type"], event["object"]))
                        version = event["object"]["metadata"].get("resourceVersion", version)
                        self._last[event["object"]["metadata"]["name"]] = version
                        if event["type"] == "DELETED":
                            self._last.pop(event["object"]["metadata"]["name"])
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                if not self.resume:
                    raise
            if not self.resume:
                return
            await asyncio.sleep(0.5)

    def of(self, name: str, *types: str) -> list[dict[str, Any]]:
        """The versions of object ``name`` in the events of those types (all types when none given)."""
        return [obj for kind, obj in self.events if obj["metadata"]["name"] == name and (not types or kind in types)]


def decode(secret: dict, key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def cert_of(secret: dict, key: str = "tls.crt") -> x509.Certificate:
    return x509.load_pem_x509_certificate(decode(secret, key))


def with_schema_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver stores after applying the CRD's structural-schema defaults."""
    return {**body, "spec": _default(_spec_schema(), body.get("spec"))}


@functools.cache
def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((REPO / "crds/clusterpki.yaml").read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _default(schema: dict[str, Any], value: Any) -> Any:
    if value is None:
        value = copy.deepcopy(schema.get("default"))  # the schema is cached: never hand out its own
    if isinstance(value, dict) and "properties" in schema:
        value = dict(value)
        for key, sub in schema["properties"].items():
            filled = _default(sub, value.get(key))
            if filled is not None:
                value[key] = filled
    return value
