"""The part of decide that issues: requests, the rotation's step, the engine, and the plan that follows.

:class:`Issuing` gathers one decision in small steps, each reading what the ones before settled: what
to force (renew requests, tampered leaves, a rotated CA's family), who signs (the rotation's phase),
the PKI (the engine), the Secrets wanted and the record they make, the writes, then the status, the
Events and the next wake. Pure, as :mod:`clusterpki.controller.decide`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from clusterpki.controller import consumers as consumer_reports
from clusterpki.controller import gates, phases, rotation, settings, status
from clusterpki.controller.custody import Custody, Material, fingerprint, holds, unrecorded_halves
from clusterpki.controller.gates import in_the_way, recovering
from clusterpki.controller.observe import Observed
from clusterpki.controller.plan import Plan, Write, WriteKind
from clusterpki.controller.reasons import Event, Reason
from clusterpki.controller.requests import (ABORT, COMPLETE, FORCE, RENEW, ROTATE, Requests, renewal_targets,
                                            rotation_target)
from clusterpki.controller.rotation import Phase, Push, Rotation, Trigger
from clusterpki.controller.wanted import Wanted, wanted_secrets
from clusterpki.kube import secrets
from clusterpki.pki import catalog, certificates, engine, keys, kubeconfig, nodes, record, times
from clusterpki.pki.certificates import Issue, KeyPair, Why
from clusterpki.pki.record import Claim, Record
from clusterpki.pki.spec import SecretRetention

ROTATED = Issue(Why.ROTATION, "its CA was rotated")
# The phases in which a single-file CA carries its cross-signed certificate (phases.crossed) and its
# new leaves do too; outside them the chain is dropped from the CA's Secret.
CROSSED = (Phase.ROTATING, Phase.COMPLETING)
MISSING = Issue(Why.MISSING, "its Secret was missing")


class Issuing:
    def __init__(self, seen: Observed, custody: Custody | None, now: datetime) -> None:
        assert seen.spec is not None and custody is not None
        self.seen, self.custody, self.now, self.spec = seen, custody, now, seen.spec
        self.recovering = recovering(seen, custody)
        self.pending = seen.requests.new_since(seen.handled)
        self.handled: Requests = seen.handled
        self.events: list[Event] = [Event.warning(Reason.FOREIGN_SECRET_IGNORED, f"Secret {name} carries the labels "
                                                  "of this ClusterPKI's Secrets but not the name of one: it is ignored")
                                    for name in seen.impostors]
        self.unrecorded = unrecorded_halves(seen, custody)
        self.events += [Event.warning(Reason.FOREIGN_SECRET_IGNORED, f"Secret {seen.secrets[c].name} is not on record "
                                      "(an earlier ClusterPKI of this name left it?): it is ignored and kept, since it "
                                      "may hold an old CA's key; delete it once you no longer need it")
                        for c in self.unrecorded]
        self.force: dict[str, Issue] = {}

    def plan(self) -> Plan:
        self._renew_request()
        step = self._rotation_step()
        wants = step.halves if step else {}
        if not self.seen.halves_read and any(h not in self.seen.secrets for h in wants):
            return Plan(read_halves=True)
        blocked = [in_the_way(self.seen.strangers[h]) for h in wants if h in self.seen.strangers] + \
            [f"Secret {self.seen.secrets[h].name} is not on record and may hold an old CA's key, so it is never "
             "overwritten" for h, material in wants.items()
             if h in self.unrecorded and not holds(h, self.seen.secrets[h], material)]
        if blocked:
            return gates.blocked(self.seen, self.now, f"{'; '.join(blocked)}: the rotation cannot go on; remove what "
                                 "is in the way")
        pki = self._build(step)
        wanted = wanted_secrets(self.seen, self.custody, pki, step)
        new_record = _record(wanted, pki, self.custody)
        writes = self._writes(wanted, step)
        claim = Claim(self.seen.holder, self.now, new_record) if self._new_material(writes, new_record) else None
        issued = self._issued(pki)
        self._tamper_events(wanted, writes)
        self._issue_events(pki, issued)
        st, wake = self._status(pki, step, new_record, claim)
        return Plan(writes=writes, claim=claim, status=st, events=tuple(self.events), wake_at=wake, issued=issued,
                    precondition=self.seen.meta.resource_version if claim or self.seen.claim else None)

    # -- what to force -------------------------------------------------------------------------

    def _renew_request(self) -> None:
        value = self.pending.renew
        if value is None:
            return
        self.handled = self.handled.with_handled(renew=value)
        targets, problem = renewal_targets(value, [p.component for p in catalog.plan(self.spec)])
        if problem:
            self.events.append(Event.warning(Reason.INVALID_RENEW_REQUEST, f"{RENEW}={value!r}: {problem}"))
        self.force.update({c: certificates.FORCED for c in targets})

    # -- who signs: the rotation ---------------------------------------------------------------

    def _rotation_step(self) -> phases.Step | None:
        if self.recovering is not None:
            return self._recovery(self.recovering)
        current = self.seen.rotation
        if current is not None and (current.active or _old_key_window(current, self.now)):
            self._queued(current)
        else:
            current = self._started() or current
        if current is None:
            return None
        return phases.step(current, self._authority(current.target), self._maker(current.target), self.now)

    def _queued(self, current: Rotation) -> None:
        """A ``rotate-ca`` value given while a rotation runs (or its old service-account key is still
        trusted): refused at once when it names no authority, else it waits, and starts once that ends."""
        value = self.pending.rotate
        if value is None:
            return
        if rotation_target(value)[1] is not None:
            self._started()  # handled, and told why
            return
        why = f"until {times.format_time(current.old_key_trusted_until)}, when tokens the old service-account " \
              "key signed have expired" if not current.active else \
              f"for the rotation of {current.target} ({current.phase.value}) to end"
        self.events.append(Event.normal(Reason.ROTATION_WAITING, f"{ROTATE}={value!r} waits {why}"))

    def _recovery(self, target: str) -> phases.Step:
        value = self.pending.rotate
        self.handled = self.handled.with_handled(rotate=value)
        started = Rotation(target=target, phase=Phase.COMPLETING, trigger=Trigger.RECOVERY, request=value,
                           started_at=self.now)
        what = "key" if target == catalog.SERVICE_ACCOUNT else "CA"
        self.events.append(Event.warning(Reason.ROTATION_RECOVERING, f"The {target} {what} was missing: a new one "
                                         f"replaces it and every leaf it issued is re-issued"))
        return phases.recovery(started, self._maker(target))

    def _started(self) -> Rotation | None:
        """A rotation asked for (``rotate-ca``), or due (a CA in its renewal window), starting now."""
        value, trigger = self.pending.rotate, Trigger.ANNOTATION
        if value is not None:
            self.handled = self.handled.with_handled(rotate=value)
            target, problem = rotation_target(value)
            if problem:
                self.events.append(Event.warning(Reason.INVALID_ROTATION_REQUEST, f"{ROTATE}={value!r}: {problem}"))
                return None
        else:
            target, trigger = self._due_authority(), Trigger.RENEWAL_WINDOW
        if target is None:
            return None
        if target in self.custody.adopted:
            what = "service-account key" if target == catalog.SERVICE_ACCOUNT else f"{target} CA"
            self.events.append(Event.warning(Reason.ROTATION_REFUSED, f"The {what} was brought in: rotate it "
                                                                      "yourself"))
            return None
        self.events.append(Event.normal(Reason.ROTATION_PREPARING, f"Rotation of {target} started ({trigger.value})"))
        return rotation.start(target, trigger, value, fingerprint(self.custody.trusted[target]), self.now)

    def _due_authority(self) -> str | None:
        for ca in catalog.CERTIFICATE_AUTHORITIES:
            pair = self.custody.trusted.get(ca.component)
            if isinstance(pair, KeyPair) and ca.component not in self.custody.adopted and \
                    certificates.renewal_time(pair.cert, self.spec.ca_renew_before) <= self.now:
                return ca.component
        return None

    def _authority(self, target: str) -> phases.Authority:
        trusted = self.custody.trusted
        return phases.Authority(trusted[target], trusted.get(f"{target}{secrets.NEXT}"),
                                trusted.get(f"{target}{secrets.PREVIOUS}"), self.custody.pool)

    def _maker(self, target: str) -> phases.Make:
        def make() -> Material:
            key = keys.generate(self.spec.key_algorithm)
            if target == catalog.SERVICE_ACCOUNT:
                return key
            profile = catalog.CA_BY_COMPONENT[target]
            return KeyPair(certificates.create_ca(profile.common_name, key, self.spec.ca_validity, self.now), key)
        return make

    # -- the PKI -------------------------------------------------------------------------------

    def _build(self, step: phases.Step | None) -> engine.PKI:
        existing = _existing(self.custody, step)
        force = {**self._repairs(existing), **self.force}
        if step is not None and step.rotated and isinstance(step.signer, KeyPair):
            force.update({c: ROTATED for c, pair in existing.leaves.items()
                          if catalog.issuer_of(c) == step.rotation.target and
                          not certificates.signed_by(pair.cert, step.signer.cert)})
        return engine.build(self.spec, existing, self.now, force=force, renew_due=True)

    def _repairs(self, existing: engine.Existing) -> dict[str, Issue]:
        """Why each leaf whose Secret is not what was issued is re-issued, in the engine's words when its
        pair has a problem the engine names, else custody's."""
        found = {c: MISSING for c in self.custody.absent if catalog.profile_of(c) is not None}
        planned = {p.component: p for p in catalog.plan(self.spec)}
        for component, suspect in self.custody.suspects.items():
            issuer = existing.cas.get(catalog.issuer_of(component) or "")
            problem = None
            if suspect.pair is not None and issuer is not None and component in planned:
                problem = engine.problem_with(suspect.pair, planned[component], self.spec, issuer, self.now)
            found[component] = problem or Issue(Why.REPAIR, suspect.problem)
        return found

    # -- the writes ----------------------------------------------------------------------------

    def _writes(self, wanted: dict[str, Wanted], step: phases.Step | None) -> tuple[Write, ...]:
        owner = self.seen.meta.owner() if self.spec.secret_retention is SecretRetention.DELETE else None
        writes = []
        for component, want in wanted.items():
            stored = self.seen.secrets.get(component)
            obj = secrets.secret_object(self.seen.meta.namespace, self.seen.meta.name, component, want.kind,
                                        want.data, owner, stored, want.adopted)
            if secrets.differs(stored, obj):
                writes.append(_write(stored, obj, want, self.seen.meta.namespace))
        for half in self._halves_to_delete(wanted, step):
            stored = self.seen.secrets[half]
            unblock = secrets.unblocked(stored, self.seen.meta.namespace) if stored.finalizers else None
            writes.append(Write(WriteKind.DELETE, {"metadata": {
                "name": stored.name, "namespace": self.seen.meta.namespace,
                "resourceVersion": stored.resource_version}}, unblock=unblock))
        return tuple(sorted(writes, key=lambda w: not w.first))

    def _halves_to_delete(self, wanted: dict[str, Wanted], step: phases.Step | None) -> list[str]:
        """The halves the rotation's step deletes (its spare once moved in, a new CA taken back), and a
        recorded half whose material is no longer what was issued (nothing of the operator's is left in it,
        and it must not pass for a rollback copy); never one that no record names, which may be an earlier
        ClusterPKI's, with an old CA's key."""
        deleting = set(step.delete if step else ())
        halves = [c for c in self.seen.secrets if secrets.is_rotation(c) and c not in wanted and c not in self.unrecorded]
        return [c for c in halves if c in deleting or c not in self.custody.trusted]

    def _new_material(self, writes: tuple[Write, ...], new_record: Record) -> bool:
        """Whether a write stores data the committed record does not hold: claimed first, so that an
        interrupted write is recognised as the operator's own."""
        for write in writes:
            if write.kind is WriteKind.DELETE:
                continue
            component = write.secret["metadata"]["labels"][secrets.LABEL_COMPONENT]
            entry = new_record.secrets.get(component)
            if entry is None or not self.seen.record.holds(component, entry.data):
                return True
        return False

    # -- what happened -------------------------------------------------------------------------

    def _issued(self, pki: engine.PKI) -> dict[str, Issue]:
        return {c: MISSING if issue == certificates.NEW and c in self.custody.absent else issue
                for c, issue in pki.issued.items()}

    def _tamper_events(self, wanted: dict[str, Wanted], writes: tuple[Write, ...]) -> None:
        written = {w.name for w in writes}
        for component, why in sorted(self.custody.tampered.items()):
            stored = self.seen.secrets[component]
            want = wanted.get(component)
            changed = sorted(k for k in {*stored.data, *(want.data if want else {})}
                             if want is None or stored.data.get(k) != want.data.get(k))
            action = "re-issued" if component in self.custody.suspects else \
                "restored" if component in self.custody.trusted else "replaced" if stored.name in written else "ignored"
            keys_changed = f" ({', '.join(changed)})" if changed else ""
            self.events.append(Event.warning(Reason.SECRET_TAMPERED, f"Secret {stored.name}{keys_changed}: {why}; "
                                                                     f"{action}"))

    def _issue_events(self, pki: engine.PKI, issued: dict[str, Issue]) -> None:
        for found in sorted(self.custody.newly_adopted):
            what = "service-account key" if found == catalog.SERVICE_ACCOUNT else f"{found} CA"
            self.events.append(Event.normal(Reason.ADOPTED, f"Adopted the {what} brought in Secret "
                                                            f"{secrets.secret_name(self.spec.name, found)}"))
        new = [c for c, issue in issued.items() if issue.why is Why.NEW]
        if new:
            self.events.append(Event.normal(Reason.ISSUED, f"Issued {len(new)}: {', '.join(new)}"))
        for component, issue in issued.items():
            if issue.why is Why.NEW or component not in pki.leaves:
                continue
            old = self.custody.trusted.get(component) or (self.custody.suspects.get(component) or (None, ""))[0]
            serial = pki.leaves[component].cert.serial_number
            serials = f"serial {old.cert.serial_number:X} -> {serial:X}" if isinstance(old, KeyPair) else \
                f"serial {serial:X}"
            renewed = issue.why in (Why.DUE, Why.FORCED)
            self.events.append(Event.normal(Reason.RENEWED if renewed else Reason.REISSUED,
                                            f"{'Renewed' if renewed else 'Re-issued'} {component} ({serials}): "
                                            f"{issue.message}"))

    # -- the status ----------------------------------------------------------------------------

    def _status(self, pki: engine.PKI, step: phases.Step | None, new_record: Record,
                claim: Claim | None) -> tuple[dict[str, Any], datetime]:
        seen, now = self.seen, self.now
        reports = consumer_reports.consumers(seen.reports, new_record, self.spec.name,
                                             {m.name for m in self.spec.etcd_members}, now,
                                             consumer_reports.members_of(seen.status))
        kubelets = consumer_reports.nodes(seen.nodes or {}, new_record)
        nodes_wait = "" if step is None or step.rotation.target != nodes.AUTHORITY else \
            kubelets.holding_up if seen.nodes is not None else "nodes (their reports are not listed yet)"
        moved, step_at = self._advance(step, ", ".join(h for h in (reports.holding_up, nodes_wait) if h))
        unscheduled = set(self.custody.adopted) | ({moved.target} if moved and moved.active else set())
        entries, next_renewal = status.certificates_of(pki, unscheduled)
        found: dict[str, Any] = {
            "observedGeneration": seen.meta.generation,
            "conditions": [status.ready(len(entries), seen.meta.generation, seen.conditions, now),
                           *self._consumer_conditions(reports)],
            "certificates": entries, "certificateCount": len(entries),
            "nextRenewal": times.format_time(next_renewal), "record": new_record.to_status(),
            # public: what nodes' kubelets trust comes from here, checked against the record
            "trustBundles": {nodes.AUTHORITY: kubeconfig.pem_bundle(pki.bundle(nodes.AUTHORITY)).decode()},
            "requests": self.handled.to_status() or None}
        if seen.claim is not None or claim is not None:
            found["claim"] = None
        if moved is not None:
            found["caRotation"] = moved.to_status()
        phase = moved.in_progress if moved is not None else None
        if phase or seen.status.get("phase"):
            found["phase"] = phase
        if reports.entries or seen.status.get("consumers"):
            found["consumers"] = list(reports.entries) or None
            found["consumersCurrent"] = reports.current if reports.entries else None
        if seen.nodes is not None and (kubelets.count or seen.status.get("nodes")):
            found["nodes"] = kubelets.to_status() if kubelets.count else None
            found["nodesCurrent"] = kubelets.current if kubelets.count else None
        retry = now + timedelta(seconds=settings.RETRY_DELAY)  # due, yet not renewed: no busy loop
        until = moved.old_key_trusted_until if moved else None
        queued = self.pending.rotate is not None and self.handled.rotate != self.pending.rotate
        ended = moved is None or not (moved.active or _old_key_window(moved, now))
        wake = [next_renewal if next_renewal > now else retry, step_at, reports.next_stale,
                until if until is not None and until > now else None, now if queued and ended else None]
        return found, min(w for w in wake if w is not None)

    def _advance(self, step: phases.Step | None, holding_up: str) -> tuple[Rotation | None, datetime | None]:
        if step is None:
            self._abort_refused(self.seen.rotation)
            self._push_refused("complete", self.seen.rotation)
            self._push_refused("force", self.seen.rotation)
            return self.seen.rotation, None
        self.events.extend(step.events)
        before = step.rotation
        if before.phase is not Phase.ROTATING:
            self._push_refused("complete", before)
        if not before.active:  # the sa key's window after its rotation: nothing to push
            self._push_refused("force", before)
        push = Push(complete=self.pending.complete is not None, force=self.pending.force is not None,
                    abort=self.pending.abort is not None)
        moved, step_at, used = rotation.advance(before, self.spec.rotation_grace, self.now, holding_up, push,
                                                self.spec.token_lifetime)
        expired = moved.phase is not before.phase  # a force given in a phase is for that phase
        self.handled = self.handled.with_handled(
            complete=self.pending.complete if used.complete else self.handled.complete,
            force=self.pending.force if used.force or expired else self.handled.force,
            abort=self.pending.abort if used.abort else self.handled.abort)
        if not used.abort:
            self._abort_refused(before)
        if moved.phase is not before.phase:
            self.events.append(Event.normal(Reason(f"Rotation{moved.phase.value}"),
                                            f"Rotation of {moved.target}: {before.phase.value} -> {moved.phase.value}"))
        elif moved.waiting_for and moved.waiting_for != (self.seen.rotation.waiting_for if self.seen.rotation else None):
            self.events.append(Event.normal(Reason.ROTATION_WAITING, f"Rotation of {moved.target}: {before.phase.value} "
                                            f"waits for consumers that do not run its Secrets yet: "
                                            f"{moved.waiting_for}"))
        return moved, step_at

    def _abort_refused(self, current: Rotation | None) -> None:
        """A ``rotate-ca-abort`` value that finds nothing to take back: handled, and said so, once."""
        value = self.pending.abort
        if value is None:
            return
        self.handled = self.handled.with_handled(abort=value)
        why = "no CA rotation is under way" if current is None or not current.active else \
            f"the {current.target} key's rotation cannot be taken back" if current.of_service_account else \
            f"the rotation of {current.target} is {current.phase.value}: only Preparing and Rotating can be taken back"
        self.events.append(Event.warning(Reason.INVALID_ROTATION_REQUEST, f"{ABORT}={value!r}: {why}"))

    def _push_refused(self, push: str, current: Rotation | None) -> None:
        """A ``rotate-ca-complete`` value outside Rotating, or a ``-force`` one with no rotation under way:
        handled, and said so, once; never kept for a later phase it was not meant for."""
        value = getattr(self.pending, push)
        if value is None or getattr(self.handled, push) == value:
            return
        self.handled = self.handled.with_handled(**{push: value})
        why = "no CA rotation is under way" if current is None or not current.active else \
            f"the rotation of {current.target} is {current.phase.value}: only Rotating can be completed early"
        annotation = COMPLETE if push == "complete" else FORCE
        self.events.append(Event.warning(Reason.INVALID_ROTATION_REQUEST, f"{annotation}={value!r}: {why}"))

    def _consumer_conditions(self, reports: consumer_reports.Consumers) -> list[dict[str, Any]]:
        seen, now, generation = self.seen, self.now, self.seen.meta.generation
        for member in reports.stale:
            self.events.append(Event.warning(Reason.CONSUMER_STALE, f"The agent of member {member} stopped reporting: "
                                             "it no longer counts as a consumer, and holds no rotation up"))
        if not reports.entries:
            return []
        failed = f"The roll stops until these succeed: {reports.failed}" if reports.failed else "No restart has failed"
        found = [status.condition(status.RESTARTS_HEALTHY, not reports.failed,
                                  Reason.RESTART_FAILED if reports.failed else Reason.NO_FAILED_RESTART, failed,
                                  generation, seen.conditions, now)]
        rejected = f"Agents refused material that failed verification: {reports.rejected}" if reports.rejected else \
            "Every agent verified what it wrote"
        found.append(status.condition(status.MATERIAL_ACCEPTED, not reports.rejected,
                                      Reason.MATERIAL_REJECTED if reports.rejected else Reason.MATERIAL_ACCEPTED,
                                      rejected, generation, seen.conditions, now))
        if reports.failed:
            self.events.append(Event.warning(Reason.RESTART_FAILED, failed))
        if reports.rejected:
            self.events.append(Event.warning(Reason.MATERIAL_REJECTED, rejected))
        return found


def _write(stored: secrets.StoredSecret | None, obj: dict[str, Any], want: Wanted, namespace: str) -> Write:
    """How to store ``obj``: create it, replace it, or delete and create it again (an immutable Secret's
    data, or a Secret's type, cannot change; one being deleted must go first). Someone else's finalizers
    come off first, or they would hold it."""
    first = obj["metadata"]["labels"][secrets.LABEL_COMPONENT].startswith(tuple(catalog.CA_BY_COMPONENT))
    if stored is None:
        return Write(WriteKind.CREATE, obj, first)
    again = stored.deleting or stored.kind != want.kind or \
        (stored.immutable and stored.digest != record.data_digest(want.data))
    unblock = secrets.unblocked(stored, namespace) if stored.finalizers else None
    return Write(WriteKind.RECREATE if again else WriteKind.REPLACE, obj, first, unblock)


def _old_key_window(current: Rotation, now: datetime) -> bool:
    """An ``sa`` rotation whose old public key is still trusted: no other rotation starts before it ends."""
    until = current.old_key_trusted_until
    return current.of_service_account and until is not None and until > now


def _existing(custody: Custody, step: phases.Step | None) -> engine.Existing:
    """What the engine builds on: the trusted CAs, leaves and key, with the rotation's signer and trust.
    A CA carries its chain only while its rotation is in a CROSSED phase."""
    trusted = custody.trusted
    cas = {c: m for c, m in trusted.items() if c in catalog.CA_BY_COMPONENT and isinstance(m, KeyPair)}
    leaves = {c: m for c, m in trusted.items() if catalog.profile_of(c) is not None and isinstance(m, KeyPair)
              and c not in custody.suspects}
    sa = trusted.get(catalog.SERVICE_ACCOUNT)
    existing = engine.Existing(cas=cas, leaves=leaves, service_account=sa if not isinstance(sa, KeyPair) else None)
    if step is not None and step.rotation.target == catalog.SERVICE_ACCOUNT:
        existing = existing._replace(service_account=step.signer, service_account_trust=step.trust)
    elif step is not None:
        existing = existing._replace(cas={**cas, step.rotation.target: step.signer},
                                     trust={step.rotation.target: list(step.trust)})
    crossing = step.rotation.target if step is not None and step.rotation.phase in CROSSED else None
    return existing._replace(cas={c: m if c == crossing else m._replace(chain=()) for c, m in existing.cas.items()})


def _record(wanted: dict[str, Wanted], pki: engine.PKI, custody: Custody) -> Record:
    """The record the wanted Secrets make: each one's fingerprint and data digest, and the bundles."""
    entries = {c: record.Entry(fingerprint(w.material), record.data_digest(w.data)) for c, w in wanted.items()}
    bundles = {ca.component: tuple(record.certificate_fingerprint(c) for c in pki.bundle(ca.component))
               for ca in catalog.CERTIFICATE_AUTHORITIES}
    bundles[catalog.SERVICE_ACCOUNT] = tuple(record.key_fingerprint(k) for k in pki.service_account_keys())
    return Record(entries, bundles, frozenset(custody.adopted))

