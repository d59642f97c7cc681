"""Zero-downtime rotation of a CA (or of the service-account key), in phases, as typed state.

``status.caRotation`` holds a :class:`Rotation`. A phase's clock (``phaseStartedAt``) starts when its
Secrets are written, not when it is decided: a step that comes late (the operator was down, or a
Secret was in the way) still gives consumers the whole grace period.

- **Preparing**: a new CA is made and kept in ``<name>-<ca>-next``; the old CA still signs, and every
  trust bundle of that CA (``ca.crt``, kubeconfigs) carries old + new.
- **Rotating** (after the grace period): the new CA moves into ``<name>-<ca>``, the old one into
  ``<name>-<ca>-previous``; every leaf is re-issued from the new CA; bundles stay old + new.
- **Completing** (after ``rotate-ca-complete`` or the grace period): the old CA leaves the bundles.
- **Completed**: stays in the status until the next rotation.
- **Aborting** (after ``rotate-ca-abort`` in Preparing or Rotating, for a CA): the old CA signs again and
  its leaves are re-issued from it; bundles carry old + new while consumers move back.
- **Aborted**, once no consumer holds Aborting up: the new CA leaves the bundles and is deleted.

``old`` and ``new`` are the fingerprints of the authority replaced and of its replacement, so that a
move cut short anywhere is finished with exactly those two. What each phase puts in place is
:mod:`clusterpki.controller.phases`; this module is the state and when it moves on.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from clusterpki.pki import catalog, times

CONSUMER_RECHECK = timedelta(seconds=30)  # a look while consumers hold a phase (their reports wake it sooner)


class Phase(str, enum.Enum):
    PREPARING = "Preparing"
    ROTATING = "Rotating"
    COMPLETING = "Completing"
    COMPLETED = "Completed"
    ABORTING = "Aborting"
    ABORTED = "Aborted"

    @property
    def following(self) -> Phase:
        order = list(Phase)
        return order[min(order.index(self) + 1, len(order) - 1)]


ACTIVE = (Phase.PREPARING, Phase.ROTATING, Phase.COMPLETING, Phase.ABORTING)
ABORTABLE = (Phase.PREPARING, Phase.ROTATING)
SETTLING = {Phase.COMPLETING: Phase.COMPLETED, Phase.ABORTING: Phase.ABORTED}  # end once no consumer holds them


class Trigger(str, enum.Enum):
    ANNOTATION = "annotation"
    RENEWAL_WINDOW = "renewal window"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class Rotation:
    target: str  # a CA component, or "sa"
    phase: Phase
    trigger: Trigger
    request: str | None
    started_at: datetime
    phase_started_at: datetime | None = None  # None: the phase's Secrets are not written yet
    completed_at: datetime | None = None
    old: str | None = None  # fingerprint of the CA (or public key) being replaced
    new: str | None = None  # fingerprint of its replacement, once made
    waiting_for: str | None = None  # consumers that hold the phase up
    old_key_trusted_until: datetime | None = None  # sa: until when sa.pub keeps the old key

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE

    @property
    def in_progress(self) -> str | None:
        """What ``kubectl get`` shows in its PHASE column: ``<authority> <phase>`` while active, else None."""
        return f"{self.target} {self.phase.value}" if self.active else None

    @property
    def of_service_account(self) -> bool:
        return self.target == catalog.SERVICE_ACCOUNT

    def enter(self, phase: Phase) -> Rotation:
        """The rotation in ``phase``, its clock not started: the next reconcile does the phase's work."""
        return replace(self, phase=phase, phase_started_at=None, waiting_for=None)

    def to_status(self) -> dict[str, Any]:
        found = {"ca": self.target, "phase": self.phase.value, "trigger": self.trigger.value, "request": self.request,
                 "startedAt": times.format_time(self.started_at), "phaseStartedAt": _time(self.phase_started_at),
                 "completedAt": _time(self.completed_at), "oldFingerprint": self.old, "newFingerprint": self.new,
                 "waitingFor": self.waiting_for, "oldKeyTrustedUntil": _time(self.old_key_trusted_until)}
        return {k: v for k, v in found.items() if v is not None or k in ("request", "phaseStartedAt")}

    @classmethod
    def from_status(cls, found: Mapping[str, Any] | None) -> Rotation | None:
        """The rotation in a status; None when there is none, or it cannot be read (a rotation the
        operator cannot read is not one it continues)."""
        if not isinstance(found, Mapping) or not found.get("ca") or not found.get("phase"):
            return None
        try:
            return cls(target=str(found["ca"]), phase=Phase(found["phase"]),
                       trigger=Trigger(found.get("trigger", Trigger.ANNOTATION.value)), request=found.get("request"),
                       started_at=times.parse_time(found["startedAt"]),
                       phase_started_at=_parse(found.get("phaseStartedAt")),
                       completed_at=_parse(found.get("completedAt")),
                       old=found.get("oldFingerprint", found.get("old")),  # (named old and new before 0.1.1)
                       new=found.get("newFingerprint", found.get("new")),
                       waiting_for=found.get("waitingFor"),
                       old_key_trusted_until=_parse(found.get("oldKeyTrustedUntil")))
        except (KeyError, ValueError, TypeError):
            return None


def start(target: str, trigger: Trigger, request: str | None, old: str, now: datetime) -> Rotation:
    """A new rotation in Preparing; its clock starts once Preparing's Secrets are written."""
    return Rotation(target=target, phase=Phase.PREPARING, trigger=trigger, request=request, started_at=now, old=old)


@dataclass(frozen=True)
class Push:
    """What may move a phase on besides its grace period: a new ``rotate-ca-complete`` value (ends
    Rotating early), a new ``rotate-ca-force`` value (stops waiting for consumers)."""

    complete: bool = False
    force: bool = False
    abort: bool = False


NO_PUSH = Push()


def advance(rotation: Rotation, grace: timedelta, now: datetime, holding_up: str = "", push: Push = NO_PUSH,
            token_lifetime: timedelta = timedelta(0)) -> tuple[Rotation, datetime | None, Push]:
    """The rotation once the current phase's Secrets are written, when to look again (None: nothing
    pending), and which pushes it used. A phase whose clock has not started starts it now. Preparing
    and Rotating last ``grace`` and, with consumers registered, until none holds them up
    (``holding_up`` names those that do). Completing ends as soon as no consumer holds it up: Completed
    means every consumer runs without the old CA. Leaving ``sa``'s Rotating, the old public key stays
    trusted for ``token_lifetime`` more, for the tokens it signed."""
    if push.abort and rotation.phase in ABORTABLE and not rotation.of_service_account:
        return rotation.enter(Phase.ABORTING), now, Push(abort=True)
    if rotation.phase in SETTLING:
        if holding_up and not push.force:
            return replace(rotation, waiting_for=holding_up), now + CONSUMER_RECHECK, NO_PUSH
        return replace(rotation, phase=SETTLING[rotation.phase], completed_at=now, waiting_for=None), None, \
            Push(force=push.force)
    if not rotation.active:
        return rotation, None, NO_PUSH
    if rotation.phase_started_at is None:  # to the second, as the status keeps it, never earlier than now
        rotation = replace(rotation, phase_started_at=times.ceil_second(now))
    ends = rotation.phase_started_at + grace
    complete = push.complete and rotation.phase is Phase.ROTATING
    if now < ends and not complete:
        return rotation, ends, NO_PUSH
    if holding_up and not push.force:
        return replace(rotation, waiting_for=holding_up), now + CONSUMER_RECHECK, NO_PUSH
    moved = rotation.enter(rotation.phase.following)
    if moved.of_service_account and moved.phase is Phase.COMPLETING:
        moved = replace(moved, old_key_trusted_until=times.ceil_second(now + token_lifetime))
    return moved, now, Push(complete=complete, force=push.force)


def _time(moment: datetime | None) -> str | None:
    return times.format_time(moment) if moment else None


def _parse(text: Any) -> datetime | None:
    return times.parse_time(str(text)) if text else None
