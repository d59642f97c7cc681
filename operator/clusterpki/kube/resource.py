"""Where ClusterPKIs live in the API (the CRD's group, version and plural; the document itself is
:mod:`clusterpki.pki.spec`'s), and the writes made to them: the status, which only the operator
writes, and the annotations that carry users' requests."""

from __future__ import annotations

from typing import Any

from clusterpki.kube.api import MERGE_PATCH, Api
from clusterpki.pki.spec import API_GROUP as GROUP
from clusterpki.pki.spec import KIND, VERSION

PLURAL = "clusterpkis"
GROUP_PATH = f"/apis/{GROUP}/{VERSION}"

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION", "ClusterPKIClient", "path"]


def path(namespace: str | None, name: str | None = None) -> str:
    """The API path of a namespace's ClusterPKIs (every namespace's when None), or of one of them."""
    collection = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}" if namespace else \
        f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    return f"{collection}/{name}" if name else collection


class ClusterPKIClient:
    def __init__(self, api: Api) -> None:
        self.api = api

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.api.get_or_none(f"ClusterPKI {namespace}/{name}", path(namespace, name))

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        return await self.api.request("create", f"ClusterPKI {namespace}/{name}", "POST", path(namespace), body)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]:
        """Merge-patch the status subresource; with ``resource_version``, only onto that version (HTTP 409
        when the ClusterPKI changed since). Returns the ClusterPKI as stored."""
        patch: dict[str, Any] = {"status": status}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        return await self.api.request("patch", f"the status of ClusterPKI {namespace}/{name}", "PATCH",
                                      f"{path(namespace, name)}/status", patch, content_type=MERGE_PATCH)

    async def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge-patch annotations onto a ClusterPKI (``clusterpki renew``)."""
        await self.api.request("annotate", f"ClusterPKI {namespace}/{name}", "PATCH", path(namespace, name),
                               {"metadata": {"annotations": annotations}}, content_type=MERGE_PATCH)
