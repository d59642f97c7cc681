"""The gates a decision passes before it issues anything, and how one that cannot go on is reported:
Ready=False with a reason, and its Warning Event. In order: an invalid spec, names in the way, and a
lost CA or key (unless a ``rotate-ca`` asks to replace it)."""

from __future__ import annotations

from datetime import datetime, timedelta

from clusterpki.controller import settings
from clusterpki.controller.custody import Custody
from clusterpki.controller.observe import Observed, Stranger, twins
from clusterpki.controller.plan import Plan, Retry
from clusterpki.controller.reasons import Event, Reason
from clusterpki.controller.status import failure
from clusterpki.kube import secrets
from clusterpki.pki import catalog

LOST_AUTHORITY = {
    False: (Reason.CA_MISSING, "CA Secret {secret} is missing; a CA is never regenerated silently, since every "
                               "client trusts it: restore the Secret, or rotate the CA (rotate-ca={component})"),
    True: (Reason.SA_KEY_MISSING, "Secret {secret} is missing; a new key would invalidate every service-account "
                                  "token: restore it, or rotate it with rotate-ca=sa"),
}


def stopped(seen: Observed, custody: Custody | None, now: datetime) -> Plan | None:
    """The failure that stops the decision, if one does."""
    if seen.spec is None or custody is None:
        return failed(seen, now, Reason.INVALID_SPEC, f"The spec is invalid: {seen.spec_error}")
    conflicts = _conflicts(seen, custody)
    if conflicts:
        return blocked(seen, now, f"{'; '.join(conflicts)}: nothing was written; rename this ClusterPKI, or remove "
                                  "what is in the way")
    return _lost_authorities(seen, custody, now)


def settling(seen: Observed, now: datetime) -> Plan | None:
    """Wait, writing nothing, while a ClusterPKI made the same second may still be on its way.

    Of two ClusterPKIs whose Secret names clash, the older (by creation time, then by name) gets them. The
    watch reports ClusterPKIs in the server's order, so every one made before this one is known; one made
    after it but in the same second is older when its name sorts first, which for a clash means that it is
    a dash-prefix of this one's (``x`` of ``x-etcd-server``). Only a first write whose name has such a
    prefix, and only until ``SETTLE_SECONDS`` after its creation second, waits; then observe reads those
    names afresh too (a watch may be behind, and the operator's clock is not the apiserver's)."""
    created = seen.meta.created
    if created is None or not seen.first_write:
        return None
    settled = created + timedelta(seconds=settings.SETTLE_SECONDS)
    if now >= settled or not twins(seen.meta.name, seen.wanted):
        return None
    return Plan(wake_at=settled)


def failed(seen: Observed, now: datetime, reason: Reason, message: str, retry: Retry | None = None) -> Plan:
    """Ready=False with ``reason``, and its Warning Event; nothing written."""
    return Plan(status=failure(reason, message, seen.meta.generation, seen.conditions, now),
                events=(Event.warning(reason, message),), retry=retry)


def blocked(seen: Observed, now: datetime, message: str) -> Plan:
    """``SecretConflict``: a Secret is in the way. The operator watches only its own Secrets, so nothing
    tells it when that one goes: it looks again every ``IN_THE_WAY_RETRY`` seconds, and proceeds by itself."""
    return failed(seen, now, Reason.SECRET_CONFLICT, f"{message} (looked at again every {settings.IN_THE_WAY_RETRY}s)",
                  Retry(settings.IN_THE_WAY_RETRY, "a Secret is in the way"))


def in_the_way(stranger: Stranger) -> str:
    owner = f"belongs to ClusterPKI {stranger.owner} ({stranger.component})" if stranger.owner else \
        "exists and is not managed by clusterpki"
    return f"Secret {stranger.name} {owner}"


def _conflicts(seen: Observed, custody: Custody) -> list[str]:
    """Why a Secret this ClusterPKI wants cannot be its own: someone else's is in the way, or an older
    ClusterPKI wants the name. Found before anything is written."""
    assert seen.spec is not None
    found = [in_the_way(stranger) for component, stranger in sorted(seen.strangers.items())
             if not secrets.is_rotation(component)]  # a rotation's half is in the way of its rotation only
    for component, stored in sorted(seen.secrets.items()):
        foreign = secrets.owner_of(stored.labels) != seen.meta.name
        if foreign and component not in custody.trusted and component not in custody.invalid:
            found.append(f"Secret {stored.name} exists and is not managed by clusterpki")
    taken = {s.name for s in seen.strangers.values()} | {s.name for s in seen.secrets.values()}
    for name in secrets.names(seen.spec).values():
        if name not in taken and name in seen.older_claims:
            found.append(f"Secret {name} is wanted by ClusterPKI {seen.older_claims[name]}, which is older")
    return found


def recovering(seen: Observed, custody: Custody) -> str | None:
    """The lost authority a new ``rotate-ca`` value asks to replace, if any: an explicit rotation is the
    one way a lost CA or key is ever made anew."""
    value = seen.requests.new_since(seen.handled).rotate
    target = value.partition("@")[0] if value else None
    if target is None or target in custody.adopted or (seen.rotation and seen.rotation.active):
        return None
    return target if target in _lost(seen, custody) else None


def _lost(seen: Observed, custody: Custody) -> dict[str, tuple[Reason, str]]:
    """The CAs and the service-account key that are gone (their Secret, or their key), with why."""
    authorities = [*catalog.CA_BY_COMPONENT, catalog.SERVICE_ACCOUNT]
    found: dict[str, tuple[Reason, str]] = {}
    for component in authorities:
        secret = secrets.secret_name(seen.meta.name, component)
        if component in custody.absent and component not in custody.trusted:
            reason, words = LOST_AUTHORITY[component == catalog.SERVICE_ACCOUNT]
            found[component] = (reason, words.format(secret=secret, component=component))
        elif component in custody.lost:
            what = "service-account key" if component == catalog.SERVICE_ACCOUNT else "CA's key"
            found[component] = (Reason.SECRET_TAMPERED,
                                f"Secret {secret}: {custody.lost[component]}: the {what} is lost, and nothing "
                                f"is issued from another; restore the Secret, or rotate it (rotate-ca={component})")
    return found


def _lost_authorities(seen: Observed, custody: Custody, now: datetime) -> Plan | None:
    """Ready=False for a lost or unusable CA or key, unless a rotation replaces it now."""
    replaced = recovering(seen, custody)
    lost = {c: why for c, why in _lost(seen, custody).items() if c != replaced}
    if lost:
        reason, _ = next(iter(lost.values()))
        return failed(seen, now, reason, "; ".join(message for _, message in lost.values()))
    if custody.invalid:
        problems = "; ".join(f"Secret {secrets.secret_name(seen.meta.name, c)}: {why}"
                             for c, why in sorted(custody.invalid.items()))
        if catalog.SERVICE_ACCOUNT in custody.invalid:
            return failed(seen, now, Reason.SA_KEY_INVALID, f"The service-account key cannot be used and is left "
                                                            f"untouched: {problems}")
        return failed(seen, now, Reason.CA_INVALID, f"A CA cannot be used and is left untouched: {problems}")
    return None

