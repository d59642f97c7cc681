"""End-to-end tests on a real control plane, the default place for the operator's behaviour.

A session fixture boots a disposable kube-apiserver, kube-controller-manager and etcd from
``../shared/k8s`` (or uses the cluster ``CLUSTERPKI_E2E_KUBECONFIG`` names), installs ``crds/`` and
``manifests/`` with exactly the README's command, and makes a kubeconfig holding a token of the
manifests' ServiceAccount (``kubectl create token``): the operator runs with exactly its RBAC. Each
test gets a namespace of its own, created and deleted here, and an operator serving only it.
"""

from __future__ import annotations

import logging
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.controlplane import INSTALL, ControlPlane, unavailable
from tests.kube import Api
from tests.runners import Operator


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)
    # The longest tests first, each in an xdist group of its own: one worker spends the run on each while
    # the third takes the rest (pyproject's addopts: -n 3 --dist loadgroup).
    items.sort(key=lambda item: not item.get_closest_marker("xdist_group"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """The real control plane of this session: external if named, else booted from the harness."""
    external = ControlPlane.external()
    if external is not None:
        yield external
        return
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a killed run still tears it down
    plane = ControlPlane.boot(tmp_path_factory.mktemp("control-plane"))
    try:
        yield plane
    finally:
        plane.down()


@pytest.fixture(scope="session")
def install_result(cluster: ControlPlane) -> subprocess.CompletedProcess:
    """The README's install, run once on the session's control plane (fresh when booted)."""
    result = cluster.install()
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/clusterpkis.pki.clusterpki.dev")
    return result


@pytest.fixture(scope="session")
def installed(install_result: subprocess.CompletedProcess) -> None:
    assert install_result.returncode == 0, f"{INSTALL} failed: {install_result.stderr}"


@pytest.fixture(scope="session")
def operator_kubeconfig(installed: None, cluster: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount of manifests/."""
    return cluster.token_kubeconfig(tmp_path_factory.mktemp("e2e") / "operator.kubeconfig")


@pytest.fixture
async def api(cluster: ControlPlane) -> AsyncIterator[Api]:
    """The cluster's admin, as a user with kubectl would act."""
    url, session = Api.session_for(cluster.kubeconfig)
    async with session:
        yield Api(url, session)


@pytest.fixture
async def namespace(api: Api, installed: None) -> AsyncIterator[str]:
    """A namespace of this test's own, deleted afterwards (without waiting for it to go)."""
    name = f"cpki-e2e-{secrets.token_hex(3)}"
    await api.create("namespaces", {"metadata": {"name": name, "labels": {"clusterpki-e2e": "true"}}})
    try:
        yield name
    finally:
        await api.delete("namespaces", name, missing_ok=True)


@pytest.fixture
def as_operator(operator_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Operators started in this test authenticate with the ServiceAccount token."""
    monkeypatch.setenv("KUBECONFIG", str(operator_kubeconfig))
    return operator_kubeconfig


@pytest.fixture
async def operator(as_operator: Path, namespace: str, caplog: pytest.LogCaptureFixture
                   ) -> AsyncIterator[Operator]:
    """The operator serving this test's namespace, as its ServiceAccount. Afterwards its log must
    hold no private key and no refusal by RBAC."""
    caplog.set_level(logging.INFO)
    runner = Operator(namespaces=(namespace,))
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()
    assert_clean_log(caplog.text)


def assert_clean_log(text: str) -> None:
    assert "PRIVATE KEY" not in text
    assert "HTTP 403" not in text and "APIForbiddenError" not in text and "status=403" not in text, \
        [line for line in text.splitlines() if "403" in line][:5]


def pki(name: str, namespace: str, **spec) -> dict:
    """A ClusterPKI document as a user would apply it."""
    return {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}
