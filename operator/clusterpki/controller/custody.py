"""Which stored material the operator may build on: each Secret judged against the record.

The record (:mod:`clusterpki.pki.record`) holds the digest of every Secret's data as the operator
wrote it, and a claimed write's too. A Secret whose data is on record is the operator's own. Anything
else was changed by someone else:

- a leaf is re-issued;
- a CA, the service-account key or a rotation half whose certificate (or public key) is still the one
  on record, with its key, is restored; one whose key is gone is lost, never replaced silently;
- what the record does not name yet (a ClusterPKI's first look at its Secrets) is judged by when it
  was made: a CA Secret made before the ClusterPKI was brought in (adopted, never rotated); one made
  after is not the operator's and is replaced; ``clusterpki import`` pins what it stored by digest.

Certificates and public keys are also pooled by fingerprint, from every Secret: a fingerprint on record
names exactly one certificate, wherever a copy of it survives, so a trust bundle is rebuilt from any.
Pure: the observed view in, a :class:`Custody` out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from cryptography import x509

from clusterpki.controller.observe import Observed
from clusterpki.kube import secrets
from clusterpki.kube.secrets import StoredSecret
from clusterpki.pki import catalog, certificates, engine, keys, placement, record
from clusterpki.pki.certificates import KeyPair
from clusterpki.pki.placement import SecretKey

Material = KeyPair | keys.PrivateKey


def base_of(component: str) -> str:
    """The authority a rotation half belongs to: ``ca-next`` -> ``ca``."""
    return component.removesuffix(secrets.NEXT).removesuffix(secrets.PREVIOUS)


def is_authority(component: str) -> bool:
    """A CA, the service-account key, or a half of one of their rotations."""
    base = base_of(component)
    return base in catalog.CA_BY_COMPONENT or base == catalog.SERVICE_ACCOUNT


def fingerprint(material: Material) -> str:
    if isinstance(material, KeyPair):
        return record.certificate_fingerprint(material.cert)
    return record.key_fingerprint(material)


class Suspect(NamedTuple):
    """A leaf whose Secret is not what was issued: the pair it holds (None when unreadable), and why."""

    pair: KeyPair | None
    problem: str


@dataclass(frozen=True)
class Pool:
    """Every certificate and public key found in any Secret, by fingerprint."""

    certificates: Mapping[str, x509.Certificate] = field(default_factory=dict)
    public_keys: Mapping[str, keys.PublicKey] = field(default_factory=dict)


@dataclass(frozen=True)
class Custody:
    trusted: Mapping[str, Material]  # what the operator builds on, by component
    pool: Pool
    tampered: Mapping[str, str]  # component -> what is wrong with its Secret
    lost: Mapping[str, str]  # authority component -> why its key is gone
    absent: frozenset[str]  # recorded components without a Secret
    suspects: Mapping[str, Suspect]  # leaves to re-issue
    adopted: frozenset[str]  # brought-in CAs
    newly_adopted: frozenset[str]
    invalid: Mapping[str, str]  # brought-in authorities that cannot be used -> why


def judge(seen: Observed, now: datetime) -> Custody:
    """Judge every stored Secret of ``seen`` against its record."""
    judging = _Judging(seen, now)
    for component, secret in seen.secrets.items():
        if component in seen.wanted:  # a Secret of a member no longer in the spec is left alone
            judging.judge(component, secret)
    recorded = set(seen.record.secrets) | set(seen.legacy)
    absent = frozenset(c for c in recorded if c not in seen.secrets and not secrets.is_rotation(c))
    return Custody(judging.trusted, _pool(seen.secrets), judging.tampered, judging.lost, absent, judging.suspects,
                   frozenset(seen.record.adopted) | judging.adopted, frozenset(judging.adopted), judging.invalid)


def unrecorded_halves(seen: Observed, custody: Custody) -> tuple[str, ...]:
    """The rotation halves stored with this ClusterPKI's labels that no record (nor claim, nor import)
    names: nobody's to build on, yet perhaps an earlier ClusterPKI's of the same name (a ``-previous``
    keeps an old CA's key), so never deleted or overwritten."""
    return tuple(sorted(c for c, stored in seen.secrets.items()
                        if secrets.is_rotation(c) and not stored.deleting and c not in custody.trusted
                        and c not in seen.record.secrets and c not in seen.imported))


def holds(component: str, secret: StoredSecret, material: Material) -> bool:
    """Whether a Secret holds exactly ``material``: the same certificate (or public key) and private key."""
    try:
        found = read_material(component, secret)
    except ValueError:
        return False
    mine, theirs = (found.key, material.key) if isinstance(found, KeyPair) and isinstance(material, KeyPair) else \
        (found, material)
    return fingerprint(found) == fingerprint(material) and keys.same_public_key(mine, theirs)


class _Judging:
    """The verdicts so far, one Secret at a time."""

    def __init__(self, seen: Observed, now: datetime) -> None:
        self.seen, self.now = seen, now
        self.trusted: dict[str, Material] = {}
        self.tampered: dict[str, str] = {}
        self.lost: dict[str, str] = {}
        self.suspects: dict[str, Suspect] = {}
        self.adopted: set[str] = set()
        self.invalid: dict[str, str] = {}

    def judge(self, component: str, secret: StoredSecret) -> None:
        if secret.deleting and secrets.is_rotation(component):  # a half being deleted is going away
            return
        if self._on_record(component, secret):
            self._take(component, secret)
        elif self._recorded(component):
            self._salvage(component, secret)
        elif not secrets.is_rotation(component):  # an unrecorded half is nobody's: never read
            self._first_contact(component, secret)

    def _digests(self, component: str) -> set[str]:
        found = {self.seen.imported.get(component)}
        for held in (self.seen.record, self.seen.claim.record if self.seen.claim else None):
            entry = held.secrets.get(component) if held else None
            found.add(entry.data if entry else None)
        return found - {None}

    def _fingerprints(self, component: str) -> set[str]:
        held = (self.seen.record, self.seen.claim.record if self.seen.claim else None)
        return {h.fingerprint(component) for h in held if h and h.fingerprint(component)}

    def _on_record(self, component: str, secret: StoredSecret) -> bool:
        if secret.digest in self._digests(component):
            return True
        return self._legacy(component, secret)

    def _legacy(self, component: str, secret: StoredSecret) -> bool:
        """A status written before the record existed lists the serial of each certificate it issued;
        the service-account key it made is taken as found (its labels say it is the operator's)."""
        if self.seen.record or not self.seen.legacy:
            return False
        if component == catalog.SERVICE_ACCOUNT:
            return secrets.owner_of(secret.labels) == self.seen.meta.name
        return _serial(secret) == self.seen.legacy.get(component)

    def _recorded(self, component: str) -> bool:
        """Whether the committed record (or an import) names the Secret: a claim alone does not, since
        what it claims may never have been stored."""
        return component in self.seen.record.secrets or component in self.seen.imported

    def _take(self, component: str, secret: StoredSecret) -> None:
        try:
            self.trusted[component] = read_material(component, secret)
        except ValueError as exc:  # on record, yet unreadable: only a change of the record itself does this
            self._salvage(component, secret, str(exc))
            return
        if self._legacy(component, secret) and secret.annotations.get(secrets.ANNOTATION_ADOPTED):
            self.adopted.add(component)

    def _salvage(self, component: str, secret: StoredSecret, why: str = "") -> None:
        """A recorded Secret whose data is not on record: keep its material if it is still what was issued."""
        wanted = self._fingerprints(component)
        try:
            material = read_material(component, secret)
        except ValueError as exc:
            material, why = None, f"its Secret cannot be used ({exc})"
        if material is not None and fingerprint(material) in wanted and _whole(material):
            self.trusted[component] = self._vetted(component, material)
            self.tampered[component] = "its data is not what was issued"
            return
        if is_authority(component):
            self._salvage_authority(component, secret, wanted, why)
        else:
            self.suspects[component] = Suspect(material if isinstance(material, KeyPair) else None,
                                               why or "it is not the certificate on record")
            self.tampered[component] = why or f"{SecretKey.CERTIFICATE.value} is not the certificate on record"

    def _vetted(self, component: str, material: Material) -> Material:
        """A salvaged pair with only the chain the operator itself gives it: the certificate of a recorded
        single-file CA cross-signed by another recorded one (phases.crossed); anything else that follows the
        certificate in its Secret is dropped."""
        if not isinstance(material, KeyPair) or not material.chain:
            return material
        authority = base_of(component) if is_authority(component) else catalog.issuer_of(component)
        profile = catalog.CA_BY_COMPONENT.get(authority or "")
        if profile is None or not profile.single_file:
            return unchained(material)
        pool = _pool(self.seen.secrets)
        recorded = [pool.certificates.get(self.seen.record.fingerprint(f"{profile.component}{half}") or "")
                    for half in ("", placement.NEXT, placement.PREVIOUS)]
        cas = [c for c in recorded if c is not None]
        crossed = any(certificates.is_cross_of(material.chain[0], ca, by, self.now) for ca in cas for by in cas
                      if ca is not by)
        return material._replace(chain=material.chain[:1]) if crossed else unchained(material)

    def _salvage_authority(self, component: str, secret: StoredSecret, wanted: set[str], why: str) -> None:
        """A CA whose certificate was replaced keeps its key: the recorded certificate comes from the pool."""
        pool = _pool({component: secret, **self.seen.secrets})
        for fp in wanted:
            cert = pool.certificates.get(fp)
            try:
                key = secrets.read_key(secret, SecretKey.KEY)
            except ValueError:
                continue
            if cert is not None and keys.same_public_key(cert.public_key(), key):
                self.trusted[component] = KeyPair(cert, key)
                self.tampered[component] = "its certificate is not the one on record"
                return
        key_name = SecretKey.SA_KEY if base_of(component) == catalog.SERVICE_ACCOUNT else SecretKey.KEY
        self.lost[component] = why or f"{key_name.value} is not the key on record"
        self.tampered[component] = self.lost[component]

    def _first_contact(self, component: str, secret: StoredSecret) -> None:
        """A Secret the record does not name yet: made before the ClusterPKI, it is taken as found (a CA
        as brought in); made after, it is not the operator's."""
        # Whole seconds: the same second counts as before, for a user's `create secret && apply` (and gives
        # a Secret's writer nothing she could not have by creating it a second earlier).
        before = secret.created is not None and self.seen.meta.created is not None and \
            secret.created <= self.seen.meta.created
        if not before:
            what = "CA" if component in catalog.CA_BY_COMPONENT else "certificate or key"
            self.tampered[component] = f"it holds a {what} that is not on record"
            if not is_authority(component):
                self.suspects[component] = Suspect(None, "it is not on record")
            return
        try:
            material = read_material(component, secret)
        except ValueError as exc:
            self._unusable(component, str(exc))
            return
        problem = engine.check_ca(material, self.now) if component in catalog.CA_BY_COMPONENT else None
        if problem:
            self._unusable(component, problem)
            return
        self.trusted[component] = unchained(material)
        if is_authority(component):  # a CA or service-account key brought in: shown, and never rotated
            self.adopted.add(component)

    def _unusable(self, component: str, why: str) -> None:
        if is_authority(component):
            self.invalid[component] = why
        else:
            self.suspects[component] = Suspect(None, f"its Secret cannot be used ({why})")


def _whole(material: Material) -> bool:
    """A pair whose key is its certificate's (a key alone is its own)."""
    return not isinstance(material, KeyPair) or keys.same_public_key(material.cert.public_key(), material.key)


def unchained(material: Material) -> Material:
    """The material without the certificates its Secret carries after it: a chain is only ever the
    operator's own (a cross-signed CA), so it is kept only where the whole Secret is on record."""
    return material._replace(chain=()) if isinstance(material, KeyPair) and material.chain else material


def read_material(component: str, secret: StoredSecret) -> Material:
    """The certificate and key (or the service-account key) a Secret holds; ValueError naming the data
    key, never its content."""
    if base_of(component) == catalog.SERVICE_ACCOUNT:
        return secrets.read_key(secret, SecretKey.SA_KEY)
    return secrets.read_pair(secret)


def _pool(stored: Mapping[str, StoredSecret]) -> Pool:
    certificates: dict[str, x509.Certificate] = {}
    public_keys: dict[str, keys.PublicKey] = {}
    for secret in stored.values():
        for key in (SecretKey.CERTIFICATE, SecretKey.BUNDLE):
            try:
                found = x509.load_pem_x509_certificates(secret.data.get(key.value) or b"")
            except ValueError:
                continue
            certificates.update((record.certificate_fingerprint(c), c) for c in found)
        public_keys.update((record.key_fingerprint(k), k) for k in _public_keys(secret))
    return Pool(certificates, public_keys)


def _public_keys(secret: StoredSecret) -> list[keys.PublicKey]:
    """The service-account public keys a Secret holds: its ``sa.pub`` and its ``sa.key``'s."""
    try:
        found = keys.load_public_pems(secret.data.get(SecretKey.SA_PUB.value) or b"")
    except ValueError:
        found = []
    try:
        found.append(keys.load_private_pem(secret.data.get(SecretKey.SA_KEY.value) or b"").public_key())
    except ValueError:
        pass
    return found


def _serial(secret: StoredSecret) -> str | None:
    try:
        return f"{x509.load_pem_x509_certificate(secret.value(SecretKey.CERTIFICATE)).serial_number:X}"
    except ValueError:
        return None
