"""Zero-downtime rotation of a CA (or of the service-account key), in phases kept in the status.

``status.caRotation`` = ``{ca, phase, trigger, request, startedAt, phaseStartedAt, completedAt}``.

- **Preparing**: a new CA is made and kept in ``<name>-<ca>-next``; the old CA still signs, and every
  trust bundle of that CA (``ca.crt``, kubeconfigs) carries old + new.
- **Rotating** (after the grace period): the new CA moves into ``<name>-<ca>``, the old one into
  ``<name>-<ca>-previous``; every leaf is re-issued from the new CA; bundles stay old + new.
- **Completing** (after ``rotate-ca-complete`` or the grace period): the old CA leaves the bundles.
- **Completed**: stays in the status until the next rotation.

At every step each leaf verifies against every bundle of its CA. For ``sa`` the same phases apply to
``sa.key`` and ``sa.pub`` (which carries old + new public keys during the rotation).
A step is a pure function of the phase and the Secrets, so a restart resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from clusterpki import durations
from clusterpki.settings import GROUP
from clusterpki.status import parse_timestamp, timestamp

ROTATE = f"{GROUP}/rotate-ca"
COMPLETE = f"{GROUP}/rotate-ca-complete"
GRACE = f"{GROUP}/rotate-ca-grace"
DEFAULT_GRACE = timedelta(hours=24)
TARGETS = ("ca", "etcd-ca", "front-proxy-ca", "sa")
PREPARING, ROTATING, COMPLETING, COMPLETED = "Preparing", "Rotating", "Completing", "Completed"
ACTIVE = (PREPARING, ROTATING, COMPLETING)


def of(body: Mapping[str, Any]) -> dict[str, Any] | None:
    rotation = (body.get("status") or {}).get("caRotation")
    return dict(rotation) if rotation else None


def is_active(rotation: Mapping[str, Any] | None) -> bool:
    return bool(rotation) and rotation.get("phase") in ACTIVE


def pending_request(body: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(target, value, problem) of a ``rotate-ca`` annotation not handled yet; all None when none.

    The value is ``TARGET`` or ``TARGET@NONCE`` (to rotate the same target again later)."""
    value = _annotations(body).get(ROTATE)
    handled = (of(body) or {}).get("request")
    if value is None or value == handled:
        return None, None, None
    target = value.partition("@")[0]
    if target not in TARGETS:
        return None, value, f"{target!r} is not one of {', '.join(TARGETS)}"
    return target, value, None


def grace(body: Mapping[str, Any]) -> timedelta:
    value = _annotations(body).get(GRACE)
    try:
        return durations.parse(value) if value else DEFAULT_GRACE
    except ValueError:
        return DEFAULT_GRACE


def start(target: str, trigger: str, request: str | None, now: datetime) -> dict[str, Any]:
    stamp = timestamp(now)
    return {"ca": target, "phase": PREPARING, "trigger": trigger, "request": request,
            "startedAt": stamp, "phaseStartedAt": stamp}


def advance(rotation: dict[str, Any], body: Mapping[str, Any], now: datetime) -> tuple[dict[str, Any], datetime | None]:
    """The rotation after the current phase's Secrets are written, and when to look again (None: no
    step pending). Preparing and Rotating last the grace period; ``rotate-ca-complete`` (a new value)
    ends Rotating early; Completing ends at once."""
    phase = rotation["phase"]
    ends = parse_timestamp(rotation["phaseStartedAt"]) + grace(body)
    completion = _annotations(body).get(COMPLETE)
    asked = phase == ROTATING and completion is not None and completion != rotation.get("completeRequest")
    if phase == COMPLETING:
        return {**rotation, "phase": COMPLETED, "completedAt": timestamp(now)}, None
    if phase in (PREPARING, ROTATING) and (now >= ends or asked):
        following = ROTATING if phase == PREPARING else COMPLETING
        updated = {**rotation, "phase": following, "phaseStartedAt": timestamp(now)}
        if asked:
            updated["completeRequest"] = completion
        return updated, now
    return rotation, ends


def _annotations(body: Mapping[str, Any]) -> Mapping[str, str]:
    return (body.get("metadata") or {}).get("annotations") or {}


