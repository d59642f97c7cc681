"""Issuing: make a ClusterPKI's Secrets match its spec, and say what happened.

:func:`reconcile` is the one path from a ClusterPKI object to its Secrets, whatever triggered it.
It reads every Secret with one LIST, lets the pure engine decide what to issue, writes only the
Secrets that change (CAs first, then everything else, concurrently), and returns the status and
the Events for the handler to report. It never raises for a bad spec, a bad CA or an API error:
those become a Ready=False status, a Warning Event and, for transient errors, a retry. The one
exception is the namespace being deleted (:attr:`ApiError.namespace_terminating`), which the caller
handles for every ClusterPKI of that namespace.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from cryptography.hazmat.primitives import hashes

from clusterpki.controller import requests, rotation, settings, status
from clusterpki.kube import reports, secrets
from clusterpki.kube.api import ApiError
from clusterpki.kube.store import SecretStore
from clusterpki.pki import catalog, certificates, engine, keys, spec

NORMAL, WARNING = "Normal", "Warning"
MISSING = "its Secret was missing"


class Result(NamedTuple):
    status: dict[str, Any]
    events: list[tuple[str, str, str]]  # (type, reason, message)
    retry: str | None = None  # set when a transient failure should be retried
    issued: dict[str, str] = {}  # component -> why it was (re-)issued
    wake_at: datetime | None = None  # when a CA rotation takes its next step
    retry_delay: float = settings.RETRY_DELAY
    stopped: str | None = None  # why nothing is reported or retried: the ClusterPKI is being deleted


async def reconcile(body: Mapping[str, Any], store: SecretStore, now: datetime,
                    neighbours: list[Mapping[str, Any]] = ()) -> Result:
    """Reconcile one ClusterPKI; ``neighbours`` are the other ClusterPKIs of its namespace."""
    meta = body["metadata"]
    name, namespace, generation = meta["name"], meta["namespace"], meta.get("generation")
    previous = (body.get("status") or {}).get("conditions") or []

    def failure(reason: str, message: str, retry: bool = False, delay: float = settings.RETRY_DELAY) -> Result:
        return Result(status.of_failure(reason, message, generation, previous, now),
                      [(WARNING, reason, message)], retry=message if retry else None, retry_delay=delay)

    def api_failure(exc: ApiError) -> Result:
        if exc.namespace_terminating:  # for the caller: it concerns every ClusterPKI of the namespace
            raise exc
        return failure("APIError", str(exc), retry=True)

    async def write_failure(exc: ApiError) -> Result:
        if exc.status == 409 and exc.reason.startswith("AlreadyExists") and not await _ours(store, exc, name):
            return failure("SecretConflict", f"{exc}: a Secret of that name exists and is not this "
                                             "ClusterPKI's; rename or delete it, then touch the ClusterPKI")
        if exc.status == 409:  # another writer (e.g. a second replica) got there first: read again
            return failure("Conflict", f"{exc}; another writer changed a Secret, retrying", retry=True,
                           delay=settings.CONFLICT_RETRY_DELAY)
        return api_failure(exc)

    if meta.get("deletionTimestamp"):
        return Result({}, [], stopped="It is being deleted: nothing is issued or repaired")

    try:
        pki_spec = spec.from_resource(body)
    except spec.SpecError as exc:
        return failure("InvalidSpec", f"The spec is invalid: {exc}")

    try:
        loaded = await _load(store, body, pki_spec, neighbours)
    except ApiError as exc:
        return api_failure(exc)
    if loaded.conflicts:
        return failure("SecretConflict", f"{'; '.join(loaded.conflicts)}: nothing was written; rename this "
                                         "ClusterPKI, or remove what is in the way and touch it")
    current = loaded.current
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

    events: list[tuple[str, str, str]] = [
        (WARNING, "ForeignSecretIgnored", f"Secret {impostor} carries the labels of this ClusterPKI's Secrets but "
                                          "not the name of one: it is ignored") for impostor in loaded.impostors]
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
            return await write_failure(exc)

    record = active or rotation.of(body)
    trusted_until = _old_key_trusted_until(record, now)
    if trusted_until is not None:  # tokens the old service-account key signed are still alive
        previous_key = _usable_spare(current.get(f"{catalog.SERVICE_ACCOUNT}{secrets.PREVIOUS}"), True, now)
        if previous_key is not None:
            existing = existing._replace(service_account_trust=(*existing.service_account_trust,
                                                                previous_key.public_key()))

    # Key generation can take a second for RSA: keep it off the event loop.
    build = functools.partial(engine.build, pki_spec, existing, now, force=forced, renew_due=True)
    pki = await asyncio.to_thread(build)
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
        return await write_failure(exc)

    issued = {c: stored.unreadable.get(c) or (MISSING if reason == engine.NEW and c in listed and c in pki.planned
                                              else reason)
              for c, reason in pki.issued.items()}
    unscheduled = set(stored.adopted) | ({active["ca"]} if rotation.is_active(active) else set())
    new_status = status.of_pki(pki, generation, previous, now, unscheduled)
    if renew_request is not None:
        new_status["renewRequest"] = renew_request
    wake_at = trusted_until
    try:
        found = await store.reports(namespace, name)
    except ApiError as exc:
        return api_failure(exc)
    consumers = reports.consumers(found, {**current, **wanted})
    if consumers:
        new_status["consumers"] = consumers
        new_status["consumersCurrent"] = f"{sum(e['current'] for e in consumers)}/{len(consumers)}"
        failed = reports.failed_restarts(consumers)
        message = f"The roll stops until these succeed: {failed}" if failed else "No restart has failed"
        new_status["conditions"].append(status.condition(
            status.RESTARTS_HEALTHY, not failed, "RestartFailed" if failed else "NoFailedRestart", message,
            generation, previous, now))
        if failed:
            events.append((WARNING, "RestartFailed", message))
    if rotation.is_active(active):
        before, waiting = active["phase"], active.get("waitingFor")
        active, step_at = rotation.advance(active, body, pki_spec.rotation_grace, now, reports.holding_up(consumers),
                                           pki_spec.token_lifetime)
        wake_at = min((t for t in (wake_at, step_at) if t is not None), default=None)
        if active["phase"] != before:
            events.append((NORMAL, f"Rotation{active['phase']}",
                           f"Rotation of {active['ca']}: {before} -> {active['phase']}"))
        elif active.get("waitingFor") and active["waitingFor"] != waiting:
            events.append((NORMAL, "RotationWaiting", f"Rotation of {active['ca']}: {before} waits for consumers "
                                                      f"that do not run its Secrets yet: {active['waitingFor']}"))
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

    target = active["ca"]
    name, namespace = pki_spec.name, body["metadata"]["namespace"]
    spare, kept = current.get(f"{target}{secrets.NEXT}"), current.get(f"{target}{secrets.PREVIOUS}")
    sa = target == catalog.SERVICE_ACCOUNT
    old = existing.service_account if sa else existing.cas[target]
    usable_spare = _usable_spare(spare, sa, now)
    recorded = active.get("next")  # the fingerprint of the new CA (or key): only it is ever promoted

    if active["phase"] == rotation.ROTATING:
        if _fingerprint(old) == recorded:  # moved already (a step cut short after the move)
            new, previous = old, _usable_spare(kept, sa, now)
        elif usable_spare is not None and _fingerprint(usable_spare) == recorded:
            new, previous = usable_spare, old
        else:
            new = previous = None
        if new is None or previous is None:
            events.append((WARNING, "RotationRestarted", f"Rotation of {target}: the new "
                           f"{'key' if sa else 'CA'} or the old one was lost or replaced; preparing again"))
            active = {**active, "phase": rotation.PREPARING, "phaseStartedAt": None}
            old, recorded = (existing.service_account if sa else existing.cas[target]), None
            usable_spare = None
        else:
            await _put(store, kept, _rotation_secret(sa, name, namespace, f"{target}{secrets.PREVIOUS}", previous,
                                                     owner))
            if sa:
                return active, existing._replace(service_account=new, service_account_trust=(previous.public_key(),))
            return active, existing._replace(cas={**existing.cas, target: new},
                                             trust={**existing.trust, target: [previous.cert]})

    if active["phase"] == rotation.PREPARING:
        new = usable_spare if usable_spare is not None and _fingerprint(usable_spare) in (recorded, None) else None
        if new is None:
            if recorded is not None:
                events.append((WARNING, "RotationRestarted", f"Rotation of {target}: the new "
                               f"{'key' if sa else 'CA'} in {secrets.secret_name(name, target + secrets.NEXT)} "
                               "was lost or replaced; the grace period starts again"))
                active = {**active, "phaseStartedAt": None}
            key = keys.generate(pki_spec.key_algorithm)
            new = key if sa else certificates.KeyPair(certificates.create_ca(
                catalog.CA_BY_COMPONENT[target].common_name, key, pki_spec.ca_validity, now), key)
            await _put(store, spare, _rotation_secret(sa, name, namespace, f"{target}{secrets.NEXT}", new, owner))
        active = {**active, "next": _fingerprint(new)}
        if sa:
            return active, existing._replace(service_account_trust=(new.public_key(),))
        return active, existing._replace(trust={**existing.trust, target: [new.cert]})
    return active, existing


def _old_key_trusted_until(record: Mapping[str, Any] | None, now: datetime) -> datetime | None:
    """Until when the service-account key an ``sa`` rotation replaced stays in ``sa.pub``, if still."""
    if not record or record.get("ca") != catalog.SERVICE_ACCOUNT or not record.get("oldKeyTrustedUntil"):
        return None
    until = status.parse_timestamp(record["oldKeyTrustedUntil"])
    return until if until > now else None


def _fingerprint(material: Any) -> str:
    """SHA-256 of a CA certificate, or of a private key's public key, in hex."""
    if isinstance(material, certificates.KeyPair):
        return material.cert.fingerprint(hashes.SHA256()).hex()
    return hashlib.sha256(keys.public_pem(material)).hexdigest()


def _usable_spare(secret: secrets.Secret | None, sa: bool, now: datetime) -> Any:
    """The CA pair (or SA key) in a rotation Secret, or None when it is missing or unusable."""
    if secret is None:
        return None
    try:
        if sa:
            return keys.load_private_pem(base64.b64decode(secret["data"]["sa.key"]))
        pair = secrets.read_pair(secret)
    except (KeyError, ValueError):
        return None
    return pair if engine.check_ca(pair, now) is None else None


def _rotation_secret(sa: bool, name: str, namespace: str, component: str, material: Any,
                     owner: dict[str, Any] | None) -> secrets.Secret:
    return _sa_secret(name, namespace, component, material, owner) if sa else \
        _ca_secret(name, namespace, component, material, owner)


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


def _ca_secret(name: str, namespace: str, component: str, pair: certificates.KeyPair,
               owner: dict[str, Any] | None) -> secrets.Secret:
    return _secret(name, namespace, component, secrets.TLS, owner, secrets.tls_data(pair, [pair.cert]))


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


async def _ours(store: SecretStore, exc: ApiError, pki_name: str) -> bool:
    """Whether the Secret a create collided with is one of ours (made meanwhile by another replica):
    labelled for this ClusterPKI, under the name of the component it is labelled with."""
    namespace, _, name = exc.what.removeprefix("Secret ").partition("/")
    try:
        found = await store.get(namespace, name)
    except ApiError:
        return True  # cannot tell: retrying is the safe side
    if found is None:
        return True  # gone again: retrying will tell
    labels = found["metadata"].get("labels") or {}
    return secrets.owner_of(labels) == pki_name and \
        secrets.secret_name(pki_name, labels.get(secrets.LABEL_COMPONENT, "")) == name


class Loaded(NamedTuple):
    """What a reconcile starts from: its Secrets by component, and what stands in their way."""

    current: dict[str, secrets.Secret]
    conflicts: list[str]  # why a Secret this ClusterPKI wants cannot be its own
    impostors: list[str]  # Secrets with its labels but not its names, ignored


async def _load(store: SecretStore, body: Mapping[str, Any], pki_spec: spec.Spec,
                neighbours: list[Mapping[str, Any]]) -> Loaded:
    """The Secrets by component: one LIST by label. When some are missing, the names and labels of the
    namespace's Secrets (one metadata-only LIST) tell which of them can be made: a CA Secret a user
    created is adopted (one GET for its data); a name that another ClusterPKI owns, or wants and is
    older, or that someone else's Secret holds, is a conflict, found before anything is written."""
    namespace, name = body["metadata"]["namespace"], pki_spec.name
    current, impostors = secrets.owned(await store.list(namespace, name), name)
    missing = {c: n for c, n in secrets.names(pki_spec).items() if c not in current}
    if not missing:
        return Loaded(current, [], impostors)
    present = await store.names(namespace)
    wanted_by = _claims_of_older(body, neighbours)
    conflicts, adopt = [], []
    for component, secret_name in missing.items():
        labels = present.get(secret_name)
        if labels is None:
            if secret_name in wanted_by:
                conflicts.append(f"Secret {secret_name} is wanted by ClusterPKI {wanted_by[secret_name]}, "
                                 "which is older")
            continue
        owner = secrets.owner_of(labels)
        if owner is None and component in catalog.CA_BY_COMPONENT:
            adopt.append(component)  # brought in by the user
        elif owner is None:
            conflicts.append(f"Secret {secret_name} exists and is not managed by clusterpki")
        else:
            conflicts.append(f"Secret {secret_name} belongs to ClusterPKI {owner} "
                             f"({labels.get(secrets.LABEL_COMPONENT)})")
    found = await asyncio.gather(*(store.get(namespace, missing[c]) for c in adopt))
    current.update({c: secret for c, secret in zip(adopt, found, strict=True) if secret is not None})
    return Loaded(current, conflicts, impostors)


def _claims_of_older(body: Mapping[str, Any], neighbours: list[Mapping[str, Any]]) -> dict[str, str]:
    """The Secret names wanted by older ClusterPKIs of the namespace (name -> ClusterPKI). Only a name
    that is a prefix of the other's, up to a '-', can lead to the same Secret name."""
    me = body["metadata"]
    mine = (me.get("creationTimestamp") or "", me["name"])
    claims: dict[str, str] = {}
    for other in neighbours:
        meta = other["metadata"]
        related = meta["name"].startswith(f"{me['name']}-") or me["name"].startswith(f"{meta['name']}-")
        if not related or (meta.get("creationTimestamp") or "", meta["name"]) >= mine:
            continue
        try:
            their = spec.from_resource(other)
        except spec.SpecError:  # an invalid ClusterPKI wants nothing
            continue
        claims.update({secret_name: meta["name"] for secret_name in secrets.names(their).values()})
    return claims


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
