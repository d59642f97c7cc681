"""A watch of the operator's own Secrets, as an informer keeps one, without its cache.

List, then watch from the list's version (label-filtered on the server); resume from the last
version when the server ends the watch; list again when that version has expired (HTTP 410). A
version index (Secret → resourceVersion) lets a relist report exactly what changed in the gap, so no
change is missed and none is reported twice. The first list only fills the index: at start-up every
ClusterPKI is looked at anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from clusterpki.store import Api, ApiError

WATCH_TIMEOUT = 300  # seconds the server keeps one watch open before the next one resumes it
BACKOFF = (1, 2, 5, 10, 30)  # seconds before trying again after failures in a row
LOGGER = logging.getLogger("clusterpki.informer")

Handler = Callable[[str, dict[str, Any]], None]  # (ADDED | MODIFIED | DELETED, the Secret)


class SecretWatch:
    """Follows the Secrets matching ``selector`` in ``namespaces`` (all when empty), calling
    ``on_event`` for each change."""

    def __init__(self, api: Api, namespaces: list[str], selector: str, on_event: Handler) -> None:
        self.api, self.selector, self.on_event = api, selector, on_event
        self.namespaces: list[str | None] = list(namespaces) or [None]
        self.versions: dict[tuple[str, str], tuple[str, dict[str, str]]] = {}  # -> (resourceVersion, labels)

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(namespace) for namespace in self.namespaces))

    async def _follow(self, namespace: str | None) -> None:
        path = f"/api/v1/namespaces/{namespace}/secrets" if namespace else "/api/v1/secrets"
        what = f"the Secrets of {namespace or 'all namespaces'}"
        version: str | None = None
        initial, failures = True, 0
        while True:
            try:
                if version is None:
                    version = await self._list(path, what, namespace, report=not initial)
                    initial = False
                params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                          "timeoutSeconds": str(WATCH_TIMEOUT), "labelSelector": self.selector}
                async for event in self.api.stream(what, path, params, timeout=WATCH_TIMEOUT + 30):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:  # expired: list again
                            version = None
                            break
                        raise ApiError("watch", what, obj.get("code", 0), obj.get("reason", ""))
                    version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        self._seen(kind, obj)
                    failures = 0
            except ApiError as exc:
                delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
                failures += 1
                (LOGGER.warning if failures > 1 else LOGGER.info)(f"{exc}; watching again in {delay}s")
                version = None if exc.status == 410 else version
                await asyncio.sleep(delay)

    async def _list(self, path: str, what: str, namespace: str | None, report: bool) -> str:
        """List, bring the index up to date, and report what changed since the index was last
        right (unless ``report`` is off: the first list). Returns the list's version."""
        listed = await self.api.request("list", what, "GET", path, params={"labelSelector": self.selector})
        present = set()
        for item in listed.get("items", []):
            meta = item["metadata"]
            key = (meta["namespace"], meta["name"])
            present.add(key)
            known = self.versions.get(key)
            if known is None or known[0] != meta["resourceVersion"]:
                self.versions[key] = (meta["resourceVersion"], meta.get("labels") or {})
                if report:
                    self.on_event("ADDED" if known is None else "MODIFIED", item)
        for key in [k for k in self.versions if k not in present and namespace in (None, k[0])]:
            _, labels = self.versions.pop(key)
            if report:
                self.on_event("DELETED", {"metadata": {"namespace": key[0], "name": key[1], "labels": labels}})
        return listed["metadata"]["resourceVersion"]

    def _seen(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if kind == "DELETED":
            self.versions.pop(key, None)
        else:
            self.versions[key] = (meta["resourceVersion"], meta.get("labels") or {})
        self.on_event(kind, obj)
