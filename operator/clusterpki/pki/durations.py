"""Go-style durations (``90s``, ``30m``, ``8760h``, ``1h30m``), as Kubernetes APIs spell them."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "ns": timedelta(microseconds=0.001),
    "us": timedelta(microseconds=1),
    "µs": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
# The whole-string form, also used as the CRD's OpenAPI pattern.
PATTERN = r"^([0-9]+(\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$"


def parse(text: str) -> timedelta:
    """Parse a positive Go duration; raise ValueError with a user-facing sentence otherwise."""
    if not isinstance(text, str) or not re.fullmatch(PATTERN, text):
        raise ValueError(f"{text!r} is not a duration such as '90s', '30m' or '8760h'")
    total = timedelta()
    for number, unit in _PART.findall(text):
        total += float(number) * _UNITS[unit]
    return total


def format_go(value: timedelta) -> str:
    """Format as Go's ``time.Duration.String()`` does for whole seconds, e.g. ``2160h0m0s``."""
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else ""
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def format_short(value: timedelta) -> str:
    """A short human form like kubeadm's RESIDUAL TIME column: ``45s``, ``12m``, ``5h``, ``364d``, ``9y``."""
    seconds = int(value.total_seconds())
    if seconds < 0:
        return "<invalid>"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 120:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 365 * 2:
        return f"{days}d"
    return f"{days // 365}y"


def format_spec(value: timedelta) -> str:
    """The short form a user writes in a spec, for whole seconds: ``8760h``, ``90m``, ``1h30m``, ``45s``."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = "".join(f"{amount}{unit}" for amount, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if amount)
    return text or "0s"
