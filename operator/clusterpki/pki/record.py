"""The record of what the operator issued: the chain of custody from the operator to every node.

Only the operator writes a ClusterPKI's status, so the record it keeps there is the one thing nobody
else can forge. For each Secret it holds two fingerprints:

- ``sha256``: of the certificate (DER), or for a service-account key of its public key
  (SubjectPublicKeyInfo DER), as ``openssl x509 -fingerprint -sha256`` and kubeadm's
  ``--discovery-token-ca-cert-hash`` compute them;
- ``data``: of the Secret's whole ``data`` (every key and value), so that a single changed byte of a
  bundle, a kubeconfig or a key is seen.

``bundles`` lists, in order, the certificates (or service-account public keys) each trust bundle
holds, ``-next`` and ``-previous`` halves included during a rotation. ``adopted`` names the CAs that
were brought in: on record, never rotated.

A write that brings new material is claimed first (:class:`Claim`): the record it will commit, with
who claims it and when, so that an interrupted write is recognised as the operator's own, and two
writers never issue twice. Pure: no Kubernetes, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clusterpki.pki import keys, placement, times

FINGERPRINT = "sha256"


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, in lower-case hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def key_fingerprint(key: keys.PrivateKey | keys.PublicKey) -> str:
    """SHA-256 of the public key's SubjectPublicKeyInfo DER, in lower-case hex."""
    public = key.public_key() if isinstance(key, keys.PRIVATE_KEY_TYPES) else key
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def data_digest(data: Mapping[str, bytes]) -> str:
    """SHA-256 over every key and value of a Secret's data (decoded), in key order, length-prefixed so
    that no two different maps share a digest."""
    digest = hashlib.sha256()
    for name in sorted(data):
        for part in (name.encode(), data[name]):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()


class Entry(NamedTuple):
    """What one Secret holds, as issued: its certificate's (or key's) fingerprint and its data's digest."""

    sha256: str
    data: str


@dataclass(frozen=True)
class Record:
    """The fingerprints of everything issued, by Secret component (``ca``, ``apiserver``, ``sa``,
    ``ca-next``...), the trust bundles, and the brought-in CAs."""

    secrets: Mapping[str, Entry] = field(default_factory=dict)
    bundles: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    adopted: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def holds(self, component: str, digest: str) -> bool:
        """Whether ``digest`` is the recorded data of ``component``'s Secret."""
        entry = self.secrets.get(component)
        return entry is not None and entry.data == digest

    def fingerprint(self, component: str) -> str | None:
        entry = self.secrets.get(component)
        return entry.sha256 if entry else None

    def trusted(self, bundle: str) -> frozenset[str]:
        """The fingerprints bundle ``bundle`` trusts."""
        return frozenset(self.bundles.get(bundle, ()))

    def known_authority(self, bundle: str, fingerprint: str) -> bool:
        """Whether a CA certificate (or ``sa`` public key) is one the record vouches for as ``bundle``:
        in its bundle now, or its ``-next`` or ``-previous`` half."""
        halves = (self.fingerprint(f"{bundle}{suffix}") for suffix in ("", placement.NEXT, placement.PREVIOUS))
        return fingerprint in self.trusted(bundle) or fingerprint in set(halves)

    def revision(self, components: Iterable[str]) -> str:
        """A short digest of what the record says ``components`` hold, and of the bundles they trust:
        what a consumer reports it runs, and what the operator compares it with."""
        digest = hashlib.sha256()
        for component in sorted(set(components)):
            entry = self.secrets.get(component)
            digest.update(f"{component}={entry.data if entry else '-'};".encode())
        return digest.hexdigest()[:16]

    def to_status(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "secrets": {c: {FINGERPRINT: e.sha256, "data": e.data} for c, e in sorted(self.secrets.items())},
            "bundles": {b: list(fps) for b, fps in sorted(self.bundles.items())},
        }
        if self.adopted:
            found["adopted"] = sorted(self.adopted)
        return found

    @classmethod
    def from_status(cls, found: Mapping[str, Any] | None) -> Record:
        """The record in a status; an empty one when there is none. Malformed entries are dropped: what
        is not on record is never trusted."""
        found = found if isinstance(found, Mapping) else {}
        secrets = {c: Entry(str(e.get(FINGERPRINT, "")), str(e.get("data", "")))
                   for c, e in (found.get("secrets") or {}).items() if isinstance(e, Mapping)}
        bundles = {b: tuple(str(fp) for fp in fps) for b, fps in (found.get("bundles") or {}).items()
                   if isinstance(fps, list)}
        return cls(secrets, bundles, frozenset(str(a) for a in found.get("adopted") or []))


@dataclass(frozen=True)
class Claim:
    """A write in flight: the record it will commit, who makes it, and since when."""

    holder: str
    at: datetime
    record: Record

    def to_status(self) -> dict[str, Any]:
        return {"holder": self.holder, "at": times.format_time(self.at), "record": self.record.to_status()}

    @classmethod
    def from_status(cls, found: Mapping[str, Any] | None) -> Claim | None:
        if not isinstance(found, Mapping) or not found.get("holder"):
            return None
        try:
            at = times.parse_time(str(found.get("at")))
        except ValueError:
            return None
        return cls(str(found["holder"]), at, Record.from_status(found.get("record")))
