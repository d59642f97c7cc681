"""A small, stateful Kubernetes API emulator over HTTP, for running the real Kopf machinery in tests.

It implements what the operator and Kopf rely on, the way kube-apiserver does it:
- discovery (``/api``, ``/apis``, group versions, subresources);
- list with label and field selectors, and watch from a resourceVersion (no replay of old objects);
- create (with ``generateName``), get, replace (PUT, with optimistic concurrency), delete;
- merge, strategic-merge (as merge) and JSON patches, with 422 when a ``test`` op fails;
- ``resourceVersion``, ``uid``, ``generation`` (bumped on spec changes), ``creationTimestamp``;
- the ``status`` and CSR ``approval`` subresources, separated from the main resource;
- finalizers and ownerReference garbage collection on delete.

Every request is recorded in :attr:`Emulator.requests` for assertions on what the operator wrote.
Run as ``python -m tests.emulator --kubeconfig PATH`` it serves in a process of its own (for
``bench/``), and ``GET /emulator/requests?since=N`` returns that log without the bodies.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import copy
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES = (
    Resource("", "v1", "namespaces", "Namespace", False),
    Resource("", "v1", "secrets", "Secret", True),
    Resource("", "v1", "events", "Event", True),
    Resource("", "v1", "nodes", "Node", False, ("status",)),
    Resource("certificates.k8s.io", "v1", "certificatesigningrequests", "CertificateSigningRequest", False,
             ("status", "approval")),
    Resource("pki.clusterpki.dev", "v1alpha1", "clusterpkis", "ClusterPKI", True, ("status",)),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True),
)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any
    agent: str = ""
    received: float = 0.0  # time.monotonic() when the request arrived

    @property
    def by_operator(self) -> bool:
        """Made by Kopf or the official Kubernetes client, not by a test's own HTTP client."""
        return self.agent.startswith(("kopf/", "OpenAPI-Generator/", "clusterpki/"))


@dataclass
class _Event:
    rv: int
    resource: Resource
    type: str
    obj: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def response(self) -> web.Response:
        return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                  "message": self.message, "reason": self.reason, "code": self.code},
                                 status=self.code)


@dataclass
class Emulator:
    objects: dict[tuple[Resource, str | None, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _history: list[_Event] = field(default_factory=list)
    _rv: int = 0
    _changed: asyncio.Condition | None = None
    _runner: web.AppRunner | None = None
    port: int = 0
    token: str = "test-token"  # every request must carry it, as a real apiserver demands credentials
    watch_lag: float = 0.0  # seconds each watch event is held back, as from a busy apiserver

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> str:
        self._changed = asyncio.Condition()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that reaches this emulator with its bearer token."""
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {"token": self.token}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
        }))
        return path

    # -- direct access for tests -----------------------------------------------------------------

    def get(self, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        obj = self.objects.get((_by_plural(plural), namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list(self, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        resource = _by_plural(plural)
        return [copy.deepcopy(o) for (r, ns, _), o in sorted(self.objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
                if r == resource and (namespace is None or ns == namespace)]

    def writes(self, path_part: str = "") -> list[Request]:
        return [r for r in self.requests if r.method in ("POST", "PUT", "PATCH", "DELETE") and path_part in r.path]

    # -- HTTP --------------------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        self.requests.append(Request(request.method, request.path, dict(request.query),
                                     request.content_type, body, request.headers.get("User-Agent", ""),
                                     time.monotonic()))
        try:
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if request.path == "/emulator/requests":
                return web.json_response(self._request_log(int(request.query.get("since", "0"))))
            discovery = self._discovery(request.path)
            if discovery is not None:
                return web.json_response(discovery)
            resource, namespace, name, sub = self._parse(request.path)
            if request.method == "GET" and name is None:
                if request.query.get("watch") in ("true", "1"):
                    return await self._watch(request, resource, namespace)
                return web.json_response(self._list(resource, namespace, request.query))
            if request.method == "GET":
                return web.json_response(self._fetch(resource, namespace, name))
            if request.method == "POST" and name is None:
                return web.json_response(await self._create(resource, namespace, body), status=201)
            if request.method == "PUT" and name is not None:
                return web.json_response(await self._replace(resource, namespace, name, sub, body))
            if request.method == "PATCH" and name is not None:
                return web.json_response(await self._patch(resource, namespace, name, sub,
                                                           request.content_type, body))
            if request.method == "DELETE" and name is not None:
                return web.json_response(await self._delete(resource, namespace, name))
            raise ApiError(405, "MethodNotAllowed", f"{request.method} {request.path} is not supported")
        except ApiError as exc:
            return exc.response()

    def _request_log(self, since: int) -> list[dict[str, Any]]:
        """The requests from the ``since``-th on, without bodies; a create names its object."""
        return [{"method": r.method, "path": r.path, "watch": r.query.get("watch") in ("true", "1"),
                 "by_operator": r.by_operator, "received": r.received,
                 "created": ((r.body or {}).get("metadata") or {}).get("name") if r.method == "POST" else None}
                for r in self.requests[since:]]

    def _discovery(self, path: str) -> dict[str, Any] | None:
        path = path.rstrip("/")
        if path == "/version":
            return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-emulator"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            groups = sorted({r.group for r in RESOURCES if r.group})
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g) for g in groups]}
        parts = path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "apis":
            return self._group(parts[1])
        if (len(parts) == 2 and parts[0] == "api") or (len(parts) == 3 and parts[0] == "apis"):
            group, version = ("", parts[1]) if parts[0] == "api" else (parts[1], parts[2])
            listed = []
            for r in RESOURCES:
                if (r.group, r.version) == (group, version):
                    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
                    listed.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                                   "kind": r.kind, "verbs": verbs})
                    listed += [{"name": f"{r.plural}/{s}", "singularName": "", "namespaced": r.namespaced,
                                "kind": r.kind, "verbs": ["get", "patch", "update"]} for s in r.subresources]
            return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}".lstrip("/"),
                    "resources": listed}
        return None

    @staticmethod
    def _group(group: str) -> dict[str, Any]:
        versions = sorted({r.version for r in RESOURCES if r.group == group})
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": entries,
                "preferredVersion": entries[0]}

    @staticmethod
    def _parse(path: str) -> tuple[Resource, str | None, str | None, str | None]:
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        candidates = [r for r in RESOURCES if (r.group, r.version, r.plural) == (group, version, rest[0])]
        if not candidates:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        resource = candidates[0]
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in resource.subresources:
            raise ApiError(404, "NotFound", f"{resource.plural} has no subresource {sub}")
        if resource.namespaced and name is not None and namespace is None:
            raise ApiError(404, "NotFound", f"{resource.plural} are namespaced")
        return resource, namespace, name, sub

    # -- verbs ---------------------------------------------------------------------------------

    def _list(self, resource: Resource, namespace: str | None, query: dict[str, str]) -> dict[str, Any]:
        items = [copy.deepcopy(o) for o in self._select(resource, namespace, query)]
        return {"kind": f"{resource.kind}List", "apiVersion": resource.group_version,
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _select(self, resource: Resource, namespace: str | None, query: dict[str, str]) -> Iterator[dict]:
        labels = _parse_selector(query.get("labelSelector", ""))
        fields = _parse_selector(query.get("fieldSelector", ""))
        scoped = [(key, obj) for key, obj in self.objects.items()
                  if key[0] == resource and (namespace is None or key[1] == namespace)]
        for _, obj in sorted(scoped, key=lambda kv: (kv[0][1] or "", kv[0][2])):
            if _matches(obj, labels, fields):
                yield obj

    async def _watch(self, request: web.Request, resource: Resource, namespace: str | None) -> web.StreamResponse:
        assert self._changed is not None
        labels = _parse_selector(request.query.get("labelSelector", ""))
        fields = _parse_selector(request.query.get("fieldSelector", ""))
        since = request.query.get("resourceVersion")
        timeout = float(request.query.get("timeoutSeconds", "3600"))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if since in (None, "", "0"):  # no resourceVersion: synthetic ADDED for the current state
            for obj in list(self._select(resource, namespace, {})):
                if _matches(obj, labels, fields):
                    await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            index = len(self._history)
        else:  # only what happened after that version: a watch never replays older objects
            index = bisect.bisect_right([e.rv for e in self._history], int(since))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while loop.time() < deadline:
                while index < len(self._history):
                    event = self._history[index]
                    index += 1
                    if self.watch_lag:
                        await asyncio.sleep(event.at + self.watch_lag - time.monotonic())
                    if event.resource == resource and \
                            (namespace is None or event.obj["metadata"].get("namespace") == namespace) and \
                            _matches(event.obj, labels, fields):
                        await response.write(json.dumps({"type": event.type, "object": event.obj}).encode() + b"\n")
                async with self._changed:
                    if index == len(self._history):
                        try:
                            await asyncio.wait_for(self._changed.wait(), timeout=max(0.0, deadline - loop.time()))
                        except asyncio.TimeoutError:
                            break
        except ConnectionError:
            pass  # the client went away
        return response

    def _fetch(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        obj = self.objects.get((resource, namespace, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
        return copy.deepcopy(obj)

    async def _create(self, resource: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        key = (resource, namespace if resource.namespaced else None, name)
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{resource.plural} "{name}" already exists')
        if resource.namespaced:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        meta.pop("resourceVersion", None)
        obj.setdefault("apiVersion", resource.group_version)
        obj.setdefault("kind", resource.kind)
        if "status" in resource.subresources and resource.plural != "nodes":  # a kubelet registers with status
            obj.pop("status", None)
        await self._store(resource, key, obj, "ADDED")
        return copy.deepcopy(obj)

    async def _replace(self, resource: Resource, namespace: str | None, name: str, sub: str | None,
                       body: dict[str, Any]) -> dict[str, Any]:
        key, current = self._current(resource, namespace, name)
        sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource.plural} "{name}": '
                                            "the object has been modified; please apply your changes to the "
                                            "latest version and try again")
        return await self._commit(resource, key, current, copy.deepcopy(body), sub)

    async def _patch(self, resource: Resource, namespace: str | None, name: str, sub: str | None,
                     content_type: str, body: Any) -> dict[str, Any]:
        key, current = self._current(resource, namespace, name)
        if content_type == "application/json-patch+json":
            wanted = _json_patch(copy.deepcopy(current), body)
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            wanted = _merge(copy.deepcopy(current), body)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type}")
        sent_rv = ((body if isinstance(body, dict) else {}).get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:  # a precondition, as the apiserver has it
            raise ApiError(409, "Conflict", f"the object has been modified; {resource.plural} {name!r}")
        return await self._commit(resource, key, current, wanted, sub)

    async def _commit(self, resource: Resource, key: tuple, current: dict[str, Any], wanted: dict[str, Any],
                      sub: str | None) -> dict[str, Any]:
        """Store ``wanted`` as the new state, keeping what the (sub)resource may not change."""
        if sub == "status":
            new = copy.deepcopy(current)
            new["status"] = wanted.get("status")
        elif sub == "approval":
            new = copy.deepcopy(current)
            new.setdefault("status", {})["conditions"] = (wanted.get("status") or {}).get("conditions")
        else:
            new = wanted
            if "status" in resource.subresources:
                new["status"] = copy.deepcopy(current.get("status"))
            for immutable in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
                if immutable in current["metadata"]:
                    new["metadata"][immutable] = current["metadata"][immutable]
            generation = current["metadata"].get("generation", 1)
            if new.get("spec") != current.get("spec"):
                generation += 1
            new["metadata"]["generation"] = generation
        if new.get("status") is None:
            new.pop("status", None)
        if new == current:
            return copy.deepcopy(current)
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._remove(resource, key)
            return copy.deepcopy(new)
        await self._store(resource, key, new, "MODIFIED")
        return copy.deepcopy(new)

    async def _delete(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        key, current = self._current(resource, namespace, name)
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                marked = copy.deepcopy(current)
                marked["metadata"]["deletionTimestamp"] = _now()
                await self._store(resource, key, marked, "MODIFIED")
            return copy.deepcopy(self.objects[key])
        await self._remove(resource, key)
        return current

    def _current(self, resource: Resource, namespace: str | None, name: str) -> tuple[tuple, dict[str, Any]]:
        key = (resource, namespace if resource.namespaced else None, name)
        if key not in self.objects:
            raise ApiError(404, "NotFound", f'{resource.plural} "{name}" not found')
        return key, self.objects[key]

    async def _store(self, resource: Resource, key: tuple, obj: dict[str, Any], kind: str) -> None:
        assert self._changed is not None
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[key] = obj
        self._history.append(_Event(self._rv, resource, kind, copy.deepcopy(obj)))
        async with self._changed:
            self._changed.notify_all()

    async def _remove(self, resource: Resource, key: tuple) -> None:
        assert self._changed is not None
        obj = self.objects.pop(key)
        self._rv += 1
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append(_Event(self._rv, resource, "DELETED", gone))
        async with self._changed:
            self._changed.notify_all()
        uid = obj["metadata"]["uid"]  # garbage-collect the dependents, as kube-controller-manager does
        for dep_key, dep in list(self.objects.items()):
            if any(ref.get("uid") == uid for ref in dep["metadata"].get("ownerReferences", [])):
                await self._delete(dep_key[0], dep_key[1], dep_key[2])


def _by_plural(plural: str) -> Resource:
    return next(r for r in RESOURCES if r.plural == plural)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_SET_BASED = re.compile(r"(\S+)\s+(in|notin)\s+\((.*)\)")


def _parse_selector(text: str) -> list[tuple[str, str, Any]]:
    """Equality- and set-based selectors: ``a=b``, ``a==b``, ``a!=b``, ``a``, ``!a``, ``a in (x,y)``."""
    terms: list[tuple[str, str, Any]] = []
    depth, start = 0, 0
    pieces = []
    for index, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            pieces.append(text[start:index])
            start = index + 1
    pieces.append(text[start:])
    for piece in (p.strip() for p in pieces):
        if not piece:
            continue
        set_based = _SET_BASED.fullmatch(piece)
        if set_based:
            key, op, values = set_based.groups()
            terms.append((key, op, {v.strip() for v in values.split(",")}))
        elif "!=" in piece:
            key, _, value = piece.partition("!=")
            terms.append((key.strip(), "!=", value.strip()))
        elif "=" in piece:
            key, _, value = piece.replace("==", "=").partition("=")
            terms.append((key.strip(), "=", value.strip()))
        elif piece.startswith("!"):
            terms.append((piece[1:], "absent", None))
        else:
            terms.append((piece, "exists", None))
    return terms


def _field(obj: dict[str, Any], path: str) -> Any:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _matches(obj: dict[str, Any], labels: list, fields: list) -> bool:
    own = obj["metadata"].get("labels") or {}
    for key, op, value in labels:
        have = own.get(key)
        if (op == "=" and have != value) or (op == "!=" and have == value) or (op == "exists" and key not in own) \
                or (op == "absent" and key in own) or (op == "in" and have not in value) \
                or (op == "notin" and have in value):
            return False
    for key, op, value in fields:
        have = _field(obj, key)
        have = "" if have is None else str(have)
        if (op == "=" and have != value) or (op == "!=" and have == value):
            return False
    return True


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 JSON patch; a failed ``test`` is a 422, as kube-apiserver answers."""
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1] if parts else None
        kind = op["op"]
        if kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: "
                                               f"test failed at {op['path']}")
        elif kind in ("add", "replace"):
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, op["value"])
                else:
                    parent[index] = op["value"]
            else:
                parent[last] = op["value"]
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            else:
                parent.pop(last, None)
        else:
            raise ApiError(422, "Invalid", f"unsupported JSON patch op {kind}")
    return doc


def main() -> None:
    """Serve the emulator in this process until it is killed; print its URL once it listens."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True, help="where to write its kubeconfig")
    args = parser.parse_args()

    async def serve() -> None:
        emulator = Emulator()
        await emulator.start()
        emulator.write_kubeconfig(args.kubeconfig)
        print(emulator.url, flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
