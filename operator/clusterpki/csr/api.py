"""The CSR handlers' API calls: a decision or a certificate onto a CSR's subresource, and the CA
Secret that signs."""

from __future__ import annotations

from typing import Any

from clusterpki.kube.api import Api

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
SPEC_FIELDS = ("request", "signerName", "usages", "username", "groups", "uid", "expirationSeconds", "extra")


class CsrApi(Api):
    async def decide(self, csr: dict[str, Any]) -> dict[str, Any]:
        """PUT a CSR with its Approved or Denied condition to the ``approval`` subresource; the CSR as
        the API now has it."""
        name = csr["metadata"]["name"]
        return await self.request("decide", f"CSR {name}", "PUT", f"{CSRS}/{name}/approval", _minimal(csr))

    async def set_certificate(self, csr: dict[str, Any]) -> None:
        """PUT a CSR with ``status.certificate`` to the ``status`` subresource."""
        name = csr["metadata"]["name"]
        await self.request("sign", f"CSR {name}", "PUT", f"{CSRS}/{name}/status", _minimal(csr))

    async def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get_or_none(f"Secret {namespace}/{name}", f"/api/v1/namespaces/{namespace}/secrets/{name}")


def _minimal(csr: dict[str, Any]) -> dict[str, Any]:
    """Only what a subresource PUT needs."""
    status = csr.get("status") or {}
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": csr["metadata"]["name"], "resourceVersion": csr["metadata"].get("resourceVersion")},
            "spec": {k: v for k, v in (csr.get("spec") or {}).items() if k in SPEC_FIELDS},
            "status": {k: v for k, v in status.items() if k in ("conditions", "certificate")}}
