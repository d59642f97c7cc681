"""The Secrets of ClusterPKIs in the API, and the other writes the operator makes: the status and
annotations of ClusterPKIs, and Events about them."""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from kubernetes import client

from clusterpki.kube import reports, resource, secrets
from clusterpki.kube.api import MERGE_PATCH, PARTIAL_METADATA, Api, ApiError

Secret = dict[str, Any]
HOST = socket.gethostname()[:128]
EVENT_SERIES = 4096  # Event series remembered, the most recent ones


class SecretStore(Api):
    """Secrets, and the writes the operator makes to ClusterPKIs (their status) and Events."""

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

    async def reports(self, namespace: str, pki_name: str) -> list[dict[str, Any]]:
        """The consumer reports of one ClusterPKI (:mod:`clusterpki.kube.reports`), from the watch cache."""
        body = await self.request("list", f"the consumer reports of {namespace}/{pki_name}", "GET",
                                  reports.path(namespace),
                                  params={"labelSelector": reports.selector(pki_name), "resourceVersion": "0"})
        return body.get("items") or []

    async def names(self, namespace: str, selector: str = "") -> dict[str, dict[str, str]]:
        """The name and labels of the Secrets of a namespace (that match ``selector``): their metadata
        only, from the apiserver's watch cache (``resourceVersion=0``), not their data."""
        params = {"resourceVersion": "0", **({"labelSelector": selector} if selector else {})}
        body = await self.request("list", f"the Secrets of namespace {namespace}", "GET", _secrets(namespace),
                                  params=params, accept=PARTIAL_METADATA)
        return {item["metadata"]["name"]: item["metadata"].get("labels") or {} for item in body.get("items") or []}

    async def get(self, namespace: str, name: str) -> Secret | None:
        return await self.get_or_none(f"Secret {namespace}/{name}", _secrets(namespace, name))

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
                           f"{resource.path(namespace, name)}/status", {"status": status}, content_type=MERGE_PATCH)

    async def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge-patch annotations onto a ClusterPKI (``clusterpki renew`` and ``rotate-ca``)."""
        await self.request("annotate", f"ClusterPKI {namespace}/{name}", "PATCH", resource.path(namespace, name),
                           {"metadata": {"annotations": annotations}}, content_type=MERGE_PATCH)

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
