"""The operator layer: the real Kopf machinery against the HTTP API emulator, driven over HTTP."""

from __future__ import annotations

import asyncio
import copy
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml

from tests.emulator import Emulator

GROUP_PATH = "/apis/pki.clusterpki.dev/v1alpha1"


class Api:
    """A tiny HTTP client for the emulator, as kubectl would drive a cluster."""

    def __init__(self, emulator: Emulator, session: aiohttp.ClientSession) -> None:
        self.emulator, self.session = emulator, session

    def _url(self, plural: str, namespace: str | None, name: str | None = None) -> str:
        base = GROUP_PATH if plural == "clusterpkis" else (
            "/apis/certificates.k8s.io/v1" if plural == "certificatesigningrequests" else "/api/v1")
        path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
        return self.emulator.url + (f"{path}/{name}" if name else path)

    async def create(self, plural: str, body: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        async with self.session.post(self._url(plural, namespace), json=body) as response:
            assert response.status == 201, await response.text()
            return await response.json()

    async def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        async with self.session.get(self._url(plural, namespace, name)) as response:
            return None if response.status == 404 else await response.json()

    async def list(self, plural: str, namespace: str | None = None, **query: str) -> list[dict[str, Any]]:
        async with self.session.get(self._url(plural, namespace), params=query) as response:
            return (await response.json())["items"]

    async def patch(self, plural: str, name: str, patch: dict[str, Any], namespace: str | None = None) -> dict:
        async with self.session.patch(self._url(plural, namespace, name), json=patch,
                                      headers={"Content-Type": "application/merge-patch+json"}) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def create_node(self, body: dict[str, Any]) -> None:
        """Register a Node as a kubelet does: the object, then its addresses through ``nodes/status``."""
        await self.create("nodes", {k: v for k, v in body.items() if k != "status"})
        async with self.session.patch(self._url("nodes", None, body["metadata"]["name"]) + "/status",
                                      json={"status": body["status"]},
                                      headers={"Content-Type": "application/merge-patch+json"}) as response:
            assert response.status == 200, await response.text()

    async def delete(self, plural: str, name: str, namespace: str | None = None) -> None:
        async with self.session.delete(self._url(plural, namespace, name)) as response:
            assert response.status == 200, await response.text()

    async def apply_pki(self, body: dict[str, Any]) -> dict[str, Any]:
        """``kubectl apply`` of a ClusterPKI: create it, with the CRD's schema defaults filled in."""
        return await self.create("clusterpkis", with_schema_defaults(body), body["metadata"]["namespace"])

    async def wait_for(self, probe: Callable[[], Awaitable[Any] | Any], timeout: float = 15, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or probe}")
            await asyncio.sleep(0.05)

    async def ready(self, namespace: str, name: str, status: str = "True", timeout: float = 15) -> dict[str, Any]:
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


def with_schema_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver stores after applying the CRD's structural-schema defaults."""
    return {**body, "spec": _default(_spec_schema(), body.get("spec"))}


@functools.cache
def _spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds/clusterpki.yaml").read_text())
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


class Operator:
    """The real operator (Kopf with clusterpki's handlers) in its own thread and event loop.

    Kopf cancels every task that appeared in its loop while it ran, so it cannot share the test's
    loop with the emulator; its own thread is also how Kopf documents embedding."""

    def __init__(self, csr_policy: tuple[str, str] | None = None) -> None:
        self.csr_policy = csr_policy
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None

    async def start(self) -> None:
        from clusterpki.handlers import build_registry

        registry = build_registry(csr_policy=self.csr_policy is not None)
        ready = threading.Event()
        self.stop_flag = threading.Event()
        self.error = None

        def main() -> None:
            try:
                asyncio.run(kopf.operator(registry=registry, clusterwide=True, standalone=True,
                                          stop_flag=self.stop_flag, ready_flag=ready,
                                          memo=kopf.Memo(csr_policy=self.csr_policy)))
            except BaseException as exc:  # reported by stop()
                self.error = exc

        self.thread = threading.Thread(target=main, name="operator", daemon=True)
        self.thread.start()
        if not await asyncio.to_thread(ready.wait, 10):
            await self.stop()
            raise AssertionError(f"the operator did not start: {self.error!r}")

    async def stop(self) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, 20)
        thread, self.thread = self.thread, None
        assert not thread.is_alive(), "the operator did not stop within 20 s"
        assert self.error is None, f"the operator failed: {self.error!r}"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    server = Emulator()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def kubeconfig(tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = emulator.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


@pytest.fixture
async def api(emulator: Emulator) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {emulator.token}"}) as session:
        yield Api(emulator, session)


@pytest.fixture
async def operator(kubeconfig: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Operator]:
    caplog.set_level(logging.INFO)
    runner = Operator()
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
