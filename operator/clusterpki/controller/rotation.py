"""Zero-downtime rotation of a CA (or of the service-account key), in phases kept in the status.

``status.caRotation`` = ``{ca, phase, trigger, request, startedAt, phaseStartedAt, completedAt}``.
A phase's clock (``phaseStartedAt``) starts when its Secrets are written, not when it is decided: a
step that comes late (the operator was down, or busy) still gives consumers the whole grace period.

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

from clusterpki.controller.status import parse_timestamp, timestamp
from clusterpki.pki.spec import API_GROUP as GROUP

ROTATE = f"{GROUP}/rotate-ca"
COMPLETE = f"{GROUP}/rotate-ca-complete"
FORCE = f"{GROUP}/rotate-ca-force"  # a new value moves the current phase on without waiting for consumers
CONSUMER_RECHECK = timedelta(seconds=30)  # a look while consumers hold a phase (their reports wake it sooner)
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


def start(target: str, trigger: str, request: str | None, now: datetime) -> dict[str, Any]:
    """A new rotation in Preparing; its clock starts once Preparing's Secrets are written."""
    return {"ca": target, "phase": PREPARING, "trigger": trigger, "request": request,
            "startedAt": timestamp(now), "phaseStartedAt": None}


def advance(rotation: dict[str, Any], body: Mapping[str, Any], grace: timedelta, now: datetime,
            holding_up: str = "", token_lifetime: timedelta = timedelta(0)) -> tuple[dict[str, Any], datetime | None]:
    """The rotation once the current phase's Secrets are written, and when to look again (None: no
    step pending). A phase whose clock has not started yet starts it now: this reconcile did its work.
    Preparing and Rotating last ``grace``; ``rotate-ca-complete`` (a new value) ends Rotating early;
    Completing ends at once. A new phase is entered unstarted, for the next reconcile to do its work.

    With consumers registered, Preparing and Rotating also wait until every consumer runs the
    phase's Secrets: ``holding_up`` names those that do not (``waitingFor`` in the status);
    ``rotate-ca-force`` (a new value) stops waiting for them. Leaving ``sa``'s Rotating, the old
    public key is kept trusted for ``token_lifetime`` more (``oldKeyTrustedUntil``), for the tokens
    it signed."""
    phase = rotation["phase"]
    if phase == COMPLETING:
        return {**rotation, "phase": COMPLETED, "completedAt": timestamp(now)}, None
    if rotation.get("phaseStartedAt") is None:
        rotation = {**rotation, "phaseStartedAt": timestamp(now)}
    ends = parse_timestamp(rotation["phaseStartedAt"]) + grace
    completion = _annotations(body).get(COMPLETE)
    asked = phase == ROTATING and completion is not None and completion != rotation.get("completeRequest")
    force = _annotations(body).get(FORCE)
    forced = force is not None and force != rotation.get("forceRequest")
    if now >= ends or asked:
        if holding_up and not forced:
            return {**rotation, "waitingFor": holding_up}, now + CONSUMER_RECHECK
        following = ROTATING if phase == PREPARING else COMPLETING
        updated = {**rotation, "phase": following, "phaseStartedAt": None}
        updated.pop("waitingFor", None)
        if asked:
            updated["completeRequest"] = completion
        if forced:
            updated["forceRequest"] = force
        if rotation["ca"] == "sa" and following == COMPLETING:
            updated["oldKeyTrustedUntil"] = timestamp(now + token_lifetime)
        return updated, now
    return rotation, ends


def _annotations(body: Mapping[str, Any]) -> Mapping[str, str]:
    return (body.get("metadata") or {}).get("annotations") or {}


