"""What users ask for through annotations on a ClusterPKI, and which of those values were handled.

Each request fires once per value: the value handled last is kept in ``status.requests``, so a
restart does not fire it again. ``renew`` renews leaves, ``rotate-ca`` starts a rotation,
``rotate-ca-complete`` ends a rotation's Rotating phase early, ``rotate-ca-force`` moves a phase on
without waiting for consumers, ``rotate-ca-abort`` takes a CA rotation back before Completing. ``import`` pins what ``clusterpki import`` stored (see
:mod:`clusterpki.controller.custody`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from clusterpki.pki import catalog
from clusterpki.pki.spec import API_GROUP as GROUP

RENEW = f"{GROUP}/renew"
ROTATE = f"{GROUP}/rotate-ca"
COMPLETE = f"{GROUP}/rotate-ca-complete"
FORCE = f"{GROUP}/rotate-ca-force"
ABORT = f"{GROUP}/rotate-ca-abort"
IMPORTED = f"{GROUP}/imported"  # JSON {component: data digest} of the Secrets `clusterpki import` stored
TARGETS = (*(ca.component for ca in catalog.CERTIFICATE_AUTHORITIES), catalog.SERVICE_ACCOUNT)


@dataclass(frozen=True)
class Requests:
    """Request values, by annotation: what a user asks for, or (in the status) what was handled."""

    renew: str | None = None
    rotate: str | None = None
    complete: str | None = None
    force: str | None = None
    abort: str | None = None

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> Requests:
        return cls(renew=annotations.get(RENEW), rotate=annotations.get(ROTATE), complete=annotations.get(COMPLETE),
                   force=annotations.get(FORCE), abort=annotations.get(ABORT))

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> Requests:
        """The values handled, from ``status.requests``."""
        found = status.get("requests") or {}
        return cls(**{f.name: found.get(f.name) for f in fields(cls)})

    def to_status(self) -> dict[str, str]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def new_since(self, handled: Requests) -> Requests:
        """The values not handled yet; None where a value was handled (or is absent)."""
        return Requests(**{f.name: value if (value := getattr(self, f.name)) != getattr(handled, f.name) else None
                           for f in fields(self)})

    def with_handled(self, **values: str | None) -> Requests:
        return replace(self, **values)


def rotation_target(value: str) -> tuple[str | None, str | None]:
    """(target, problem) of a ``rotate-ca`` value: ``TARGET`` or ``TARGET@NONCE`` (to rotate it again)."""
    target = value.partition("@")[0]
    if target not in TARGETS:
        return None, f"{target!r} is not one of {', '.join(TARGETS)}"
    return target, None


def renewal_targets(value: str, leaves: Collection[str]) -> tuple[set[str], str | None]:
    """The leaves a ``renew`` value names, and a problem if it names unknown components.

    ``COMPONENTS@NONCE`` renews the comma-separated COMPONENTS (all leaves when empty); a value
    without ``@`` renews the components it lists if it lists only components, else all leaves, so any
    new value (a timestamp, say) renews everything.
    """
    names, at, _ = value.partition("@")
    listed = {n.strip() for n in names.split(",") if n.strip()}
    if not at and not (listed and listed <= set(leaves)):
        return set(leaves), None
    unknown = listed - set(leaves)
    if unknown:
        return set(), f"{', '.join(sorted(unknown))} {'is not a leaf' if len(unknown) == 1 else 'are not leaves'} " \
                      f"of this ClusterPKI"
    return listed or set(leaves), None


def imported(annotations: Mapping[str, str]) -> dict[str, str]:
    """The data digests ``clusterpki import`` pinned, by component; empty when there are none or the value
    is not a JSON mapping of strings (then nothing is taken on its word)."""
    try:
        found = json.loads(annotations.get(IMPORTED) or "{}")
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(c): str(d) for c, d in found.items() if isinstance(d, str)}
