"""What users ask for through annotations on a ClusterPKI, and whether it was already done.

Each request is recorded in the status once handled, so it fires once per value, across restarts.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from clusterpki.pki.spec import API_GROUP as GROUP

RENEW = f"{GROUP}/renew"


def pending_renewal(body: Mapping[str, Any]) -> str | None:
    """The ``renew`` annotation's value when it has not been handled yet."""
    value = ((body.get("metadata") or {}).get("annotations") or {}).get(RENEW)
    handled = (body.get("status") or {}).get("renewRequest")
    return value if value is not None and value != handled else None


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
