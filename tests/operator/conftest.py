"""The operator against the HTTP API emulator: only where the emulator is the better tool.

The real control plane (``tests/e2e``) is where the operator's behaviour is tested. The emulator
stays for what a real apiserver cannot do or cannot show: holding watch events back (fault
injection), and an exact log of every request each client made.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.emulator import Emulator
from tests.kube import Api
from tests.runners import Operator


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
        yield Api(emulator.url, session)


@pytest.fixture
async def operator(kubeconfig: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Operator]:
    caplog.set_level(logging.INFO)
    runner = Operator()
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


def pki(name: str, namespace: str = "team-a", **spec) -> dict:
    return {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
