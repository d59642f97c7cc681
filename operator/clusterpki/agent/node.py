"""``clusterpki node-agent``: one per node, workers and control-plane nodes alike. It keeps the kubelet's
files of ``ca`` (:mod:`clusterpki.kubeadm.kubelet`) what the record says (:mod:`clusterpki.pki.nodes`),
restarts the kubelet when what it reads at start changed, and reports the revision it runs on its own
Node (:mod:`clusterpki.kube.node_reports`).

It runs as the node itself, with the kubelet's own ``kubelet.conf``: it may read its ClusterPKI (a Role
bound to ``system:nodes``, printed by ``clusterpki agent-manifests``), create CSRs, and patch its own
Node, nothing else, and it never sees a Secret. What it trusts comes from ``status.trustBundles``,
checked against the record. When the CA that signs is not its kubelet client certificate's issuer (a
``ca`` rotation reached Rotating, or was taken back), it asks the operator's signer
(:data:`clusterpki.pki.nodes.SIGNER`) for a new one, as the node, with a key made here that never
leaves the node.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from clusterpki.agent import health
from clusterpki.agent.restart_lock import one_restart_at_a_time
from clusterpki.agent.restarters import Restarter, RestartFailed
from clusterpki.errors import UserError
from clusterpki.kube import node_reports, resource
from clusterpki.kube.api import Api, ApiError, configuration_of
from clusterpki.kubeadm.kubelet import Files
from clusterpki.pki import certificates, keys, nodes, times
from clusterpki.pki.record import Record
from clusterpki.pki.spec import KeyAlgorithm

LOGGER = logging.getLogger("clusterpki.node-agent")
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SIGNED_WITHIN = 300.0  # seconds the operator has to sign the node's CSR
SIGNED_TOLD_AFTER = 30.0  # seconds of waiting for a signature after which the log says so
HEALTHY_WITHIN = 120.0  # seconds the restarted kubelet has to answer its health check
RETRY = 5.0
COMPONENT = "kubelet"


class NodeAgent:
    def __init__(self, connect: Callable[[], Api], namespace: str, pki_name: str, node: str, files: Files,
                 restarter: Restarter, health_url: str | None, healthy_for: float = 10.0, resync: float = 30.0) -> None:
        self.connect, self.namespace, self.pki_name, self.node, self.files = connect, namespace, pki_name, node, files
        self.restarter, self.health_url, self.healthy_for, self.resync = restarter, health_url, healthy_for, resync
        self.api = connect()
        self.reported: str | None = None

    @property
    def what(self) -> str:
        return f"{self.namespace}/{self.pki_name} on node {self.node}"

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.round()
                    await asyncio.sleep(self.resync)
                except (ApiError, UserError, RestartFailed, ValueError, OSError) as exc:
                    LOGGER.warning(f"{self.what}: {exc}; trying again in {RETRY:g}s")
                    await asyncio.sleep(RETRY)
        finally:
            await self.api.close()

    async def round(self) -> None:
        """Read the ClusterPKI, bring the kubelet's files to what it says, restart it if it must, report."""
        body = await self.api.request("get", f"ClusterPKI {self.namespace}/{self.pki_name}", "GET",
                                      resource.path(self.namespace, self.pki_name))
        status = body.get("status") or {}
        published = ((status.get("trustBundles") or {}).get(nodes.AUTHORITY) or "").encode()
        wanted = nodes.wanted(Record.from_status(status.get("record")), published)
        if not self.files.control_plane and await asyncio.to_thread(self.files.write_client_ca, wanted.trusted):
            LOGGER.info(f"{self.what}: wrote the kubelet's client CA file (it reloads it)")
        written = []
        cas = await asyncio.to_thread(self.files.kubeconfig_cas)
        if not cas or any(ca != wanted.trusted for ca in cas):
            self.files.owe_restart("kubelet.conf trusts another CA")  # on disk first: it outlives this agent
            await asyncio.to_thread(self.files.write_kubeconfig_ca, wanted.trusted)
            written.append("kubelet.conf")
        current = await asyncio.to_thread(self.files.client_certificate)
        if current is None or not certificates.signed_by(current, wanted.signer):
            await self._new_client_certificate(wanted)
            written.append("the client certificate")
        if written:
            await self._reconnect()  # this agent's credentials and trust are the kubelet's
        owed = self.files.restart_owed()
        if owed:  # until a restart succeeds, the kubelet runs what it read before: nothing to report
            await self._restart(owed)
            self.files.restart_done()
        await self._report(wanted.revision)

    async def _new_client_certificate(self, wanted: nodes.Wanted) -> None:
        key = keys.generate(KeyAlgorithm.ECDSA_P256)
        name = await self._request(key)
        chain = await self._signed(name)
        found = x509.load_pem_x509_certificates(chain)
        if not keys.same_public_key(found[0].public_key(), key) or not _chains(found, wanted) or \
                found[0].subject.rfc4514_string() != f"CN=system:node:{self.node},O=system:nodes":
            raise UserError(f"CSR {name} came back with a certificate that is not this node's from the signing CA, "
                            "or without a chain to the CA the apiservers trust now; the kubelet keeps its own")
        self.files.owe_restart("a client certificate from the CA that signs now")
        path = await asyncio.to_thread(self.files.write_client_certificate, chain, key, times.now())
        LOGGER.info(f"{self.what}: wrote {path} (serial {found[0].serial_number:X}, from CSR {name})")

    async def _request(self, key: keys.PrivateKey) -> str:
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{self.node}")])
        request = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
        pem = request.public_bytes(Encoding.PEM)
        body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
                "metadata": {"generateName": f"clusterpki-{self.node}-"},
                "spec": {"request": base64.b64encode(pem).decode(), "signerName": nodes.SIGNER,
                         "usages": ["digital signature", "client auth"]}}
        made = await self.api.request("create", "a CSR", "POST", CSRS, body)
        return made["metadata"]["name"]

    async def _signed(self, name: str) -> bytes:
        """The certificate chain of CSR ``name``, once the operator signed it."""
        clock = asyncio.get_running_loop().time
        started, told = clock(), False
        while clock() < started + SIGNED_WITHIN:
            if not told and clock() > started + SIGNED_TOLD_AFTER:
                LOGGER.info(f"{self.what}: CSR {name} is not signed yet; waiting up to {SIGNED_WITHIN:g}s")
                told = True
            found = await self.api.request("get", f"CSR {name}", "GET", f"{CSRS}/{name}")
            status = found.get("status") or {}
            if status.get("certificate"):
                return base64.b64decode(status["certificate"])
            refused = [c for c in status.get("conditions") or [] if c.get("type") in ("Denied", "Failed")]
            if refused:
                raise UserError(f"CSR {name} was {refused[0]['type'].lower()}: {refused[0].get('message', '')}")
            await asyncio.sleep(1.0)
        raise UserError(f"CSR {name} was not signed within {SIGNED_WITHIN:g}s: does the operator run with "
                        f"--csr-policy {self.namespace}/{self.pki_name}?")

    async def _restart(self, why: str) -> None:
        async with one_restart_at_a_time(self.files.etc, self.what):
            LOGGER.info(f"{self.what}: restarting the kubelet: {why}")
            await self.restarter.restart(COMPONENT)
            if self.health_url is not None:
                await self._healthy()

    async def _reconnect(self) -> None:
        fresh = self.connect()  # first: a kubeconfig that cannot be read leaves the working client in place
        await self.api.close()
        self.api = fresh

    async def _healthy(self) -> None:
        assert self.health_url is not None
        deadline = asyncio.get_running_loop().time() + HEALTHY_WITHIN
        await health.stays_healthy(COMPONENT, self.health_url, Path(), self.healthy_for, deadline, HEALTHY_WITHIN)

    async def _report(self, revision: str) -> None:
        report = node_reports.NodeReport(self.namespace, self.pki_name, revision)
        if self.reported == report.value():
            return
        path = f"/api/v1/nodes/{self.node}"
        await self.api.request("report", f"Node {self.node}", "PATCH", path, node_reports.patch(report),
                               content_type="application/merge-patch+json")
        self.reported = report.value()
        LOGGER.info(f"{self.what}: the kubelet runs revision {revision}")


def connect_with(kubeconfig: Path, context: str | None = None) -> Callable[[], Api]:
    """A fresh API client from the kubelet's kubeconfig each time: its client certificate and the CA it
    trusts change in a rotation."""
    return lambda: Api(configuration_of(kubeconfig, context))


def _chains(found: list[x509.Certificate], wanted: nodes.Wanted) -> bool:
    """The leaf is the signing CA's, and what it presents leads to the CA the control plane's files trust
    now (the same CA in Completing; in Rotating, the new CA cross-signed by the old)."""
    leaf, *chain = found
    if not certificates.signed_by(leaf, wanted.signer):
        return False
    return wanted.signer == wanted.trusted or any(certificates.signed_by(c, wanted.trusted) for c in chain)
