"""decide: from what was observed, and the time, to a plan. Pure: no I/O and no clock of its own (new
keys are made here, so a caller runs it off the event loop for RSA).

A straight pipeline: a ClusterPKI being deleted, or another writer's claim in flight, waits; custody
(:mod:`clusterpki.controller.custody`) says which stored material it may build on; the gates
(:mod:`clusterpki.controller.gates`) stop an invalid spec, names in the way and a lost CA or key, and
hold a first write while an older ClusterPKI made the same second may be on its way; and
issuing (:mod:`clusterpki.controller.issuing`) makes the plan: the Secrets that change, the record to
commit (claimed first when new material is written), the status, the Events and when to look again.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from clusterpki.controller import gates, settings
from clusterpki.controller.custody import judge
from clusterpki.controller.issuing import Issuing
from clusterpki.controller.observe import Observed
from clusterpki.controller.plan import Plan, Retry

CLAIM_TTL = timedelta(seconds=30)  # a claim older than this was abandoned by its writer


def decide(seen: Observed, now: datetime) -> Plan:
    """The plan for one ClusterPKI at ``now``."""
    if seen.meta.deleting:
        return Plan(stop="It is being deleted: nothing is issued or repaired")
    claim = seen.claim
    if claim is not None and claim.holder != seen.holder and now - claim.at < CLAIM_TTL:
        return Plan(retry=Retry(settings.CONFLICT_RETRY_DELAY, f"{claim.holder} is writing its Secrets"))
    custody = judge(seen, now) if seen.spec is not None else None
    return gates.stopped(seen, custody, now) or gates.settling(seen, now) or Issuing(seen, custody, now).plan()
