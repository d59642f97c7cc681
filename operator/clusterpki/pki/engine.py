"""The PKI engine: a pure function from a spec, and what already exists, to the whole PKI.

It knows nothing of files or Kubernetes. ``render`` feeds it what is on disk; the operator feeds it
what is in Secrets. Either way, existing CAs and the service-account key are always kept, and a leaf
is re-issued only when it has a problem (or when forced), so the engine is idempotent by design.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import NamedTuple

from cryptography import x509

from clusterpki.pki import catalog, certificates, keys
from clusterpki.pki.catalog import PlannedLeaf
from clusterpki.pki.certificates import DUE, FORCED, NEW, Issue, KeyPair, Why
from clusterpki.pki.keys import PrivateKey
from clusterpki.pki.spec import Spec

KEEPS_KEY = frozenset({Why.DUE, Why.ROTATION, Why.SPEC})  # re-issues that keep the leaf's key: see _kept_key

__all__ = ["DUE", "FORCED", "NEW", "PKI", "Existing", "Issue", "Why", "build", "check_ca", "problem_with"]


class Existing(NamedTuple):
    """What is there already: CA pairs, leaf pairs by component, and the service-account key.

    ``trust`` adds CA certificates to a CA's trust bundle, and ``service_account_trust`` public keys
    to ``sa.pub``: during a rotation the bundles carry the old and the new together."""

    cas: Mapping[str, KeyPair] = MappingProxyType({})
    leaves: Mapping[str, KeyPair] = MappingProxyType({})
    service_account: PrivateKey | None = None
    trust: Mapping[str, list[x509.Certificate]] = MappingProxyType({})
    service_account_trust: tuple[keys.PublicKey, ...] = ()


class PKI(NamedTuple):
    """A complete PKI. ``issued`` names each certificate made in this run, with why."""

    spec: Spec
    cas: dict[str, KeyPair]
    leaves: dict[str, KeyPair]
    planned: dict[str, PlannedLeaf]
    service_account: PrivateKey
    issued: dict[str, Issue]
    trust: Mapping[str, list[x509.Certificate]] = MappingProxyType({})
    service_account_trust: tuple[keys.PublicKey, ...] = ()
    # The pair a CA's files hold when it is not the CA's own: the old CA of a single-file authority
    # still signs on disk while its rotation is Rotating (see catalog.CAProfile.single_file).
    on_disk: Mapping[str, KeyPair] = MappingProxyType({})

    def disk_pair(self, ca: str) -> KeyPair:
        """The CA pair kubeadm's files of ``ca`` hold."""
        return self.on_disk.get(ca) or self.cas[ca]

    def bundle(self, ca: str) -> list[x509.Certificate]:
        """The trust bundle for certificates issued by ``ca``: what goes into ``ca.crt``."""
        return [self.cas[ca].cert, *self.trust.get(ca, [])]

    def service_account_keys(self) -> list[keys.PublicKey]:
        """The public keys that verify service-account tokens: what goes into ``sa.pub``."""
        return [self.service_account.public_key(), *self.service_account_trust]


def check_ca(pair: KeyPair, now: datetime) -> str | None:
    """Why an existing CA pair cannot be used, or None when it can."""
    if not keys.same_public_key(pair.cert.public_key(), pair.key):
        return "its private key does not match its certificate"
    if not certificates.is_ca(pair.cert):
        return "its certificate is not a CA (basicConstraints CA:TRUE is missing)"
    if pair.cert.not_valid_after_utc <= now:
        return "its certificate has expired"
    return None


def problem_with(pair: KeyPair, leaf: PlannedLeaf, spec: Spec, issuer: KeyPair, now: datetime,
                 renew_due: bool = False) -> Issue | None:
    """Why an existing leaf must be re-issued for ``spec``, or None when it is fine.

    With ``renew_due``, a leaf inside its renewal window counts as a problem too.
    """
    renewal = certificates.renewal_time(pair.cert, spec.renew_before) if renew_due else None
    problem = certificates.problem_with_leaf(pair, leaf.identity, [issuer.cert], renewal, now)
    if problem:
        return problem
    algorithm = keys.algorithm_of(pair.key)
    if algorithm is not spec.key_algorithm:
        have = algorithm.value if algorithm else "another algorithm"
        return Issue(Why.SPEC, f"its key is {have}, the spec asks for {spec.key_algorithm.value}")
    return None


def build(spec: Spec, existing: Existing, now: datetime, leaves: Sequence[PlannedLeaf] | None = None,
          force: Mapping[str, Issue] = MappingProxyType({}), renew_due: bool = False) -> PKI:
    """Complete the PKI ``spec`` wants on top of ``existing``.

    Existing CAs and the service-account key are kept as they are; the caller has checked them with
    :func:`check_ca`. Each leaf is kept unless it is missing, has a problem, or is named in ``force``
    (with why). ``leaves`` are the leaves to build (one member's files, as ``render`` plans them); every
    Secret's by default. With ``renew_due``, leaves
    inside their renewal window are re-issued too (keeping their keys: see :func:`_kept_key`).
    """
    planned = {leaf.component: leaf for leaf in (catalog.plan(spec) if leaves is None else leaves)}
    missing_cas = [ca for ca in catalog.CERTIFICATE_AUTHORITIES if ca.component not in existing.cas]
    cas = dict(existing.cas)
    to_issue = {component: issue for component, leaf in planned.items()
                if (issue := _issue(component, leaf, spec, existing, cas, force, now, renew_due))}

    kept_keys = {c: key for c, issue in to_issue.items() if (key := _kept_key(existing.leaves.get(c), issue, spec))}
    need_sa = existing.service_account is None
    new_keys = iter(keys.generate_many(spec.key_algorithm, len(missing_cas) + len(to_issue) - len(kept_keys) + need_sa))

    issued: dict[str, Issue] = {}
    for profile in missing_cas:
        key = next(new_keys)
        cas[profile.component] = KeyPair(
            certificates.create_ca(profile.common_name, key, spec.ca_validity, now), key)
        issued[profile.component] = NEW

    leaves = {c: pair for c, pair in existing.leaves.items() if c in planned and c not in to_issue}
    for component, reason in to_issue.items():
        leaf = planned[component]
        key = kept_keys.get(component) or next(new_keys)
        issuer = cas[leaf.issuer]
        cert = certificates.sign_leaf(leaf.identity, key.public_key(), issuer, spec.cert_validity, now)
        leaves[component] = KeyPair(cert, key, issuer.chain)
        issued[component] = reason

    service_account = existing.service_account
    if service_account is None:
        service_account = next(new_keys)
        issued[catalog.SERVICE_ACCOUNT] = NEW

    return PKI(spec=spec, cas=cas, leaves=leaves, planned=planned, service_account=service_account,
               issued=issued, trust=existing.trust, service_account_trust=existing.service_account_trust)


def _kept_key(pair: KeyPair | None, issue: Issue, spec: Spec) -> PrivateKey | None:
    """The key a re-issued leaf keeps, as ``kubeadm certs renew`` does: on renewal, rotation or a spec
    change, a live reader of the files then sees a new certificate for the same key, never a mismatched
    pair (a certificate and its key are two files, two renames). A renewal asked for (``renew``), a
    missing or repaired pair, and another key algorithm get a new key."""
    if pair is None or issue.why not in KEEPS_KEY or keys.algorithm_of(pair.key) is not spec.key_algorithm:
        return None
    return pair.key if keys.same_public_key(pair.cert.public_key(), pair.key) else None


def _issue(component: str, leaf: PlannedLeaf, spec: Spec, existing: Existing, cas: Mapping[str, KeyPair],
           force: Mapping[str, Issue], now: datetime, renew_due: bool) -> Issue | None:
    """Why a planned leaf must be issued now, or None when the existing one stays."""
    if component in force:
        return force[component]
    if component not in existing.leaves:
        return NEW
    if leaf.issuer not in cas:
        return Issue(Why.ROTATION, "its CA is new")
    return problem_with(existing.leaves[component], leaf, spec, cas[leaf.issuer], now, renew_due)
