"""What a consumer (the agent of one control-plane member) reports: a ``coordination.k8s.io/v1`` Lease of
its own, ``<clusterpki>-agent-<member>``, made by the administrator with the agent's manifests
(``clusterpki agent-manifests``) and writable only by that member's agent: its Role names that one
Lease. Nobody who can write Secrets or ConfigMaps can forge a report, and the operator counts a
report only for a member of the spec.

The Lease's ``renewTime`` is the agent's heartbeat: a report not renewed within
``leaseDurationSeconds`` is stale and stops counting as a consumer. Its annotations carry the report:

- ``loaded``: ``{component: {source: revision}}``, the revision of each Secret whose material the
  component runs (:meth:`clusterpki.pki.record.Record.revision`, from the record, so the operator
  compares it without reading a Secret);
- ``health``: ``{component: URL}``, where the other members check this member's instance;
- ``restarts``: ``{component: {state, reason, message}}`` for restarts not done;
- ``rejected``: ``{source: message}`` for material that failed verification and was not written.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from clusterpki.kube import secrets
from clusterpki.pki import times

AGENT = "clusterpki-agent"
LABEL_MEMBER = f"{secrets.GROUP}/member"
LOADED, HEALTH, RESTARTS, REJECTED = (f"{secrets.GROUP}/{key}" for key in ("loaded", "health", "restarts", "rejected"))
LEASES = "/apis/coordination.k8s.io/v1"
LONGEST = timedelta(minutes=10)  # a report counts this long after its renewal at most, whatever it says


class RestartState(str, enum.Enum):
    WAITING = "Waiting"
    FAILED = "Failed"


class RestartReason(str, enum.Enum):
    TURN_TAKEN = "TurnTaken"  # another member restarts now
    PEER_UNHEALTHY = "PeerUnhealthy"  # another member's instance fails its health check
    COMMAND_FAILED = "RestartFailed"  # the restart itself failed
    UNHEALTHY = "NotHealthy"  # the instance did not become (or stay) healthy after its restart
    TOO_SOON = "RestartInterval"  # the component was restarted a moment ago: the next waits its interval


@dataclass(frozen=True)
class Restart:
    state: RestartState
    reason: RestartReason
    message: str

    def to_json(self) -> dict[str, str]:
        return {"state": self.state.value, "reason": self.reason.value, "message": self.message}


@dataclass(frozen=True)
class Report:
    member: str
    renewed: datetime | None = None
    duration: timedelta = timedelta(seconds=90)
    loaded: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    health: Mapping[str, str] = field(default_factory=dict)
    restarts: Mapping[str, Restart] = field(default_factory=dict)
    rejected: Mapping[str, str] = field(default_factory=dict)
    lease: str = ""  # the name of the Lease it was read from: who reports is read off it, not off labels

    def stale_at(self) -> datetime | None:
        """When the report stops counting, unless renewed; None: it never started."""
        return self.renewed + min(self.duration, LONGEST) if self.renewed else None

    def fresh(self, now: datetime) -> bool:
        until = self.stale_at()
        return until is not None and until > now

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> Report:
        """The report a Lease holds; unreadable parts count as nothing reported. Whose it is, its name says
        (see :func:`clusterpki.controller.consumers.consumers`)."""
        meta, spec = lease.get("metadata") or {}, lease.get("spec") or {}
        annotations = meta.get("annotations") or {}
        renewed = spec.get("renewTime")
        restarts = {}
        for component, found in _json(annotations, RESTARTS).items():
            try:
                restarts[component] = Restart(RestartState(found["state"]), RestartReason(found["reason"]),
                                              str(found.get("message", "")))
            except (KeyError, ValueError, TypeError):
                continue
        return cls(member=(meta.get("labels") or {}).get(LABEL_MEMBER, ""), lease=meta.get("name", ""),
                   renewed=_time(renewed), duration=timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0)),
                   loaded={c: {s: str(r) for s, r in found.items()} for c, found in _json(annotations, LOADED).items()
                           if isinstance(found, dict)},
                   health={c: url for c, url in _json(annotations, HEALTH).items() if isinstance(url, str)},
                   restarts=restarts,
                   rejected={s: str(m) for s, m in _json(annotations, REJECTED).items()})

    def annotations(self) -> dict[str, str]:
        found = {LOADED: self.loaded, HEALTH: self.health, REJECTED: self.rejected,
                 RESTARTS: {c: r.to_json() for c, r in self.restarts.items()}}
        return {key: json.dumps(value, sort_keys=True) for key, value in found.items()}


def lease_name(pki_name: str, member: str) -> str:
    return f"{pki_name}-agent-{member}"



def lease_path(namespace: str, name: str | None = None) -> str:
    collection = f"{LEASES}/namespaces/{namespace}/leases"
    return f"{collection}/{name}" if name else collection


def labels(pki_name: str, member: str) -> dict[str, str]:
    return {secrets.LABEL_PKI: pki_name, LABEL_MEMBER: member, secrets.LABEL_MANAGED_BY: AGENT}


def selector() -> str:
    """Every agent's report, of every ClusterPKI: what the operator watches."""
    return f"{secrets.LABEL_MANAGED_BY}={AGENT}"


def lease(pki_name: str, namespace: str, member: str, duration: int) -> dict[str, Any]:
    """The report Lease as the manifests make it: nobody holds it until the agent first reports."""
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name(pki_name, member), "namespace": namespace,
                         "labels": labels(pki_name, member)},
            "spec": {"leaseDurationSeconds": duration}}


def renewed(lease_object: Mapping[str, Any], report: Report, now: datetime) -> dict[str, Any]:
    """The report Lease with ``report`` in it, renewed at ``now`` (for a PUT with its resourceVersion)."""
    meta = dict(lease_object["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), **report.annotations()}
    spec = {**(lease_object.get("spec") or {}), "holderIdentity": report.member, "renewTime": times.format_micro(now),
            "leaseDurationSeconds": int(report.duration.total_seconds())}
    spec.setdefault("acquireTime", times.format_micro(now))
    return {**lease_object, "metadata": meta, "spec": spec}


def _json(annotations: Mapping[str, str], key: str) -> dict[str, Any]:
    try:
        value = json.loads(annotations.get(key) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _time(text: Any) -> datetime | None:
    try:
        return times.parse_time(str(text)) if text else None
    except ValueError:
        return None
