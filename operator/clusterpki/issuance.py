"""Issuing: make a ClusterPKI's Secrets match its spec, and say what happened.

:func:`reconcile` is the one path from a ClusterPKI object to its Secrets, whatever triggered it.
It reads every Secret with one LIST, lets the pure engine decide what to issue, writes only the
Secrets that change (CAs first, then everything else, concurrently), and returns the status and
the Events for the handler to report. It never raises for a bad spec, a bad CA or an API error:
those become a Ready=False status, a Warning Event and, for transient errors, a retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from clusterpki import catalog, engine, requests, secrets, spec, status
from clusterpki.store import ApiError, SecretStore

NORMAL, WARNING = "Normal", "Warning"
MISSING = "its Secret was missing"


class Result(NamedTuple):
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (type, reason, message)
    retry: str | None = None  # set when a transient failure should be retried
    issued: dict[str, str] = {}  # component -> why it was (re-)issued


async def reconcile(body: Mapping[str, Any], store: SecretStore, now: datetime) -> Result:
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    previous = (body.get("status") or {}).get("conditions") or []

    def failure(reason: str, message: str, retry: bool = False) -> Result:
        return Result(status.of_failure(reason, message, generation, previous, now),
                      [(WARNING, reason, message)], retry=message if retry else None)

    try:
        pki_spec = spec.from_resource(body)
    except spec.SpecError as exc:
        return failure("InvalidSpec", f"The spec is invalid: {exc}")

    try:
        current = await _load(store, namespace, name)
    except ApiError as exc:
        return failure("APIError", str(exc), retry=True)
    stored = secrets.read(current, now)
    listed = {e.get("name") for e in (body.get("status") or {}).get("certificates") or []}
    gone = sorted(ca.component for ca in catalog.CERTIFICATE_AUTHORITIES
                  if ca.component in listed and ca.component not in current)
    if gone:
        names = ", ".join(secrets.secret_name(name, ca) for ca in gone)
        return failure("CAMissing", f"CA Secret {names} is missing; a CA is never regenerated silently, since "
                                    "every client trusts it: restore the Secret, or rotate the CA")
    if stored.ca_problems:
        problems = "; ".join(f"Secret {secrets.secret_name(name, ca)}: {why}"
                             for ca, why in sorted(stored.ca_problems.items()))
        return failure("CAInvalid", f"A CA cannot be used and is left untouched: {problems}")
    if stored.sa_problem:
        return failure("ServiceAccountKeyInvalid", f"Secret {secrets.secret_name(name, catalog.SERVICE_ACCOUNT)} "
                                                   f"cannot be used and is left untouched: {stored.sa_problem}")

    events: list[tuple[str, str, str]] = []
    renew_request = requests.pending_renewal(body)
    forced: set[str] = set()
    if renew_request is not None:
        forced, problem = requests.renewal_targets(renew_request, [p.component for p in catalog.plan(pki_spec)])
        if problem:
            events.append((WARNING, "InvalidRenewRequest", f"{requests.RENEW}={renew_request!r}: {problem}"))

    # Key generation can take a second for RSA: keep it off the event loop.
    pki = await asyncio.to_thread(engine.build, pki_spec, stored.existing, now, None, forced, True)
    owner = secrets.owner_reference(body) if pki_spec.secret_retention is spec.SecretRetention.DELETE else None
    wanted = secrets.desired(pki, namespace, owner, current, stored.adopted)
    changed = [c for c, secret in wanted.items() if secrets.differs(current.get(c), secret)]
    try:
        cas_first = [c for c in changed if c in catalog.CA_BY_COMPONENT]
        await asyncio.gather(*(_write(store, current.get(c), wanted[c], c in stored.adopted) for c in cas_first))
        await asyncio.gather(*(_write(store, current.get(c), wanted[c], False) for c in changed
                               if c not in catalog.CA_BY_COMPONENT))
    except ApiError as exc:
        if exc.status == 409:
            return failure("Conflict", f"{exc}; another writer changed a Secret, retrying", retry=True)
        return failure("APIError", str(exc), retry=True)

    issued = {c: stored.unreadable.get(c) or (MISSING if reason == engine.NEW and c in listed else reason)
              for c, reason in pki.issued.items()}
    new_status = status.of_pki(pki, generation, previous, now)
    if renew_request is not None:
        new_status["renewRequest"] = renew_request
    return Result(new_status, events + _events(name, issued, stored, current, pki), issued=issued)


async def _load(store: SecretStore, namespace: str, name: str) -> dict[str, secrets.Secret]:
    """The Secrets by component: one LIST by label, plus a GET for each CA Secret the LIST did not
    find, since a user may have created it to bring their own CA."""
    current = await store.list(namespace, name)
    missing = [ca.component for ca in catalog.CERTIFICATE_AUTHORITIES if ca.component not in current]
    found = await asyncio.gather(*(store.get(namespace, secrets.secret_name(name, c)) for c in missing))
    current.update({c: secret for c, secret in zip(missing, found) if secret is not None})
    return current


async def _write(store: SecretStore, current: secrets.Secret | None, wanted: secrets.Secret, adopted: bool) -> None:
    if current is None:
        await store.create(wanted)
    elif current.get("type") != wanted["type"] and not adopted:  # the type is immutable
        await store.delete(wanted["metadata"]["namespace"], wanted["metadata"]["name"])
        wanted = {**wanted, "metadata": {k: v for k, v in wanted["metadata"].items() if k != "resourceVersion"}}
        await store.create(wanted)
    else:
        await store.replace(wanted)


def _events(name: str, issued: dict[str, str], stored: secrets.Stored, current: Mapping[str, secrets.Secret],
            pki: engine.PKI) -> list[tuple[str, str, str]]:
    events = []
    newly_adopted = sorted(c for c in stored.adopted
                           if not (current[c]["metadata"].get("annotations") or {}).get(secrets.ANNOTATION_ADOPTED))
    for ca in newly_adopted:
        events.append((NORMAL, "Adopted", f"Adopted the {ca} CA brought in Secret {secrets.secret_name(name, ca)}"))
    new = [c for c, reason in issued.items() if reason == engine.NEW]
    if new:
        events.append((NORMAL, "Issued", f"Issued {len(new)}: {', '.join(new)}"))
    for component, reason in issued.items():
        if reason == engine.NEW:
            continue
        old = stored.existing.leaves.get(component)
        new = pki.leaves[component]
        serials = f"serial {old.cert.serial_number:X} -> {new.cert.serial_number:X}" if old else \
            f"serial {new.cert.serial_number:X}"
        kind = "Renewed" if reason in (engine.DUE, engine.FORCED) else "Reissued"
        events.append((NORMAL, kind, f"{'Renewed' if kind == 'Renewed' else 'Re-issued'} {component} "
                                     f"({serials}): {reason}"))
    return events
