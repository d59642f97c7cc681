"""Real kubelets v1.24 (``tests/nodes.py``, from ``../shared/k8s/node.sh``) join the session's control
plane with a bootstrap token, as ``kubeadm join`` does, and get every certificate they hold from the
operator alone.

kube-controller-manager runs its csrapproving controller, but the token comes without kubeadm's
auto-approval bindings, so it approves nothing; and nothing else signs (no csrsigning runs). The
operator signs (``signCSRs``) with the cluster's own CA, brought into the policy ClusterPKI
(``<policy>-ca`` created before it), since that is what the apiserver's ``--client-ca-file`` trusts.
Its ``validity.certificate`` is short, so that the kubelets rotate their certificates during the test.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import signal
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from clusterpki.csr.rules import CLIENT_SIGNER, SERVING_SIGNER
from cryptography import x509

from tests.controlplane import ControlPlane
from tests.csr_factory import request_pem
from tests.e2e.conftest import pki
from tests.kube import Api
from tests.nodes import Kubelet, bootstrap_token, next_address, server_of
from tests.runners import Operator

POLICY = "kubelets"
# The kubelet rotates at 70-90% of its certificate's span, which starts 5 minutes back (as
# kube-controller-manager's signer backdates): 15-105 s after each issue, with 2m30s.
VALIDITY = "2m30s"
NODE_B_IP = "127.0.1.6"  # cluster.sh registers node-b with it


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture
async def signing_operator(as_operator, api: Api, namespace: str, cluster: ControlPlane) -> AsyncIterator[Operator]:
    if cluster.directory is None:
        pytest.skip("real kubelets join a control plane booted from ../shared/k8s")
    hpki = cluster.directory / "hpki"
    await api.create("secrets", {"metadata": {"name": f"{POLICY}-ca"}, "type": "kubernetes.io/tls",
                                 "data": {"tls.crt": _b64(hpki / "ca.crt"), "tls.key": _b64(hpki / "ca.key")}},
                     namespace)
    await api.apply_pki(pki(POLICY, namespace, kubelet={"signCSRs": True}, validity={"certificate": VALIDITY}))
    runner = Operator(csr_policy=(namespace, POLICY), namespaces=(namespace,))
    await runner.start()
    try:
        await api.ready(namespace, POLICY)
        yield runner
    finally:
        await runner.stop()


@pytest.fixture
async def kubelets(api: Api, cluster: ControlPlane) -> AsyncIterator[Callable[[], Kubelet]]:
    """Starts real kubelets; afterwards stops them and deletes their Nodes and every CSR made meanwhile.
    Their directories are short paths of their own: containerd's socket is below, and a unix socket's
    path has at most 107 bytes."""
    before = {c["metadata"]["name"] for c in await api.list("certificatesigningrequests")}
    token = bootstrap_token(cluster)
    started: list[Kubelet] = []

    def start() -> Kubelet:
        name = f"kubelet-{secrets.token_hex(3)}"
        kubelet = Kubelet(Path(tempfile.mkdtemp(prefix="cpki-node-")), name, next_address())
        started.append(kubelet)
        kubelet.up(cluster, token)
        return kubelet
    try:
        yield start
    finally:
        for kubelet in started:
            kubelet.down()
            shutil.rmtree(kubelet.directory, ignore_errors=True)
            await api.delete("nodes", kubelet.name, missing_ok=True)
        for csr in await api.list("certificatesigningrequests"):
            if csr["metadata"]["name"] not in before:
                await api.delete("certificatesigningrequests", csr["metadata"]["name"], missing_ok=True)


async def _csrs(api: Api, node: str, signer: str) -> list[dict[str, Any]]:
    """The CSRs for ``node``'s identity on ``signer``, oldest first."""
    found = [c for c in await api.list("certificatesigningrequests") if c["spec"]["signerName"] == signer
             and x509.load_pem_x509_csr(base64.b64decode(c["spec"]["request"])).subject.rfc4514_string()
             == f"CN=system:node:{node},O=system:nodes"]
    return sorted(found, key=lambda c: c["metadata"]["creationTimestamp"])


def _approval(csr: dict[str, Any]) -> tuple[str, str, str] | None:
    for condition in (csr.get("status") or {}).get("conditions") or []:
        if condition["type"] in ("Approved", "Denied"):
            return condition["type"], condition.get("reason", ""), condition.get("message", "")
    return None


def _certificate(csr: dict[str, Any]) -> x509.Certificate | None:
    pem = (csr.get("status") or {}).get("certificate")
    return x509.load_pem_x509_certificate(base64.b64decode(pem)) if pem else None


async def _signed(api: Api, node: str, signer: str, requester: Callable[[str], bool], after: int = 0,
                  timeout: float = 60) -> tuple[dict[str, Any], x509.Certificate]:
    """The first CSR past the ``after`` first ones of ``node`` on ``signer`` by a requester that fits,
    once it is signed."""
    async def probe():
        for csr in (await _csrs(api, node, signer))[after:]:
            certificate = _certificate(csr)
            if requester(csr["spec"]["username"]) and certificate is not None:
                return csr, certificate
        return None
    return await api.wait_for(probe, timeout=timeout, what=f"a signed {signer} CSR of {node}")


def _by_the_operator(csr: dict[str, Any], kind: str, node: str) -> None:
    """Approved by the operator (kube-controller-manager's approval says 'Auto approving ...')."""
    assert _approval(csr) == ("Approved", "AutoApproved", f"kubelet {kind} certificate of node {node}"), csr["status"]


async def _node_ready(api: Api, name: str) -> bool:
    node = await api.get("nodes", name)
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in ((node or {}).get("status") or {}).get("conditions") or [])


async def _healthz(cluster: ControlPlane, node: str) -> bool:
    result = await asyncio.to_thread(cluster.kubectl, "get", "--raw", f"/api/v1/nodes/{node}/proxy/healthz",
                                     check=False)
    return result.returncode == 0 and result.stdout.strip() == "ok"


def _served_certificate(ip: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ssl.get_server_certificate((ip, 10250)).encode())


def _sans(certificate: x509.Certificate) -> set[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*names.get_values_for_type(x509.DNSName), *(str(ip) for ip in names.get_values_for_type(x509.IPAddress))}


async def test_a_kubelet_joins_is_reached_and_rotates_on_certificates_of_the_operator_alone(
        signing_operator, kubelets, api: Api, cluster: ControlPlane):
    ca = x509.load_pem_x509_certificate((cluster.directory / "hpki" / "ca.crt").read_bytes())
    node = await asyncio.to_thread(kubelets)
    # 1. TLS bootstrap: its client CSR, made with the bootstrap token, approved and signed.
    bootstrap, first = await _signed(api, node.name, CLIENT_SIGNER, lambda u: u.startswith("system:bootstrap:"))
    _by_the_operator(bootstrap, "client", node.name)
    first.verify_directly_issued_by(ca)
    assert first.subject.rfc4514_string() == f"CN=system:node:{node.name},O=system:nodes"
    await api.wait_for(lambda: _node_ready(api, node.name), timeout=60, what="the Node Ready")
    # 2. Its serving CSR (serverTLSBootstrap), approved and signed with its own names only.
    serving, served = await _signed(api, node.name, SERVING_SIGNER, lambda u: u == f"system:node:{node.name}")
    _by_the_operator(serving, "serving", node.name)
    served.verify_directly_issued_by(ca)
    assert _sans(served) == {node.name, node.ip}
    # 3. The apiserver reaches it, and it serves a certificate of the operator's.
    await api.wait_for(lambda: _healthz(cluster, node.name), timeout=30, what="proxy/healthz")
    on_the_wire = await asyncio.to_thread(_served_certificate, node.ip)
    assert on_the_wire.issuer == ca.subject and _sans(on_the_wire) == {node.name, node.ip}
    # 4. It rotates its short-lived client certificate on its own, as itself, and the new one is approved.
    rotation, renewed = await _signed(api, node.name, CLIENT_SIGNER, lambda u: u == f"system:node:{node.name}",
                                      timeout=150)
    _by_the_operator(rotation, "client", node.name)
    renewed.verify_directly_issued_by(ca)
    assert renewed.serial_number != first.serial_number
    await api.wait_for(lambda: (node.client_certificate() or first).serial_number == renewed.serial_number,
                       timeout=30, what="the kubelet on its new client certificate")
    await api.wait_for(lambda: _node_ready(api, node.name), timeout=30, what="the Node Ready after the rotation")
    await api.wait_for(lambda: _healthz(cluster, node.name), timeout=30, what="proxy/healthz after the rotation")
    for csr in [*await _csrs(api, node.name, CLIENT_SIGNER), *await _csrs(api, node.name, SERVING_SIGNER)]:
        assert _approval(csr) is None or _approval(csr)[1] == "AutoApproved", "nobody but the operator decided"


# What the attacker added to her own Node (NodeRestriction lets a node patch its own status),
# and why each is refused.
HOSTILE = [
    # (address type, address, SAN kind, reason, message)
    ("ExternalIP", NODE_B_IP, "ips", "SANOfAnotherNode", f"{NODE_B_IP} is an address of node node-b too"),
    ("InternalIP", "10.96.0.1", "ips", "SANReserved", "10.96.0.1 is in the service CIDR 10.96.0.0/12"),
    ("InternalDNS", "kubernetes.default.svc", "dns", "SANReserved", "kubernetes.default.svc is the apiserver's"),
    ("ExternalDNS", "*.example.com", "dns", "SANWildcard", "*.example.com is a wildcard, never a kubelet's"),
]


async def test_a_node_that_claims_names_it_does_not_own_gets_none_and_a_clear_denial(
        signing_operator, kubelets, api: Api, cluster: ControlPlane):
    node = await asyncio.to_thread(kubelets)
    await api.wait_for(lambda: _node_ready(api, node.name), timeout=60, what="the Node Ready")
    own = [{"type": "InternalIP", "address": node.ip}, {"type": "Hostname", "address": node.name}]
    # Whoever roots the node holds the kubelet (stopped here, or it writes its own addresses back
    # within 10 s) and its client key.
    node.signal(signal.SIGSTOP)
    try:
        async with _as(cluster, node) as attacker:
            await attacker.patch("nodes", node.name, {"status": {"addresses": [
                *own, *({"type": kind, "address": address} for kind, address, *_ in HOSTILE)]}},
                subresource="status")
            await asyncio.sleep(1)  # the operator's Node watch has it
            names = {}
            for _, address, san, *_ in HOSTILE:
                names[address] = f"{node.name}-{secrets.token_hex(2)}"
                request = {"cn": f"system:node:{node.name}", "dns": (node.name,), "ips": (node.ip,)}
                request[san] = (*request[san], address)
                await attacker.create("certificatesigningrequests", {"metadata": {"name": names[address]}, "spec": {
                    "signerName": SERVING_SIGNER, "usages": ["digital signature", "server auth"],
                    "request": request_pem(**request)}})

            async def decided():
                return all([_approval(await api.get("certificatesigningrequests", n) or {}) for n in names.values()])
            await api.wait_for(decided, timeout=30, what="every hostile CSR decided")
    finally:
        node.signal(signal.SIGCONT)
    for _, address, _, reason, message in HOSTILE:
        csr = await api.get("certificatesigningrequests", names[address])
        assert _approval(csr) == ("Denied", reason, message)
        assert not (csr.get("status") or {}).get("certificate")
    # The kubelet's own serving CSR, with its own names, is still approved and signed.
    serving, served = await _signed(api, node.name, SERVING_SIGNER, lambda u: u == f"system:node:{node.name}")
    _by_the_operator(serving, "serving", node.name)
    assert _sans(served) == {node.name, node.ip}


class _as:
    """An API session with the kubelet's own client certificate."""

    def __init__(self, cluster: ControlPlane, node: Kubelet) -> None:
        self.cluster, self.node = cluster, node

    async def __aenter__(self) -> Api:
        context = ssl.create_default_context(cafile=str(self.cluster.directory / "hpki" / "ca.crt"))
        context.load_cert_chain(str(self.node.client_pem()))
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        return Api(server_of(self.cluster), self.session)

    async def __aexit__(self, *_: Any) -> None:
        await self.session.close()
