"""decide: from what was observed, and the time, to a plan. Pure: no I/O and no clock of its own (new
keys are made here, so a caller runs it off the event loop for RSA).

In order: a ClusterPKI being deleted, an invalid spec, another writer's claim in flight and names
in the way stop it; then custody (:mod:`clusterpki.controller.custody`) says which stored material
it may build on; a lost CA or key stops it unless a rotation was asked to replace it; requests and
the rotation's phase say what to force and who signs; the engine completes the PKI; and the plan
holds the Secrets that change, the record to commit (claimed first when new material is written),
the status, the Events and when to look again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from clusterpki.controller import settings
from clusterpki.controller.custody import Custody, judge
from clusterpki.controller.issuing import Issuing
from clusterpki.controller.failures import failed, in_the_way
from clusterpki.controller.observe import Observed
from clusterpki.controller.plan import Plan, Retry
from clusterpki.controller.reasons import Reason
from clusterpki.kube import secrets
from clusterpki.pki import catalog

CLAIM_TTL = timedelta(seconds=30)  # a claim older than this was abandoned by its writer
LOST_AUTHORITY = {
    False: (Reason.CA_MISSING, "CA Secret {secret} is missing; a CA is never regenerated silently, since every "
                               "client trusts it: restore the Secret, or rotate the CA (rotate-ca={component})"),
    True: (Reason.SA_KEY_MISSING, "Secret {secret} is missing; a new key would invalidate every service-account "
                                  "token: restore it, or rotate it with rotate-ca=sa"),
}


def decide(seen: Observed, now: datetime) -> Plan:
    """The plan for one ClusterPKI at ``now``."""
    if seen.meta.deleting:
        return Plan(stop="It is being deleted: nothing is issued or repaired")
    if seen.spec is None:
        return failed(seen, now, Reason.INVALID_SPEC, f"The spec is invalid: {seen.spec_error}")
    claim = seen.claim
    if claim is not None and claim.holder != seen.holder and now - claim.at < CLAIM_TTL:
        return Plan(retry=Retry(settings.CONFLICT_RETRY_DELAY, f"{claim.holder} is writing its Secrets"))
    custody = judge(seen, now)
    conflicts = _conflicts(seen, custody)
    if conflicts:
        return failed(seen, now, Reason.SECRET_CONFLICT, f"{'; '.join(conflicts)}: nothing was written; rename this "
                                                         "ClusterPKI, or remove what is in the way and touch it")
    stopped = _lost_authorities(seen, custody, now)
    if stopped is not None:
        return stopped
    return Issuing(seen, custody, now, _recovering(seen, custody)).plan()


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


def _recovering(seen: Observed, custody: Custody) -> str | None:
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
    recovering = _recovering(seen, custody)
    lost = {c: why for c, why in _lost(seen, custody).items() if c != recovering}
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

