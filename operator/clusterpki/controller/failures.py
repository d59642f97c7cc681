"""How a decision that cannot go on is reported: Ready=False with a reason, and its Warning Event."""

from __future__ import annotations

from datetime import datetime

from clusterpki.controller.observe import Observed, Stranger
from clusterpki.controller.plan import Plan, Retry
from clusterpki.controller.reasons import Event, Reason
from clusterpki.controller.status import failure


def failed(seen: Observed, now: datetime, reason: Reason, message: str, retry: Retry | None = None) -> Plan:
    """Ready=False with ``reason``, and its Warning Event; nothing written."""
    return Plan(status=failure(reason, message, seen.meta.generation, seen.conditions, now),
                events=(Event.warning(reason, message),), retry=retry)


def in_the_way(stranger: Stranger) -> str:
    owner = f"belongs to ClusterPKI {stranger.owner} ({stranger.component})" if stranger.owner else \
        "exists and is not managed by clusterpki"
    return f"Secret {stranger.name} {owner}"
