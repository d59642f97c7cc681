"""The one clock and the Kubernetes time formats, so that every timestamp is written and read in one place.

Kubernetes spells ``metav1.Time`` as RFC 3339 to the second (``2026-01-02T03:04:05Z``) and
``metav1.MicroTime`` (Leases, and nonces) to the microsecond (``2026-01-02T03:04:05.123456Z``).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

_SECONDS = "%Y-%m-%dT%H:%M:%SZ"
_MICROSECONDS = "%Y-%m-%dT%H:%M:%S.%fZ"


def now() -> datetime:
    """The current time, timezone-aware in UTC: the only clock the code reads."""
    return datetime.now(timezone.utc)


def format_time(moment: datetime) -> str:
    """A ``metav1.Time``: RFC 3339 in UTC, to the second."""
    return moment.astimezone(timezone.utc).strftime(_SECONDS)


def format_micro(moment: datetime) -> str:
    """A ``metav1.MicroTime``: RFC 3339 in UTC, to the microsecond."""
    return moment.astimezone(timezone.utc).strftime(_MICROSECONDS)


def ceil_second(moment: datetime) -> datetime:
    """``moment`` rounded up to the second: a start written as a ``metav1.Time`` that never shortens what
    follows it."""
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + timedelta(seconds=1)


def parse_time(text: str) -> datetime:
    """A ``metav1.Time`` or ``metav1.MicroTime``; ValueError when it is neither."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return moment.astimezone(timezone.utc)
