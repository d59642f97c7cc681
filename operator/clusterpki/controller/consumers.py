"""What the agents report, against the record: who runs what was issued, who holds a rotation up, whose
restart failed, who refused material, and whose report went stale. Pure.

Only a report of a member of the spec counts, and only while it is fresh (renewed within its Lease's
duration): a report from an agent the operator does not know, or one that stopped, never moves a
rotation on, and never holds one up.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from clusterpki.kube.reports import Report, RestartState, lease_name
from clusterpki.pki import nodes as node_trust
from clusterpki.pki.record import Record


@dataclass(frozen=True)
class Consumers:
    entries: tuple[dict[str, Any], ...] = ()  # status.consumers
    holding_up: str = ""  # the consumers that do not run the current Secrets, in words
    failed: str = ""  # the failed restarts, in words
    rejected: str = ""  # material an agent refused, in words
    stale: tuple[str, ...] = ()  # members whose report turned stale since the last look
    next_stale: datetime | None = None  # when a fresh report turns stale unless renewed

    @property
    def current(self) -> str:
        """``current/all`` for the CONSUMERS column."""
        return f"{sum(e['current'] for e in self.entries)}/{len(self.entries)}"


def consumers(reports: Sequence[Report], record: Record, pki_name: str, members: Collection[str], now: datetime,
              seen_before: Collection[str] = ()) -> Consumers:
    """The consumers of the reports of ``members`` that are fresh at ``now``; ``seen_before`` names the
    members the previous status listed, so that a report turning stale is told once. A member's report is
    the one in the Lease named for it: only that member's agent may write it, while what a Lease says of
    itself (its labels included) is whatever its writer put there."""
    by_lease = {r.lease: r for r in reports}
    known = [replace(by_lease[lease_name(pki_name, m)], member=m) for m in sorted(members)
             if lease_name(pki_name, m) in by_lease]
    fresh = [r for r in known if r.fresh(now)]
    entries = tuple(sorted((e for r in fresh for e in _entries(r, record)), key=lambda e: e["name"]))
    stale = tuple(sorted({r.member for r in known if not r.fresh(now) and r.member in seen_before}))
    deadlines = [r.stale_at() for r in fresh]
    return Consumers(
        entries=entries,
        holding_up=", ".join(f"{e['name']} ({', '.join(e.get('behind', []))})" for e in entries if not e["current"]),
        failed="; ".join(f"{e['name']} ({e['restart']['message']})" for e in entries
                         if e.get("restart", {}).get("state") == RestartState.FAILED.value),
        rejected="; ".join(f"{r.member}: {source}: {why}" for r in fresh for source, why in sorted(r.rejected.items())),
        stale=stale,
        next_stale=min((d for d in deadlines if d is not None), default=None))


def members_of(status: Mapping[str, Any]) -> set[str]:
    """The members a status's consumers came from."""
    return {str(e.get("name", "")).partition("/")[0] for e in status.get("consumers") or [] if isinstance(e, Mapping)}


def _entries(report: Report, record: Record) -> list[dict[str, Any]]:
    """One entry per component of a report: whether it runs what the record holds now, and if not,
    which sources it runs an older revision of."""
    found = []
    for component in sorted(set(report.loaded) | set(report.restarts)):  # a failed first restart loaded nothing
        revisions = report.loaded.get(component, {})
        behind = sorted(s for s, rev in revisions.items() if rev != record.revision([s]))
        entry: dict[str, Any] = {"name": f"{report.member}/{component}", "current": component in report.loaded
                                 and not behind}
        if behind:
            entry["behind"] = behind
        restart = report.restarts.get(component)
        if restart is not None:
            entry["restart"] = restart.to_json()
        found.append(entry)
    return found


SHOWN = 10  # nodes named in the status and in a rotation's waitingFor; the rest are counted


@dataclass(frozen=True)
class Nodes:
    """What the nodes' kubelets run, against the record: the nodes that report for this ClusterPKI, and
    those whose revision is not the record's."""

    count: int = 0
    behind: tuple[str, ...] = ()

    @property
    def current(self) -> str:
        """``current/all`` for the NODES column."""
        return f"{self.count - len(self.behind)}/{self.count}"

    @property
    def holding_up(self) -> str:
        if not self.behind:
            return ""
        more = len(self.behind) - SHOWN
        return "nodes " + ", ".join(self.behind[:SHOWN]) + (f" and {more} more" if more > 0 else "")

    def to_status(self) -> dict[str, Any]:
        return {"count": self.count, "current": self.count - len(self.behind), "behind": list(self.behind[:SHOWN])}


def nodes(reported: Mapping[str, str], record: Record) -> Nodes:
    """``reported``: node name -> the revision its agent reports (:mod:`clusterpki.kube.node_reports`)."""
    expected = node_trust.revision(record)
    return Nodes(len(reported), tuple(sorted(n for n, revision in reported.items() if revision != expected)))
