"""The catalog: every certificate of a control-plane PKI, in one table, as kubeadm's certlist has it.

Read a certificate's CN, O, usages, SANs, issuer, kubeadm file and kubeconfig off its row below.
:func:`plan` turns the table and a :class:`Spec` into the concrete certificates that spec wants.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable
from typing import NamedTuple

from clusterpki.pki.certificates import CLIENT_AUTH, SERVER_AUTH, Identity
from clusterpki.pki.spec import EtcdMember, IPAddress, Release, Spec

SERVER = (SERVER_AUTH,)
CLIENT = (CLIENT_AUTH,)
SERVER_CLIENT = (SERVER_AUTH, CLIENT_AUTH)
MASTERS = ("system:masters",)
CLUSTER_ADMINS = ("kubeadm:cluster-admins",)  # kubeadm binds it to cluster-admin, by a ClusterRoleBinding of that name
NODES = ("system:nodes",)
MEMBER = "{member}"  # stands for the member's name in the CN column (kubeadm names the etcd member after its node)

SanRule = Callable[[Spec, EtcdMember | None], tuple[tuple[str, ...], tuple[IPAddress, ...]]]


def no_sans(spec: Spec, member: EtcdMember | None) -> tuple[tuple[str, ...], tuple[IPAddress, ...]]:
    return (), ()


def apiserver_sans(spec: Spec, member: EtcdMember | None) -> tuple[tuple[str, ...], tuple[IPAddress, ...]]:
    """The in-cluster names, the first service IP, the endpoint host, ``apiServer.certSANs``, and the name
    and advertise address of each member whose apiserver has one (kubeadm puts each node's own in its
    apiserver's certificate; the members share one, so it names them all)."""
    dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
           f"kubernetes.default.svc.{spec.cluster_domain}"]
    ips: list[IPAddress] = [spec.first_service_ip]
    for name in (spec.endpoint_host, *spec.cert_sans):
        _add_name(name, dns, ips)
    for advertised in (m for m in spec.etcd_members if m.advertise_address is not None):
        dns.append(advertised.name)
        ips.append(advertised.advertise_address)
    return _unique(dns), _unique(ips)


# What kubeadm puts in every etcd server and peer certificate besides the member's own name and address
# (kubeadm's getAltNames: localhost, 127.0.0.1 and ::1, every version since 1.13).
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


def etcd_member_sans(spec: Spec, member: EtcdMember | None) -> tuple[tuple[str, ...], tuple[IPAddress, ...]]:
    """The member's own ``dnsNames`` and ``ips``, plus the loopback names and addresses."""
    assert member is not None
    return _unique([*member.dns_names, *LOOPBACK_NAMES]), _unique([*member.ips, *LOOPBACK_IPS])


class Releases(NamedTuple):
    """The Kubernetes releases for which kubeadm issues a row so: from ``since`` up to, not including,
    ``before`` (None is open); and whether it is the contract's row, which a spec without
    ``kubernetesVersion`` gets (the contract's table mixes kubeadm's releases: its etcd clients are
    v1.29's, its admin and apiserver-kubelet-client earlier ones')."""

    since: Release | None = None
    before: Release | None = None
    contract: bool = True

    def include(self, release: Release | None) -> bool:
        if release is None:
            return self.contract
        return (self.since is None or release >= self.since) and (self.before is None or release < self.before)


# kubeadm v1.29 moved its client certificates out of system:masters: admin.conf (KEP-4214) and
# apiserver-kubelet-client into kubeadm:cluster-admins, which a ClusterRoleBinding of that name grants
# cluster-admin, the etcd clients into no group; and added super-admin.conf in system:masters, written by
# `kubeadm init` alone, to create that binding.
SUPER_ADMIN_SPLIT = Release(1, 29)
LAST_BEFORE_SPLIT = Release(1, 28)
ALWAYS = Releases()
BEFORE_SPLIT = Releases(before=SUPER_ADMIN_SPLIT)  # and the contract's
SINCE_SPLIT = Releases(since=SUPER_ADMIN_SPLIT, contract=False)
ONLY_BEFORE_SPLIT = Releases(before=SUPER_ADMIN_SPLIT, contract=False)
SPLIT_AND_CONTRACT = Releases(since=SUPER_ADMIN_SPLIT)
# From kubeadm v1.33 (ControlPlaneKubeletLocalMode, beta and on), a control-plane node's kubelet.conf
# reaches its own apiserver, as controller-manager.conf and scheduler.conf do.
KUBELET_LOCAL = Release(1, 33)


class Where(enum.Enum):
    """Where a row's material lives."""

    EVERY_MEMBER = "every member"  # in its Secret, and in its files on every member
    # In its Secret; its file on the first member alone, kubeadm init's node (kubeadm join writes none):
    # render writes it there, and the agent keeps it current there while it is present (kubeadm advises
    # moving super-admin.conf away, and renews it only where it is, as the agent does).
    FIRST_MEMBER = "first member"
    # In no Secret: render writes it for each member, as kubeadm init and join do; from then on the node's
    # own software renews it (the kubelet its client certificate), so no agent ever writes it.
    RENDER_ONLY = "render only"


class CAProfile(NamedTuple):
    component: str
    common_name: str
    file: str  # kubeadm's path below DIR, without .crt/.key
    # Its files are a signer's too: kube-controller-manager signs kubelet CSRs with kubeadm's
    # ``--cluster-signing-cert-file=pki/ca.crt --cluster-signing-key-file=pki/ca.key`` and refuses to
    # start unless the .crt holds exactly one certificate, the .key's. So the .crt holds the CA that
    # signs on disk alone, never a bundle; a rotation's trust moves through cross-signed chains instead.
    single_file: bool = False


class LeafProfile(NamedTuple):
    component: str  # the Secret suffix; per-member profiles get "-<member>" appended
    issuer: str
    common_name: str
    organizations: tuple[str, ...]
    usages: tuple
    sans: SanRule
    file: str | None = None  # kubeadm's path below DIR, when kubeadm writes a .crt/.key pair
    kubeconfig: str | None = None  # kubeadm's kubeconfig file, when the certificate is a client's login
    local: bool = False  # its kubeconfig reaches the member's own apiserver, when it has an advertiseAddress
    releases: Releases = ALWAYS  # the kubeadm releases that issue it so
    where: Where = Where.EVERY_MEMBER

    @property
    def per_member(self) -> bool:
        return MEMBER in self.common_name

    def common_name_of(self, member: EtcdMember | None) -> str:
        return self.common_name.replace(MEMBER, member.name) if member is not None else self.common_name


CERTIFICATE_AUTHORITIES: tuple[CAProfile, ...] = (
    #          component         CN                kubeadm file
    CAProfile("ca",              "kubernetes",     "pki/ca",              single_file=True),
    CAProfile("etcd-ca",         "etcd-ca",        "pki/etcd/ca"),
    CAProfile("front-proxy-ca",  "front-proxy-ca", "pki/front-proxy-ca"),
)

LEAVES: tuple[LeafProfile, ...] = (
    #            component                   issuer            CN                               O               usages         SANs              kubeadm file / kubeconfig, releases, where
    LeafProfile("apiserver",                "ca",             "kube-apiserver",                ( ),            SERVER,        apiserver_sans,   file="pki/apiserver"),
    LeafProfile("apiserver-kubelet-client", "ca",             "kube-apiserver-kubelet-client", MASTERS,        CLIENT,        no_sans,          file="pki/apiserver-kubelet-client", releases=BEFORE_SPLIT),
    LeafProfile("apiserver-kubelet-client", "ca",             "kube-apiserver-kubelet-client", CLUSTER_ADMINS, CLIENT,        no_sans,          file="pki/apiserver-kubelet-client", releases=SINCE_SPLIT),
    LeafProfile("apiserver-etcd-client",    "etcd-ca",        "kube-apiserver-etcd-client",    ( ),            CLIENT,        no_sans,          file="pki/apiserver-etcd-client", releases=SPLIT_AND_CONTRACT),
    LeafProfile("apiserver-etcd-client",    "etcd-ca",        "kube-apiserver-etcd-client",    MASTERS,        CLIENT,        no_sans,          file="pki/apiserver-etcd-client", releases=ONLY_BEFORE_SPLIT),
    LeafProfile("front-proxy-client",       "front-proxy-ca", "front-proxy-client",            ( ),            CLIENT,        no_sans,          file="pki/front-proxy-client"),
    LeafProfile("etcd-server",              "etcd-ca",        MEMBER,                          ( ),            SERVER_CLIENT, etcd_member_sans, file="pki/etcd/server"),
    LeafProfile("etcd-peer",                "etcd-ca",        MEMBER,                          ( ),            SERVER_CLIENT, etcd_member_sans, file="pki/etcd/peer"),
    LeafProfile("etcd-healthcheck-client",  "etcd-ca",        "kube-etcd-healthcheck-client",  ( ),            CLIENT,        no_sans,          file="pki/etcd/healthcheck-client", releases=SPLIT_AND_CONTRACT),
    LeafProfile("etcd-healthcheck-client",  "etcd-ca",        "kube-etcd-healthcheck-client",  MASTERS,        CLIENT,        no_sans,          file="pki/etcd/healthcheck-client", releases=ONLY_BEFORE_SPLIT),
    LeafProfile("admin",                    "ca",             "kubernetes-admin",              MASTERS,        CLIENT,        no_sans,          kubeconfig="admin.conf", releases=BEFORE_SPLIT),
    LeafProfile("admin",                    "ca",             "kubernetes-admin",              CLUSTER_ADMINS, CLIENT,        no_sans,          kubeconfig="admin.conf", releases=SINCE_SPLIT),
    LeafProfile("super-admin",              "ca",             "kubernetes-super-admin",        MASTERS,        CLIENT,        no_sans,          kubeconfig="super-admin.conf", releases=SINCE_SPLIT, where=Where.FIRST_MEMBER),
    LeafProfile("kube-scheduler",           "ca",             "system:kube-scheduler",         ( ),            CLIENT,        no_sans,          kubeconfig="scheduler.conf", local=True),
    LeafProfile("kube-controller-manager",  "ca",             "system:kube-controller-manager", ( ),           CLIENT,        no_sans,          kubeconfig="controller-manager.conf", local=True),
    LeafProfile("kube-proxy",               "ca",             "system:kube-proxy",             ( ),            CLIENT,        no_sans,          kubeconfig="kube-proxy.conf"),
    LeafProfile("kubelet",                  "ca",             f"system:node:{MEMBER}",         NODES,          CLIENT,        no_sans,          kubeconfig="kubelet.conf", releases=Releases(before=KUBELET_LOCAL), where=Where.RENDER_ONLY),
    LeafProfile("kubelet",                  "ca",             f"system:node:{MEMBER}",         NODES,          CLIENT,        no_sans,          kubeconfig="kubelet.conf", local=True, releases=Releases(since=KUBELET_LOCAL, contract=False), where=Where.RENDER_ONLY),
)

# The service-account signing key pair: not a certificate; kubeadm writes pki/sa.key and pki/sa.pub.
SERVICE_ACCOUNT = "sa"
SERVICE_ACCOUNT_FILES = ("pki/sa.key", "pki/sa.pub")

CA_BY_COMPONENT = {ca.component: ca for ca in CERTIFICATE_AUTHORITIES}


class PlannedLeaf(NamedTuple):
    """One concrete certificate a spec wants: its component name, row and identity."""

    component: str
    profile: LeafProfile
    identity: Identity
    member: str | None = None

    @property
    def issuer(self) -> str:
        return self.profile.issuer


def profile_of(component: str) -> LeafProfile | None:
    """The row of a leaf's Secret component (``etcd-server-m0`` is the ``etcd-server`` row's); None for a
    CA, ``sa`` or an unknown name."""
    for profile in LEAVES:
        if component == profile.component or (profile.per_member and component.startswith(f"{profile.component}-")):
            return profile
    return None


def is_component(name: str) -> bool:
    """Whether ``name`` is a Secret component of some spec: a CA, ``sa``, or a leaf of a row (of any
    release; a per-member row's with any member)."""
    return name in CA_BY_COMPONENT or name == SERVICE_ACCOUNT or profile_of(name) is not None


def issuer_of(component: str) -> str | None:
    """The CA that issues a component's certificate, from its row; None for a CA or an unknown name."""
    profile = profile_of(component)
    return profile.issuer if profile else None


def rows(release: Release | None) -> tuple[LeafProfile, ...]:
    """The leaf rows kubeadm issues for ``release`` (None: the contract's)."""
    return tuple(profile for profile in LEAVES if profile.releases.include(release))


def plan(spec: Spec, members: list[str] | None = None, rendering: bool = False) -> list[PlannedLeaf]:
    """The leaves ``spec`` wants, in table order. ``members`` limits the rows to those etcd members'
    files (``render`` and an agent write one member's): a per-member row's leaf for each, and a
    first-member row's only with the first. ``rendering`` adds the rows no Secret holds (render's)."""
    planned = []
    first = spec.first_member.name
    for profile in rows(spec.kubernetes_version):
        if profile.where is Where.RENDER_ONLY and not rendering:
            continue
        if profile.where is Where.FIRST_MEMBER and members is not None and first not in members:
            continue
        if not profile.per_member:
            planned.append(PlannedLeaf(profile.component, profile, _identity(profile, spec, None)))
            continue
        for member in spec.etcd_members:
            if members is None or member.name in members:
                planned.append(PlannedLeaf(f"{profile.component}-{member.name}", profile,
                                           _identity(profile, spec, member), member.name))
    return planned


def _identity(profile: LeafProfile, spec: Spec, member: EtcdMember | None) -> Identity:
    dns_names, ips = profile.sans(spec, member)
    return Identity(
        common_name=profile.common_name_of(member),
        organizations=profile.organizations,
        usages=profile.usages,
        dns_names=dns_names,
        ips=ips,
    )


def _add_name(name: str, dns: list[str], ips: list[IPAddress]) -> None:
    try:
        ips.append(ipaddress.ip_address(name))
    except ValueError:
        dns.append(name)


def _unique(items: list) -> tuple:
    return tuple(dict.fromkeys(items))
