"""What each phase of a rotation puts in place, as library-go's certrotation types each own one object.

A phase takes what custody trusts of the rotated authority (:class:`Authority`) and returns a
:class:`Step`: who signs, what else the trust bundle carries, which rotation halves must be stored and
which deleted, and whether the authority's leaves are re-issued. The rotation moves on in
:func:`clusterpki.controller.rotation.advance`; this module is pure too (a new CA or key is made
through the ``make`` function given).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from cryptography import x509

from clusterpki.controller.custody import Material, Pool, fingerprint
from clusterpki.controller.reasons import Event, Reason
from clusterpki.controller.rotation import Phase, Rotation
from clusterpki.kube.secrets import NEXT, PREVIOUS
from clusterpki.pki import catalog, certificates, keys
from clusterpki.pki.certificates import KeyPair

Trusted = x509.Certificate | keys.PublicKey  # a CA certificate, or a service-account public key


@dataclass(frozen=True)
class Authority:
    """What custody trusts of one rotation target: its current material and its rotation halves."""

    current: Material
    spare: Material | None  # <target>-next
    previous: Material | None  # <target>-previous
    pool: Pool

    def find(self, fp: str | None, *candidates: Material | None) -> Material | None:
        return next((m for m in candidates if m is not None and fingerprint(m) == fp), None)

    def trusted(self, fp: str | None) -> Trusted | None:
        """The certificate (or public key) of fingerprint ``fp``, wherever a copy of it is stored."""
        material = self.find(fp, self.current, self.spare, self.previous)
        if material is not None:
            return public(material)
        return self.pool.certificates.get(fp or "") or self.pool.public_keys.get(fp or "")


@dataclass(frozen=True)
class Step:
    rotation: Rotation
    signer: Material  # what signs (a CA pair) or is the key (sa) during the phase
    trust: tuple[Trusted, ...] = ()  # what the bundle carries after the signer
    halves: Mapping[str, Material] = field(default_factory=dict)  # "<target>-next"/"-previous" to store
    delete: tuple[str, ...] = ()  # halves to delete
    rotated: bool = False  # the target's leaves are re-issued from the signer
    events: tuple[Event, ...] = ()


Make = Callable[[], Material]  # a new CA pair or service-account key


def step(rotation: Rotation, authority: Authority, make: Make, now: datetime) -> Step:
    """The Secrets the rotation's current phase puts in place."""
    phase = {Phase.PREPARING: preparing, Phase.ROTATING: rotating, Phase.ABORTING: aborting,
             Phase.ABORTED: aborted}.get(rotation.phase, settled)
    return phase(rotation, authority, make, now)


def preparing(rotation: Rotation, authority: Authority, make: Make, now: datetime) -> Step:
    """The new CA (or key) is made and kept in ``-next``; the old one signs; bundles carry both."""
    target = rotation.target
    spare = authority.find(rotation.new, authority.spare) if rotation.new else authority.spare
    if spare is not None and fingerprint(spare) in (fingerprint(authority.current), rotation.old):
        spare = None  # the CA being replaced is no replacement
    events: tuple[Event, ...] = ()
    if spare is None:
        if rotation.new is not None:
            what = "key" if rotation.of_service_account else "CA"
            events = (Event.warning(Reason.ROTATION_RESTARTED, f"Rotation of {target}: the new {what} in "
                                    f"{target}{NEXT} was lost or replaced; the grace period starts again"),)
            rotation = replace(rotation, phase_started_at=None)
        spare = make()
    rotation = replace(rotation, new=fingerprint(spare), old=rotation.old or fingerprint(authority.current))
    return Step(rotation, signer=authority.current, trust=(public(spare),), halves={f"{target}{NEXT}": spare},
                events=events)


def rotating(rotation: Rotation, authority: Authority, make: Make, now: datetime) -> Step:
    """The new CA moves in and signs, the old one moves to ``-previous``; bundles carry both. A move cut
    short anywhere is finished from wherever the two halves are."""
    target = rotation.target
    new = authority.find(rotation.new, authority.current, authority.spare)
    old = authority.find(rotation.old, authority.current, authority.previous)
    old_trusted = authority.trusted(rotation.old)
    if new is None or old_trusted is None or rotation.new == rotation.old:
        what = "key" if rotation.of_service_account else "CA"
        restarted = Event.warning(Reason.ROTATION_RESTARTED, f"Rotation of {target}: the new {what} or the old "
                                  "one was lost or replaced; preparing again")
        again = replace(rotation.enter(Phase.PREPARING), new=None, old=fingerprint(authority.current))
        found = preparing(again, replace(authority, spare=None), make, now)
        return replace(found, events=(restarted, *found.events))
    halves = {f"{target}{PREVIOUS}": old} if old is not None and old is not new else {}
    delete = (f"{target}{NEXT}",) if authority.spare is not None else ()
    return Step(rotation, signer=crossed(target, new, old, now), trust=(old_trusted,), halves=halves, delete=delete,
                rotated=True)


def crossed(target: str, new: Material, old: Material | None, now: datetime) -> Material:
    """The new CA of a single-file authority with its certificate cross-signed by the old one as its
    chain (kept when the stored one still is), so that its leaves are accepted wherever only the old CA
    is trusted yet: kubeadm's ``pki/ca.crt`` keeps the old CA until Completing (it is kube-controller-manager's
    signing certificate too, which must be one certificate), as do kubelets and pods until they reload."""
    profile = catalog.CA_BY_COMPONENT.get(target)
    if profile is None or not profile.single_file or not isinstance(new, KeyPair) or not isinstance(old, KeyPair) \
            or min(new.cert.not_valid_after_utc, old.cert.not_valid_after_utc) <= now:
        return new
    if new.chain and certificates.is_cross_of(new.chain[0], new.cert, old.cert, now):
        return new._replace(chain=new.chain[:1])
    return new._replace(chain=(certificates.cross_sign(new.cert, old, now),))


def settled(rotation: Rotation, authority: Authority, make: Make, now: datetime) -> Step:
    """Completing and Completed: the new CA alone; for ``sa`` the old public key stays trusted while
    tokens it signed may live. The new CA keeps its cross-signed chain through Completing (nodes and
    pods may still trust the old CA alone; see issuing.CROSSED); leaves keep theirs until renewed."""
    trust: tuple[Trusted, ...] = ()
    until = rotation.old_key_trusted_until
    if rotation.of_service_account and until is not None and until > now:
        old = authority.trusted(rotation.old)
        trust = (old,) if old is not None and rotation.old != fingerprint(authority.current) else ()
    return Step(rotation, signer=authority.current, trust=trust)


def aborting(rotation: Rotation, authority: Authority, make: Make, now: datetime) -> Step:
    """The rotation taken back: the old CA signs again from ``<target>`` and its leaves are re-issued from
    it; the new one waits in ``<target>-next``, and bundles keep it while consumers move back. Without
    the old CA's key there is nothing to go back to: the rotation goes on."""
    target = rotation.target
    old = authority.find(rotation.old, authority.current, authority.previous)
    new = authority.find(rotation.new, authority.current, authority.spare)
    if not isinstance(old, KeyPair) or new is None:
        lost = Event.warning(Reason.INVALID_ROTATION_REQUEST, f"Rotation of {target}: the old CA's key is gone, so "
                             "it cannot be taken back; it goes on")
        found = rotating(rotation.enter(Phase.ROTATING), authority, make, now)
        return replace(found, events=(lost, *found.events))
    halves = {f"{target}{NEXT}": new._replace(chain=()) if isinstance(new, KeyPair) else new}
    delete = (f"{target}{PREVIOUS}",) if authority.previous is not None and authority.previous is old else ()
    return Step(rotation, signer=old._replace(chain=()), trust=(public(new),), halves=halves, delete=delete,
                rotated=True)


def aborted(rotation: Rotation, authority: Authority, make: Make, now: datetime) -> Step:
    """Taken back: the old CA alone, and the new one deleted."""
    delete = (f"{rotation.target}{NEXT}",) if authority.spare is not None else ()
    return Step(rotation, signer=authority.current, delete=delete)


def recovery(rotation: Rotation, make: Make) -> Step:
    """A lost authority replaced at once, on request: no old one to keep trusting."""
    new = make()
    recovered = replace(rotation, phase=Phase.COMPLETING, new=fingerprint(new), phase_started_at=None)
    return Step(recovered, signer=new, rotated=True)


def public(material: Material) -> Trusted:
    return material.cert if isinstance(material, KeyPair) else material.public_key()
