"""Issuing: make a ClusterPKI's Secrets match its spec, and say what happened.

:func:`reconcile` is the one path from a ClusterPKI object to its Secrets, whatever triggered it.
It reads every Secret with one LIST, lets the pure engine decide what to issue, writes only the
Secrets that change (CAs first, then everything else, concurrently), and returns the status and
the Events for the handler to report. It never raises for a bad spec, a bad CA or an API error:
those become a Ready=False status, a Warning Event and, for transient errors, a retry.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from clusterpki import (
    catalog,
    certificates,
    engine,
    keys,
    kubeconfig,
    requests,
    rotation,
    secrets,
    settings,
    spec,
    status,
)
from clusterpki.store import ApiError, SecretStore

NORMAL, WARNING = "Normal", "Warning"
MISSING = "its Secret was missing"


class Result(NamedTuple):
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (type, reason, message)
    retry: str | None = None  # set when a transient failure should be retried
    issued: dict[str, str] = {}  # component -> why it was (re-)issued
    wake_at: datetime | None = None  # when a CA rotation takes its next step
    retry_delay: float = settings.RETRY_DELAY


async def reconcile(body: Mapping[str, Any], store: SecretStore, now: datetime) -> Result:
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    previous = (body.get("status") or {}).get("conditions") or []

    def failure(reason: str, message: str, retry: bool = False, delay: float = settings.RETRY_DELAY) -> Result:
        return Result(status.of_failure(reason, message, generation, previous, now),
                      [(WARNING, reason, message)], retry=message if retry else None, retry_delay=delay)

    try:
        pki_spec = spec.from_resource(body)
    except spec.SpecError as exc:
        return failure("InvalidSpec", f"The spec is invalid: {exc}")

    try:
        current = await _load(store, namespace, name)
    except ApiError as exc:
        if exc.reason.startswith("SecretOfAnotherClusterPKI"):
            return failure("SecretConflict", f"{exc}; choose another name for this ClusterPKI")
        return failure("APIError", str(exc), retry=True)
    stored = secrets.read(current, now)
    listed = {e.get("name") for e in (body.get("status") or {}).get("certificates") or []}
    gone = sorted(ca.component for ca in catalog.CERTIFICATE_AUTHORITIES
                  if ca.component in listed and ca.component not in current)
    recovering, request, _ = rotation.pending_request(body)
    if recovering in gone and not rotation.is_active(rotation.of(body)):
        gone.remove(recovering)  # an explicit rotation replaces the lost CA: the engine makes a new one
    else:
        recovering = None
    if listed and catalog.SERVICE_ACCOUNT not in current:
        return failure("ServiceAccountKeyMissing",
                       f"Secret {secrets.secret_name(name, catalog.SERVICE_ACCOUNT)} is missing; a new key would "
                       "invalidate every service-account token: restore it, or rotate it with rotate-ca=sa")
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

    owner = secrets.owner_reference(body) if pki_spec.secret_retention is spec.SecretRetention.DELETE else None
    if recovering:
        # No old CA to keep trusting: the new CA and its leaves replace the lost ones at once.
        active, existing = {**rotation.start(recovering, "recovery", request, now), "phase": rotation.COMPLETING}, \
            stored.existing
        events.append((WARNING, "RotationRecovering", f"The {recovering} CA was missing: a new CA replaces it and "
                                                      "every leaf it issued is re-issued"))
    else:
        try:
            active, existing = await _rotation_step(body, store, current, stored, pki_spec, owner, now, events)
        except ApiError as exc:
            return failure("APIError", str(exc), retry=True)

    # Key generation can take a second for RSA: keep it off the event loop.
    pki = await asyncio.to_thread(engine.build, pki_spec, existing, now, None, forced, True)
    wanted = secrets.desired(pki, namespace, owner, current, stored.adopted)
    changed = [c for c, secret in wanted.items() if secrets.differs(current.get(c), secret)]
    try:
        cas_first = [c for c in changed if c in catalog.CA_BY_COMPONENT]
        await asyncio.gather(*(_write(store, current.get(c), wanted[c], True) for c in cas_first))
        await asyncio.gather(*(_write(store, current.get(c), wanted[c], False) for c in changed
                               if c not in catalog.CA_BY_COMPONENT))
        if rotation.is_active(active) and active["phase"] == rotation.ROTATING:  # the new CA is in place
            spare = current.get(f"{active['ca']}{secrets.NEXT}")
            if spare is not None:
                await store.delete(namespace, spare["metadata"]["name"])
    except ApiError as exc:
        if exc.status == 409 and exc.reason.startswith("AlreadyExists") and not await _ours(store, exc):
            return failure("SecretConflict", f"{exc}: a Secret of that name exists and is not managed by "
                                             "clusterpki; rename or delete it, then touch the ClusterPKI")
        if exc.status == 409:  # another writer (e.g. a second replica) got there first: read again
            return failure("Conflict", f"{exc}; another writer changed a Secret, retrying", retry=True,
                           delay=settings.CONFLICT_RETRY_DELAY)
        return failure("APIError", str(exc), retry=True)

    issued = {c: stored.unreadable.get(c) or (MISSING if reason == engine.NEW and c in listed and c in pki.planned
                                              else reason)
              for c, reason in pki.issued.items()}
    unscheduled = set(stored.adopted) | ({active["ca"]} if rotation.is_active(active) else set())
    new_status = status.of_pki(pki, generation, previous, now, unscheduled)
    if renew_request is not None:
        new_status["renewRequest"] = renew_request
    wake_at = None
    if rotation.is_active(active):
        before = active["phase"]
        active, wake_at = rotation.advance(active, body, now)
        if active["phase"] != before:
            events.append((NORMAL, f"Rotation{active['phase']}",
                           f"Rotation of {active['ca']}: {before} -> {active['phase']}"))
    if active or rotation.of(body):
        new_status["caRotation"] = active or rotation.of(body)
    return Result(new_status, events + _events(name, issued, stored, current, pki), issued=issued, wake_at=wake_at)


async def _rotation_step(body: Mapping[str, Any], store: SecretStore, current: dict[str, secrets.Secret],
                         stored: secrets.Stored, pki_spec: spec.Spec, owner: dict[str, Any] | None,
                         now: datetime, events: list[tuple[str, str, str]]
                         ) -> tuple[dict[str, Any] | None, engine.Existing]:
    """Start a rotation when asked or when a CA enters its renewal window, then put the Secrets of the
    rotation's current phase in place. Returns the rotation and what the engine must build on: which
    CA (or service-account key) signs, and what else the bundles trust."""
    existing = stored.existing
    active = rotation.of(body)
    if not rotation.is_active(active):
        target, value, problem = rotation.pending_request(body)
        if problem:
            events.append((WARNING, "InvalidRotationRequest", f"{rotation.ROTATE}={value!r}: {problem}"))
            return {**(active or {}), "request": value}, existing
        trigger = "annotation"
        if target is None:
            target, trigger = _ca_in_renewal_window(existing, stored.adopted, pki_spec, now), "renewal window"
        if target is None:
            return None, existing
        if target in stored.adopted:
            events.append((WARNING, "RotationRefused", f"The {target} CA was brought in: rotate it yourself"))
            return ({**(active or {}), "request": value} if value else active), existing
        active = rotation.start(target, trigger, value, now)
        events.append((NORMAL, "RotationPreparing", f"Rotation of {target} started ({trigger})"))

    target, phase = active["ca"], active["phase"]
    name, namespace = pki_spec.name, body["metadata"]["namespace"]
    spare, kept = current.get(f"{target}{secrets.NEXT}"), current.get(f"{target}{secrets.PREVIOUS}")
    if target == catalog.SERVICE_ACCOUNT:
        old = existing.service_account
        if phase == rotation.PREPARING:
            new = _sa_key(spare) or keys.generate(pki_spec.key_algorithm)
            if spare is None:
                await store.create(_sa_secret(name, namespace, f"{target}{secrets.NEXT}", new, owner))
            return active, existing._replace(service_account_trust=(new.public_key(),))
        if phase == rotation.ROTATING:
            moved = spare is None or keys.same_public_key(_sa_key(spare), old)  # a step cut short before
            new, previous = (old, _sa_key(kept)) if moved else (_sa_key(spare), old)
            if previous is None:
                return active, existing
            await _put(store, kept, _sa_secret(name, namespace, f"{target}{secrets.PREVIOUS}", previous, owner))
            return active, existing._replace(service_account=new, service_account_trust=(previous.public_key(),))
        return active, existing

    old_pair = existing.cas[target]
    if phase == rotation.PREPARING:
        new_pair = _pair(spare)
        if new_pair is None:
            key = keys.generate(pki_spec.key_algorithm)
            profile = catalog.CA_BY_COMPONENT[target]
            new_pair = certificates.KeyPair(certificates.create_ca(profile.common_name, key, pki_spec.ca_validity, now),
                                            key)
            await store.create(_ca_secret(name, namespace, f"{target}{secrets.NEXT}", new_pair, owner))
        return active, existing._replace(trust={**existing.trust, target: [new_pair.cert]})
    if phase == rotation.ROTATING:
        moved = spare is None or _pair(spare).cert == old_pair.cert  # a step cut short after the move
        new_pair, previous = (old_pair, _pair(kept)) if moved else (_pair(spare), old_pair)
        if previous is None:
            return active, existing
        await _put(store, kept, _ca_secret(name, namespace, f"{target}{secrets.PREVIOUS}", previous, owner))
        return active, existing._replace(cas={**existing.cas, target: new_pair},
                                         trust={**existing.trust, target: [previous.cert]})
    return active, existing


def _ca_in_renewal_window(existing: engine.Existing, adopted: set[str], pki_spec: spec.Spec,
                          now: datetime) -> str | None:
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        pair = existing.cas.get(ca.component)
        if pair is not None and ca.component not in adopted and \
                certificates.renewal_time(pair.cert, pki_spec.ca_renew_before) <= now:
            return ca.component
    return None


async def _put(store: SecretStore, current: secrets.Secret | None, wanted: secrets.Secret) -> None:
    if current is None:
        await store.create(wanted)
    elif secrets.differs(current, wanted):
        wanted["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await store.replace(wanted)


def _pair(secret: secrets.Secret | None) -> certificates.KeyPair | None:
    return secrets.read_pair(secret) if secret is not None else None


def _sa_key(secret: secrets.Secret | None) -> keys.PrivateKey | None:
    if secret is None:
        return None
    return keys.load_private_pem(base64.b64decode(secret["data"]["sa.key"]))


def _ca_secret(name: str, namespace: str, component: str, pair: certificates.KeyPair,
               owner: dict[str, Any] | None) -> secrets.Secret:
    pem = kubeconfig.pem_bundle([pair.cert])
    return _secret(name, namespace, component, secrets.TLS, owner,
                   {"tls.crt": pem, "tls.key": keys.private_pem(pair.key), "ca.crt": pem})


def _sa_secret(name: str, namespace: str, component: str, key: keys.PrivateKey,
               owner: dict[str, Any] | None) -> secrets.Secret:
    return _secret(name, namespace, component, secrets.OPAQUE, owner,
                   {"sa.key": keys.private_pem(key), "sa.pub": keys.public_pem(key)})


def _secret(name: str, namespace: str, component: str, kind: str, owner: dict[str, Any] | None,
            data: dict[str, bytes]) -> secrets.Secret:
    meta: dict[str, Any] = {"name": secrets.secret_name(name, component), "namespace": namespace,
                            "labels": secrets.labels(name, component)}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


async def _ours(store: SecretStore, exc: ApiError) -> bool:
    """Whether the Secret a create collided with is one of ours (made meanwhile by another replica)."""
    namespace, _, name = exc.what.removeprefix("Secret ").partition("/")
    try:
        found = await store.get(namespace, name)
    except ApiError:
        return True  # cannot tell: retrying is the safe side
    return found is None or (found["metadata"].get("labels") or {}).get(secrets.LABEL_MANAGED_BY) == secrets.MANAGER


async def _load(store: SecretStore, namespace: str, name: str) -> dict[str, secrets.Secret]:
    """The Secrets by component: one LIST by label, plus a GET for each CA Secret the LIST did not
    find, since a user may have created it to bring their own CA."""
    current = await store.list(namespace, name)
    missing = [ca.component for ca in catalog.CERTIFICATE_AUTHORITIES if ca.component not in current]
    found = await asyncio.gather(*(store.get(namespace, secrets.secret_name(name, c)) for c in missing))
    for component, secret in zip(missing, found, strict=True):
        if secret is None:
            continue
        labels = secret["metadata"].get("labels") or {}
        if labels.get(secrets.LABEL_MANAGED_BY) == secrets.MANAGER and labels.get(secrets.LABEL_PKI) != name:
            # e.g. "x-etcd-ca" is the etcd CA of ClusterPKI "x", not the CA of a ClusterPKI "x-etcd"
            raise ApiError("adopt", f"Secret {namespace}/{secret['metadata']['name']}", 409,
                           f"SecretOfAnotherClusterPKI: it belongs to ClusterPKI {labels.get(secrets.LABEL_PKI)}")
        current[component] = secret
    return current


async def _write(store: SecretStore, current: secrets.Secret | None, wanted: secrets.Secret, keep_type: bool) -> None:
    """Create or replace; a leaf Secret of another type (immutable) is deleted and created again.
    A CA Secret is never deleted: it keeps its type."""
    if current is None:
        await store.create(wanted)
    elif current.get("type") != wanted["type"] and not keep_type:
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
