"""What an agent may write: its member's Secrets, verified against the ClusterPKI's record. Pure.

The record (only the operator writes a ClusterPKI's status) holds the digest of each Secret's data, the
fingerprint of each certificate and key, and each trust bundle's fingerprints in order. A Secret is
used only if its data is exactly what was recorded; then, beside that, every leaf must chain to a CA
of its issuer's recorded bundle, every key must match its certificate, and every bundle must be the
recorded one. The files come out of the verified material alone (:func:`clusterpki.kubeadm.layout.files_for`,
the same as ``render``): no kubeconfig is ever taken from a Secret, so no ``exec``, ``auth-provider`` or
token reaches a node.

A Secret whose data a claimed write holds (the operator is writing) is not a problem: the round waits
for the record to be committed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509

from clusterpki.kube import secrets
from clusterpki.kube.secrets import StoredSecret
from clusterpki.pki import catalog, certificates, engine, keys, placement, record
from clusterpki.pki.certificates import KeyPair
from clusterpki.pki.placement import SecretKey
from clusterpki.pki.record import Claim, Record
from clusterpki.pki.spec import Spec


def sources(spec: Spec, member: str) -> list[str]:
    """The Secret components one member's files come from, in placement order: what ``spec`` plans for it."""
    return list(placement.sources(member, {leaf.component for leaf in catalog.plan(spec, [member])}))


@dataclass(frozen=True)
class Verification:
    pki: engine.PKI | None = None  # everything verified: what the member's files are made of
    rejected: Mapping[str, str] = field(default_factory=dict)  # Secret component -> why it is refused
    waiting: str | None = None  # why there is nothing to write yet (not issued, or being written)


def verify(fetched: Mapping[str, StoredSecret | None], current: Record, claim: Claim | None, spec: Spec,
           member: str, disk: Mapping[str, KeyPair] | None = None) -> Verification:
    """The member's PKI, from ``fetched`` (component -> Secret, None when missing), if every Secret is
    what ``current`` records; else what is refused, or why to wait."""
    wanted = sources(spec, member)
    waiting = [c for c in wanted if c not in current.secrets]
    if waiting:
        return Verification(waiting=f"not issued yet: {', '.join(waiting)}")
    rejected: dict[str, str] = {}
    for component in wanted:
        stored = fetched.get(component)
        if stored is None:
            rejected[component] = "its Secret is missing"
        elif not current.holds(component, stored.digest):
            if claim is not None and claim.record.holds(component, stored.digest):
                return Verification(waiting=f"Secret {stored.name} is being written")
            rejected[component] = "its data is not what the operator issued (the record's digest differs)"
    if rejected:
        return Verification(rejected=rejected)
    try:
        built = _build(fetched, current, spec, member)
        return Verification(pki=built._replace(on_disk=on_disk(fetched, current, disk or {})))
    except _Refused as exc:
        return Verification(rejected={exc.component: exc.why})


class _Refused(Exception):
    def __init__(self, component: str, why: str) -> None:
        super().__init__(why)
        self.component, self.why = component, why


def _build(fetched: Mapping[str, StoredSecret | None], current: Record, spec: Spec, member: str) -> engine.PKI:
    cas, trust = {}, {}
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        bundle = _bundle(ca.component, fetched, current)
        pair = _pair(ca.component, fetched, current)
        if record.certificate_fingerprint(bundle[0]) != current.fingerprint(ca.component):
            raise _Refused(ca.component, "its bundle does not start with the CA on record")
        cas[ca.component], trust[ca.component] = pair, bundle[1:]
    planned = {leaf.component: leaf for leaf in catalog.plan(spec, [member])}
    leaves = {}
    for component, leaf in planned.items():
        pair = _pair(component, fetched, current)
        if not any(certificates.signed_by(pair.cert, ca) for ca in [cas[leaf.issuer].cert, *trust[leaf.issuer]]):
            raise _Refused(component, f"its certificate does not chain to the recorded {leaf.issuer} bundle")
        leaves[component] = pair
    sa_key, sa_trust = _service_account(fetched, current)
    return engine.PKI(spec=spec, cas=cas, leaves=leaves, planned=planned, service_account=sa_key, issued={},
                      trust=trust, service_account_trust=sa_trust)


def on_disk(fetched: Mapping[str, StoredSecret | None], current: Record,
            disk: Mapping[str, KeyPair]) -> dict[str, KeyPair]:
    """The old CA of each single-file authority whose rotation is Rotating (the record's bundle is the
    new CA, then the old one, which is not the spare of a Preparing): until Completing drops it from
    the bundle, it stays the one in ``pki/ca.crt`` and ``pki/ca.key``. It comes from the ``-previous``
    half, verified as any Secret; if that Secret is gone, from what ``disk`` (the node's own files)
    holds of exactly that CA; else nothing is written."""
    found = {}
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        bundle = current.bundles.get(ca.component, ())
        if not ca.single_file or len(bundle) < 2 or bundle[1] == current.fingerprint(f"{ca.component}{placement.NEXT}"):
            continue
        half, old = f"{ca.component}{placement.PREVIOUS}", bundle[1]
        kept = disk.get(ca.component)
        if current.fingerprint(half) == old:
            stored = _stored(half, fetched)
            if not current.holds(half, stored.digest):
                raise _Refused(half, "its data is not what the operator issued (the record's digest differs)")
            found[ca.component] = _pair(half, fetched, current)._replace(chain=())
        elif kept is not None and record.certificate_fingerprint(kept.cert) == old and \
                keys.same_public_key(kept.cert.public_key(), kept.key):
            found[ca.component] = kept
        else:
            raise _Refused(half, "the old CA, which signs on disk until Completing, is neither in this Secret "
                                 "nor in the node's files")
    return found


def _stored(component: str, fetched: Mapping[str, StoredSecret | None]) -> StoredSecret:
    stored = fetched.get(component)
    if stored is None:
        raise _Refused(component, "its Secret is missing")
    return stored


def _pair(component: str, fetched: Mapping[str, StoredSecret | None], current: Record) -> KeyPair:
    try:
        pair = secrets.read_pair(_stored(component, fetched))
    except ValueError as exc:
        raise _Refused(component, str(exc)) from None
    if record.certificate_fingerprint(pair.cert) != current.fingerprint(component):
        raise _Refused(component, "tls.crt is not the certificate on record")
    if not keys.same_public_key(pair.cert.public_key(), pair.key):
        raise _Refused(component, "tls.key does not match tls.crt")
    return pair


def _bundle(ca: str, fetched: Mapping[str, StoredSecret | None], current: Record) -> list[x509.Certificate]:
    """The CA's trust bundle, exactly as recorded, in order."""
    try:
        bundle = x509.load_pem_x509_certificates(_stored(ca, fetched).value(SecretKey.BUNDLE))
    except ValueError:
        raise _Refused(ca, "ca.crt is not a PEM bundle") from None
    if tuple(record.certificate_fingerprint(c) for c in bundle) != tuple(current.bundles.get(ca, ())):
        raise _Refused(ca, "ca.crt is not the bundle on record")
    return bundle


def _service_account(fetched: Mapping[str, StoredSecret | None],
                     current: Record) -> tuple[keys.PrivateKey, tuple[keys.PublicKey, ...]]:
    stored = _stored(catalog.SERVICE_ACCOUNT, fetched)
    try:
        key = secrets.read_key(stored, SecretKey.SA_KEY)
        published = keys.load_public_pems(stored.value(SecretKey.SA_PUB))
    except ValueError as exc:
        raise _Refused(catalog.SERVICE_ACCOUNT, str(exc)) from None
    if record.key_fingerprint(key) != current.fingerprint(catalog.SERVICE_ACCOUNT):
        raise _Refused(catalog.SERVICE_ACCOUNT, "sa.key is not the key on record")
    if tuple(record.key_fingerprint(k) for k in published) != tuple(current.bundles.get(catalog.SERVICE_ACCOUNT, ())):
        raise _Refused(catalog.SERVICE_ACCOUNT, "sa.pub is not the set of keys on record")
    if record.key_fingerprint(published[0]) != record.key_fingerprint(key):
        raise _Refused(catalog.SERVICE_ACCOUNT, "sa.pub does not start with sa.key's public key")
    return key, tuple(published[1:])
