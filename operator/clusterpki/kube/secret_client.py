"""The Secrets of ClusterPKIs in the API: reads by label or by name, and writes with optimistic
concurrency. Nothing here decides what to write (:mod:`clusterpki.controller.decide` does)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from clusterpki.kube import secrets
from clusterpki.kube.api import PARTIAL_METADATA, Api
from clusterpki.pki import times

Secret = dict[str, Any]


class SecretMeta(NamedTuple):
    """A Secret's name-level facts, from a metadata-only read: who it says it belongs to, and its age."""

    labels: dict[str, str]
    created: datetime | None


class SecretClient:
    def __init__(self, api: Api) -> None:
        self.api = api

    async def list(self, namespace: str, pki_name: str) -> list[Secret]:
        """The Secrets carrying one ClusterPKI's labels: one LIST by label, from the apiserver's watch
        cache (``resourceVersion=0``; a quorum read from etcd would scan the whole namespace). A read a
        moment stale is safe: every write carries the resourceVersion it read, or is a create, so a
        stale read ends in a 409 and a retry, never in a second write."""
        body = await self.api.request("list", f"Secrets of {namespace}/{pki_name}", "GET", path(namespace),
                                      params={"labelSelector": secrets.selector(pki_name), "resourceVersion": "0"})
        return body.get("items") or []

    async def names(self, namespace: str, selector: str = "") -> dict[str, SecretMeta]:
        """The name, labels and creation time of the Secrets of a namespace (that match ``selector``):
        their metadata only, from the apiserver's watch cache, not their data."""
        params = {"resourceVersion": "0", **({"labelSelector": selector} if selector else {})}
        body = await self.api.request("list", f"the Secrets of namespace {namespace}", "GET", path(namespace),
                                      params=params, accept=PARTIAL_METADATA)
        return {item["metadata"]["name"]: meta_of(item["metadata"]) for item in body.get("items") or []}

    async def get(self, namespace: str, name: str) -> Secret | None:
        return await self.api.get_or_none(f"Secret {namespace}/{name}", path(namespace, name))

    async def create(self, secret: Secret) -> Secret:
        """Create; HTTP 409 AlreadyExists when it exists, e.g. made meanwhile by another replica."""
        meta = secret["metadata"]
        return await self.api.request("create", f"Secret {meta['namespace']}/{meta['name']}", "POST",
                                      path(meta["namespace"]), secret)

    async def replace(self, secret: Secret) -> Secret:
        """Replace with optimistic concurrency: a Secret changed since it was read gives HTTP 409."""
        meta = secret["metadata"]
        return await self.api.request("replace", f"Secret {meta['namespace']}/{meta['name']}", "PUT",
                                      path(meta["namespace"], meta["name"]), secret)

    async def delete(self, namespace: str, name: str, resource_version: str | None = None) -> None:
        """Delete; with ``resource_version``, only the version read (a 409 when it changed)."""
        body = {"preconditions": {"resourceVersion": resource_version}} if resource_version else None
        await self.api.request("delete", f"Secret {namespace}/{name}", "DELETE", path(namespace, name), body)


def meta_of(meta: dict[str, Any]) -> SecretMeta:
    created = meta.get("creationTimestamp")
    return SecretMeta(dict(meta.get("labels") or {}), times.parse_time(created) if created else None)


def path(namespace: str, name: str | None = None) -> str:
    collection = f"/api/v1/namespaces/{namespace}/secrets"
    return f"{collection}/{name}" if name else collection
