"""The ``status`` of a ClusterPKI: conditions, the certificates' table and the next renewal. Pure."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from clusterpki.controller.reasons import Reason
from clusterpki.kube import secrets
from clusterpki.pki import catalog, certificates, engine, times

READY = "Ready"
RESTARTS_HEALTHY = "RestartsHealthy"  # with agents: no component's restart has failed on any member
MATERIAL_ACCEPTED = "MaterialAccepted"  # with agents: no agent refused material that failed verification


def condition(kind: str, ok: bool, reason: Reason, message: str, generation: int | None,
              previous: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    """A condition of type ``kind``; ``lastTransitionTime`` moves only when its status flips."""
    value = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = before["lastTransitionTime"] if before and before.get("status") == value else times.format_time(now)
    return {"type": kind, "status": value, "reason": reason.value, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def failure(reason: Reason, message: str, generation: int | None, previous: Sequence[Mapping[str, Any]],
            now: datetime) -> dict[str, Any]:
    """The status when the PKI cannot be made ready; certificates already listed stay listed."""
    others = [c for c in previous if c.get("type") != READY]
    return {"observedGeneration": generation,
            "conditions": [condition(READY, False, reason, message, generation, previous, now), *others]}


def certificates_of(pki: engine.PKI, unscheduled: Collection[str]) -> tuple[list[dict[str, Any]], datetime]:
    """The table of every certificate, and the next renewal: the earliest renewal time of a leaf, or
    of a CA (whose renewal is a rotation), except the CAs in ``unscheduled`` (brought in, or rotating)."""
    entries, renewals = [], []
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        cert = pki.cas[ca.component].cert
        due = certificates.renewal_time(cert, pki.spec.ca_renew_before)
        entries.append(_entry(pki.spec.name, ca.component, cert,
                              "self-signed" if cert.issuer == cert.subject else "external", due))
        if ca.component not in unscheduled:
            renewals.append(due)
    for component, leaf in pki.planned.items():
        cert = pki.leaves[component].cert
        due = certificates.renewal_time(cert, pki.spec.renew_before)
        entries.append(_entry(pki.spec.name, component, cert, leaf.issuer, due))
        renewals.append(due)
    return entries, min(renewals)


def ready(count: int, generation: int | None, previous: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, Any]:
    return condition(READY, True, Reason.ISSUED, f"{count} certificates are issued and valid", generation,
                     previous, now)


def _entry(pki_name: str, component: str, cert: Any, issuer: str, renewal: datetime) -> dict[str, Any]:
    return {
        "name": component,
        "secretName": secrets.secret_name(pki_name, component),
        "issuer": issuer,
        "serialNumber": f"{cert.serial_number:X}",
        "notBefore": times.format_time(cert.not_valid_before_utc),
        "notAfter": times.format_time(cert.not_valid_after_utc),
        "renewalTime": times.format_time(renewal),
    }
