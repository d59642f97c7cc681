"""Where each row of the catalog lands: which key of its Secret, which file of kubeadm's layout, with
what mode. The one table that the Secret layout, ``render``, ``check-expiration``, ``import`` and the
agent all read, as kubeadm's certlist names each certificate's files.

A CA's ``.crt`` file holds its trust bundle (the Secret's ``ca.crt``: the CA itself first, then, during
a rotation, the other half), so that consumers trust old and new together; offline the bundle is the
CA alone. A kubeconfig is built from its row's pair, its issuer's bundle and the spec's server.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from typing import NamedTuple

from clusterpki.pki import catalog

PRIVATE = 0o600
PUBLIC = 0o644
NEXT, PREVIOUS = "-next", "-previous"  # suffixes of the components that hold a rotation's other half


class SecretKey(str, enum.Enum):
    """The keys of a ClusterPKI's Secrets (the contract's Secret layout)."""

    CERTIFICATE = "tls.crt"
    KEY = "tls.key"
    BUNDLE = "ca.crt"
    KUBECONFIG = "kubeconfig"
    SA_KEY = "sa.key"
    SA_PUB = "sa.pub"


TLS_KEYS = (SecretKey.CERTIFICATE, SecretKey.KEY, SecretKey.BUNDLE)
SA_KEYS = (SecretKey.SA_KEY, SecretKey.SA_PUB)


class Placement(NamedTuple):
    """One file of kubeadm's layout: the Secret component and key it comes from, its path below DIR,
    its mode, and the name kubeadm's ``certs check-expiration`` prints for it (for certificates)."""

    component: str  # the Secret's component, e.g. "etcd-server-m0" for a member's row
    row: str  # the catalog row, e.g. "etcd-server"
    key: SecretKey
    path: str
    mode: int
    where: catalog.Where = catalog.Where.EVERY_MEMBER

    @property
    def holds_certificate(self) -> bool:
        """Whether the file holds the row's own certificate (a kubeconfig embeds it)."""
        return self.key in (SecretKey.CERTIFICATE, SecretKey.KUBECONFIG) or \
            (self.key is SecretKey.BUNDLE and self.row in catalog.CA_BY_COMPONENT)

    @property
    def kubeadm_name(self) -> str:
        """kubeadm's name for the certificate: ``apiserver``, ``etcd-server``, ``admin.conf``, ``ca``..."""
        if self.row in catalog.CA_BY_COMPONENT:
            return self.row
        if self.key is SecretKey.KUBECONFIG:
            return self.path
        return self.path.removeprefix("pki/").removesuffix(".crt").replace("/", "-")


def component_of(profile: catalog.LeafProfile, member: str) -> str:
    """The Secret component of a leaf row for one member: per-member rows hold that member's."""
    return f"{profile.component}-{member}" if profile.per_member else profile.component


def placements(member: str, leaves: Collection[str] | None = None) -> tuple[Placement, ...]:
    """Every file of one member's layout, CAs first, then the leaves in catalog order, then ``sa``.
    ``leaves`` limits the leaves' files to those components' (a PKI's planned leaves); None gives every
    row's, of every release."""
    found = []
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        found.append(Placement(ca.component, ca.component, SecretKey.BUNDLE, f"{ca.file}.crt", PUBLIC))
        found.append(Placement(ca.component, ca.component, SecretKey.KEY, f"{ca.file}.key", PRIVATE))
    for profile in catalog.LEAVES:
        component = component_of(profile, member)
        if leaves is not None and component not in leaves:
            continue
        if profile.file:
            found.append(Placement(component, profile.component, SecretKey.CERTIFICATE, f"{profile.file}.crt", PUBLIC,
                                   profile.where))
            found.append(Placement(component, profile.component, SecretKey.KEY, f"{profile.file}.key", PRIVATE,
                                   profile.where))
        if profile.kubeconfig:
            found.append(Placement(component, profile.component, SecretKey.KUBECONFIG, profile.kubeconfig, PRIVATE,
                                   profile.where))
    sa_key, sa_pub = catalog.SERVICE_ACCOUNT_FILES
    found.append(Placement(catalog.SERVICE_ACCOUNT, catalog.SERVICE_ACCOUNT, SecretKey.SA_KEY, sa_key, PRIVATE))
    found.append(Placement(catalog.SERVICE_ACCOUNT, catalog.SERVICE_ACCOUNT, SecretKey.SA_PUB, sa_pub, PUBLIC))
    return tuple(dict.fromkeys(found))  # a row kubeadm issues differently by release has one set of files


def sources(member: str, leaves: Collection[str] | None = None) -> tuple[str, ...]:
    """The Secret components one member's files come from, in placement order (``leaves`` as for
    :func:`placements`): none for a file no Secret holds."""
    return tuple(dict.fromkeys(p.component for p in placements(member, leaves)
                               if p.where is not catalog.Where.RENDER_ONLY))


def authority_files() -> tuple[Placement, ...]:
    """The files that say whose PKI a directory holds: each CA's certificate and the service-account key."""
    return tuple(p for p in placements("") if p.key in (SecretKey.BUNDLE, SecretKey.SA_KEY))


def certificate_files(member: str) -> tuple[Placement, ...]:
    """The one file per certificate that holds it: what ``check-expiration`` reads, leaves first."""
    files = [p for p in placements(member) if p.holds_certificate and p.where is not catalog.Where.RENDER_ONLY]
    return tuple(sorted((p for p in files if p.row not in catalog.CA_BY_COMPONENT), key=lambda p: p.kubeadm_name)) + \
        tuple(p for p in files if p.row in catalog.CA_BY_COMPONENT)


def secret_keys(component: str) -> tuple[SecretKey, ...]:
    """The data keys of a component's Secret: ``sa`` has the key pair, the others a TLS pair and the
    issuer's bundle, and a client's login its kubeconfig too."""
    if component.removesuffix(NEXT).removesuffix(PREVIOUS) == catalog.SERVICE_ACCOUNT:
        return SA_KEYS
    profile = catalog.profile_of(component)
    return (*TLS_KEYS, SecretKey.KUBECONFIG) if profile is not None and profile.kubeconfig else TLS_KEYS


def old_signers() -> tuple[str, ...]:
    """The rotation halves whose CA a member's files may hold: a single-file CA's ``-previous`` signs on
    disk while its rotation is Rotating (``catalog.CAProfile.single_file``)."""
    return tuple(f"{ca.component}{PREVIOUS}" for ca in catalog.CERTIFICATE_AUTHORITIES if ca.single_file)
