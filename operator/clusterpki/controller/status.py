"""Readiness: the ``status`` of a ClusterPKI, built from a PKI or from a failure."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from clusterpki.kube import secrets
from clusterpki.pki import catalog, certificates, engine

READY = "Ready"
RESTARTS_HEALTHY = "RestartsHealthy"  # with agents: no component's restart has failed on any member


def timestamp(moment: datetime) -> str:
    """The RFC 3339 form the status uses, to the second."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def ready_condition(ok: bool, reason: str, message: str, generation: int | None,
                    previous: list[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """The Ready condition."""
    return condition(READY, ok, reason, message, generation, previous, now)


def condition(kind: str, ok: bool, reason: str, message: str, generation: int | None,
              previous: list[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """A condition of type ``kind``; ``lastTransitionTime`` moves only when its status flips."""
    value = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = before["lastTransitionTime"] if before and before.get("status") == value else timestamp(now)
    return {"type": kind, "status": value, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def of_pki(pki: engine.PKI, generation: int | None, previous: list[Mapping[str, Any]],
           now: datetime, unscheduled: set[str] = frozenset()) -> dict[str, Any]:
    """The status of a complete, stored PKI. ``nextRenewal`` is the earliest renewal time of a leaf or
    of a CA (whose renewal is a rotation), except the CAs in ``unscheduled`` (brought in, or rotating)."""
    entries = []
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        cert = pki.cas[ca.component].cert
        entries.append(_entry(pki, ca.component, "self-signed" if cert.issuer == cert.subject else "external",
                              certificates.renewal_time(cert, pki.spec.ca_renew_before)))
    for component, leaf in pki.planned.items():
        entries.append(_entry(pki, component, leaf.issuer,
                              certificates.renewal_time(pki.leaves[component].cert, pki.spec.renew_before)))
    renewals = [e["renewalTime"] for e in entries if e["name"] not in unscheduled]
    count = len(entries)
    return {
        "observedGeneration": generation,
        "conditions": [ready_condition(True, "Issued", f"{count} certificates are issued and valid",
                                       generation, previous, now)],
        "certificates": entries,
        "certificateCount": count,
        "nextRenewal": min(renewals),
    }


def of_failure(reason: str, message: str, generation: int | None, previous: list[Mapping[str, Any]],
               now: datetime) -> dict[str, Any]:
    """The status when the PKI cannot be made ready; certificates already listed stay listed."""
    return {"observedGeneration": generation,
            "conditions": [ready_condition(False, reason, message, generation, previous, now)]}


def _entry(pki: engine.PKI, component: str, issuer: str, renewal: datetime) -> dict[str, Any]:
    pair = pki.cas.get(component) or pki.leaves[component]
    cert = pair.cert
    return {
        "name": component,
        "secretName": secrets.secret_name(pki.spec.name, component),
        "issuer": issuer,
        "serialNumber": f"{cert.serial_number:X}",
        "notBefore": timestamp(cert.not_valid_before_utc),
        "notAfter": timestamp(cert.not_valid_after_utc),
        "renewalTime": timestamp(renewal),
    }
