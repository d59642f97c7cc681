"""Events about ClusterPKIs, as ``kubectl describe`` shows them, recorded as client-go's recorder does:
the same Event again raises the count of the first one (``x4 over 2m``) instead of adding another."""

from __future__ import annotations

import socket
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from clusterpki.kube.api import MERGE_PATCH, Api, ApiError
from clusterpki.pki import times

HOST = socket.gethostname()[:128]
EVENT_SERIES = 4096  # Event series remembered, the most recent ones
MESSAGE_LIMIT = 1024


class EventRecorder:
    def __init__(self, api: Api, component: str = "clusterpki") -> None:
        self.api, self.component = api, component
        # The Event posted last for each (namespace, object, type, reason, message), and its count.
        self._series: OrderedDict[tuple[str, ...], tuple[str, int]] = OrderedDict()

    async def post(self, involved: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``involved``. Once the apiserver has let a series expire, a new one starts."""
        meta = involved["metadata"]
        message = message[:MESSAGE_LIMIT]
        key = (meta["namespace"], meta.get("uid", ""), kind, reason, message)
        if key in self._series and await self._count(meta["namespace"], key):
            return
        now = times.format_time(times.now())
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": kind, "reason": reason, "message": message, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "source": {"component": self.component, "host": HOST},
        }
        posted = await self.api.request("post", _what(meta), "POST", _path(meta["namespace"]), event)
        self._remember(key, posted["metadata"]["name"], 1)

    async def _count(self, namespace: str, key: tuple[str, ...]) -> bool:
        """Count a repeat on its series; False when the series is gone (expired), so a new one starts."""
        event_name, count = self._series.pop(key)
        patch = {"count": count + 1, "lastTimestamp": times.format_time(times.now())}
        try:
            await self.api.request("count", f"an Event in {namespace}", "PATCH", _path(namespace, event_name), patch,
                                   content_type=MERGE_PATCH)
        except ApiError as exc:
            if exc.status != 404:
                raise
            return False
        self._remember(key, event_name, count + 1)
        return True

    def _remember(self, key: tuple[str, ...], event_name: str, count: int) -> None:
        self._series[key] = (event_name, count)
        if len(self._series) > EVENT_SERIES:
            self._series.popitem(last=False)


def _what(meta: Mapping[str, Any]) -> str:
    return f"an Event on {meta['namespace']}/{meta['name']}"


def _path(namespace: str, name: str | None = None) -> str:
    collection = f"/api/v1/namespaces/{namespace}/events"
    return f"{collection}/{name}" if name else collection
