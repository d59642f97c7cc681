"""The reasons of the controller's Events and conditions, as an enum, and an Event as a typed value.

A reason is a fixed word for scripts, alerts and metrics labels; the sentence that goes with it is a
separate message.
"""

from __future__ import annotations

import enum
from typing import NamedTuple


class Reason(str, enum.Enum):
    # Ready=True, and Events of what was done
    ISSUED = "Issued"
    REISSUED = "Reissued"
    RENEWED = "Renewed"
    ADOPTED = "Adopted"
    # Ready=False, each with a Warning Event
    INVALID_SPEC = "InvalidSpec"
    CA_INVALID = "CAInvalid"
    CA_MISSING = "CAMissing"
    SA_KEY_MISSING = "ServiceAccountKeyMissing"
    SA_KEY_INVALID = "ServiceAccountKeyInvalid"
    SECRET_CONFLICT = "SecretConflict"
    SECRET_TAMPERED = "SecretTampered"
    CONFLICT = "Conflict"
    API_ERROR = "APIError"
    # Warning Events that leave Ready alone
    FOREIGN_SECRET_IGNORED = "ForeignSecretIgnored"
    INVALID_RENEW_REQUEST = "InvalidRenewRequest"
    INVALID_ROTATION_REQUEST = "InvalidRotationRequest"
    ROTATION_REFUSED = "RotationRefused"
    ROTATION_RESTARTED = "RotationRestarted"
    ROTATION_RECOVERING = "RotationRecovering"
    RESTART_FAILED = "RestartFailed"
    CONSUMER_STALE = "ConsumerStale"
    MATERIAL_REJECTED = "MaterialRejected"
    # A rotation's phases (Normal Events)
    ROTATION_PREPARING = "RotationPreparing"
    ROTATION_ROTATING = "RotationRotating"
    ROTATION_COMPLETING = "RotationCompleting"
    ROTATION_COMPLETED = "RotationCompleted"
    ROTATION_ABORTING = "RotationAborting"
    ROTATION_ABORTED = "RotationAborted"
    ROTATION_WAITING = "RotationWaiting"
    # Conditions other than Ready
    NO_FAILED_RESTART = "NoFailedRestart"
    MATERIAL_ACCEPTED = "MaterialAccepted"


class Kind(str, enum.Enum):
    NORMAL = "Normal"
    WARNING = "Warning"


class Event(NamedTuple):
    kind: Kind
    reason: Reason
    message: str

    @classmethod
    def normal(cls, reason: Reason, message: str) -> Event:
        return cls(Kind.NORMAL, reason, message)

    @classmethod
    def warning(cls, reason: Reason, message: str) -> Event:
        return cls(Kind.WARNING, reason, message)
