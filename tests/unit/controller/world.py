"""An in-memory API for one namespace, enough for observe and apply: Secrets with resourceVersions,
creation times and 409s, one ClusterPKI with a status subresource, and Events. With it a unit test
runs the controller's whole loop (observe → decide → apply) on a fixed clock, without a server, and
plays the attacker by changing Secrets between two loops."""

from __future__ import annotations

import base64
import copy
import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

from clusterpki.controller.apply import apply
from clusterpki.controller.decide import decide
from clusterpki.controller.gates import failed
from clusterpki.controller.observe import observe
from clusterpki.controller.plan import Plan
from clusterpki.kube import secrets
from clusterpki.kube.api import ApiError
from clusterpki.kube.reports import Report
from clusterpki.kube.secret_client import meta_of
from clusterpki.pki import times

from tests.emulator import _merge as merge_patch  # RFC 7386, as the apiserver applies a merge patch

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
NAMESPACE = "ns"


def clusterpki(name: str = "x", annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "pki.clusterpki.dev/v1alpha1", "kind": "ClusterPKI",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}", "generation": 1,
                         "resourceVersion": "1", "creationTimestamp": times.format_time(T0),
                         "annotations": dict(annotations or {})},
            "spec": spec}


class World:
    def __init__(self, body: dict[str, Any] | None = None) -> None:
        self.body = body or clusterpki()
        self.secrets: dict[str, dict[str, Any]] = {}
        self.events: list[tuple[str, str, str]] = []
        self.versions = itertools.count(2)
        self.now = T0
        self.plans: list[Plan] = []
        self.others: dict[str, dict[str, Any]] = {}  # other ClusterPKIs of the namespace, as the watch brought them
        self.hidden: dict[str, dict[str, Any]] = {}  # other ClusterPKIs the watch has not brought yet
        self.reads: list[str] = []  # the reads observe made, by name

    # -- the loop ------------------------------------------------------------------------------

    async def reconcile(self, after: timedelta = timedelta(0), reports: tuple[Report, ...] = (),
                        holder: str = "operator-a", nodes: dict[str, str] | None | bool = False) -> Plan:
        """One loop, ``after`` later than the last: observe, decide, apply (and report a failed apply).
        ``nodes``: node -> the revision its node agent reports (None: not listed yet; none by default)."""
        self.now += after
        for halves in (False, True):  # as the handler does: the halves' names are read once a rotation needs them
            seen = await observe(self, copy.deepcopy(self.body), list(self.others.values()), reports, holder,
                                 nodes={} if nodes is False else nodes, halves=halves)
            plan = decide(seen, self.now)
            if not plan.read_halves:
                break
        applied = await apply(plan, seen.meta, self, seen.status)
        if applied.failure is not None:
            plan = failed(seen, self.now, *applied.failure)
            await apply(plan, seen.meta, self, seen.status)
        for event in plan.events:
            self.events.append((event.kind.value, event.reason.value, event.message))
        self.plans.append(plan)
        return plan

    def annotate(self, **annotations: str) -> None:
        self.body["metadata"]["annotations"].update(annotations)
        self._bump(self.body)

    # -- reads ---------------------------------------------------------------------------------

    async def list(self, namespace: str, pki_name: str) -> list[dict[str, Any]]:
        self.reads.append("list")
        return [copy.deepcopy(s) for s in self.secrets.values()
                if secrets.owner_of(s["metadata"].get("labels") or {}) == pki_name]

    async def names(self, namespace: str) -> dict[str, Any]:
        self.reads.append("names")
        return {name: meta_of(s["metadata"]) for name, s in self.secrets.items()}

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.secrets.get(name))

    async def clusterpki(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads.append(f"clusterpki {name}")
        return copy.deepcopy(self.others.get(name) or self.hidden.get(name))

    # -- writes --------------------------------------------------------------------------------

    async def create(self, secret: dict[str, Any]) -> dict[str, Any]:
        name = secret["metadata"]["name"]
        if name in self.secrets:
            raise ApiError("create", f"Secret {NAMESPACE}/{name}", 409, "AlreadyExists")
        stored = copy.deepcopy(secret)
        stored["metadata"]["creationTimestamp"] = times.format_time(self.now)
        self._bump(stored)
        self.secrets[name] = stored
        return copy.deepcopy(stored)

    async def replace(self, secret: dict[str, Any]) -> dict[str, Any]:
        name = secret["metadata"]["name"]
        current = self.secrets.get(name)
        if current is None or current["metadata"]["resourceVersion"] != secret["metadata"].get("resourceVersion"):
            raise ApiError("replace", f"Secret {NAMESPACE}/{name}", 409, "Conflict")
        if (current.get("immutable") and current.get("data") != secret.get("data")) or \
                current.get("type") != secret.get("type"):
            raise ApiError("replace", f"Secret {NAMESPACE}/{name}", 422, "Invalid: field is immutable")
        stored = copy.deepcopy(secret)
        for kept in ("creationTimestamp", "deletionTimestamp"):
            if kept in current["metadata"]:
                stored["metadata"][kept] = current["metadata"][kept]
        self._bump(stored)
        if stored["metadata"].get("deletionTimestamp") and not stored["metadata"].get("finalizers"):
            del self.secrets[name]  # its last finalizer is off: the deletion completes
        else:
            self.secrets[name] = stored
        return copy.deepcopy(stored)

    async def delete(self, namespace: str, name: str, resource_version: str | None = None) -> None:
        current = self.secrets.get(name)
        if current is None:
            raise ApiError("delete", f"Secret {NAMESPACE}/{name}", 404, "NotFound")
        if resource_version and current["metadata"]["resourceVersion"] != resource_version:
            raise ApiError("delete", f"Secret {NAMESPACE}/{name}", 409, "Conflict")
        if current["metadata"].get("finalizers"):  # held: it stays, marked for deletion
            current["metadata"]["deletionTimestamp"] = times.format_time(self.now)
            self._bump(current)
        else:
            del self.secrets[name]

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]:
        if resource_version is not None and resource_version != self.body["metadata"]["resourceVersion"]:
            raise ApiError("patch", f"the status of ClusterPKI {NAMESPACE}/{name}", 409, "Conflict")
        self.body["status"] = merge_patch(copy.deepcopy(self.body.get("status") or {}), status)
        self._bump(self.body)
        return copy.deepcopy(self.body)

    async def post(self, involved: dict[str, Any], kind: str, reason: str, message: str) -> None:
        pass  # kept by reconcile, from the plan

    # -- the attacker's and the user's hands -------------------------------------------------------

    def secret(self, component: str) -> dict[str, Any]:
        return self.secrets[secrets.secret_name(self.body["metadata"]["name"], component)]

    def data(self, component: str, key: str) -> bytes:
        return base64.b64decode(self.secret(component)["data"][key])

    def tamper(self, component: str, **data: bytes) -> None:
        secret = self.secret(component)
        secret["data"].update({k.replace("_", "."): base64.b64encode(v).decode() for k, v in data.items()})
        self._bump(secret)

    def plant(self, name: str, data: dict[str, bytes], labels: dict[str, str] | None = None,
              kind: str = "kubernetes.io/tls", at: datetime | None = None) -> None:
        self.secrets[name] = {"apiVersion": "v1", "kind": "Secret", "type": kind,
                              "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels or {},
                                           "creationTimestamp": times.format_time(at or self.now),
                                           "resourceVersion": str(next(self.versions))},
                              "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}

    def status(self) -> dict[str, Any]:
        return self.body.get("status") or {}

    def ready(self) -> dict[str, Any]:
        return next(c for c in self.status()["conditions"] if c["type"] == "Ready")

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.events]

    def _bump(self, obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self.versions))

