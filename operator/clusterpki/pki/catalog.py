"""The catalog: every certificate of a control-plane PKI, in one table, as kubeadm's certlist has it.

Read a certificate's CN, O, usages, SANs, issuer, kubeadm file and kubeconfig off its row below.
:func:`plan` turns the table and a :class:`Spec` into the concrete certificates that spec wants.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import NamedTuple

from clusterpki.pki.certificates import CLIENT_AUTH, SERVER_AUTH, Identity
from clusterpki.pki.spec import EtcdMember, IPAddress, Spec

SERVER = (SERVER_AUTH,)
CLIENT = (CLIENT_AUTH,)
SERVER_CLIENT = (SERVER_AUTH, CLIENT_AUTH)
MASTERS = ("system:masters",)
MEMBER = "<etcd member name>"  # stands for the member's name in the CN column

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

    @property
    def per_member(self) -> bool:
        return self.common_name == MEMBER


CERTIFICATE_AUTHORITIES: tuple[CAProfile, ...] = (
    #          component         CN                kubeadm file
    CAProfile("ca",              "kubernetes",     "pki/ca",              single_file=True),
    CAProfile("etcd-ca",         "etcd-ca",        "pki/etcd/ca"),
    CAProfile("front-proxy-ca",  "front-proxy-ca", "pki/front-proxy-ca"),
)

LEAVES: tuple[LeafProfile, ...] = (
    #            component                   issuer            CN                               O        usages         SANs              kubeadm file / kubeconfig
    LeafProfile("apiserver",                "ca",             "kube-apiserver",                ( ),     SERVER,        apiserver_sans,   file="pki/apiserver"),
    LeafProfile("apiserver-kubelet-client", "ca",             "kube-apiserver-kubelet-client", MASTERS, CLIENT,        no_sans,          file="pki/apiserver-kubelet-client"),
    LeafProfile("apiserver-etcd-client",    "etcd-ca",        "kube-apiserver-etcd-client",    ( ),     CLIENT,        no_sans,          file="pki/apiserver-etcd-client"),
    LeafProfile("front-proxy-client",       "front-proxy-ca", "front-proxy-client",            ( ),     CLIENT,        no_sans,          file="pki/front-proxy-client"),
    LeafProfile("etcd-server",              "etcd-ca",        MEMBER,                          ( ),     SERVER_CLIENT, etcd_member_sans, file="pki/etcd/server"),
    LeafProfile("etcd-peer",                "etcd-ca",        MEMBER,                          ( ),     SERVER_CLIENT, etcd_member_sans, file="pki/etcd/peer"),
    LeafProfile("etcd-healthcheck-client",  "etcd-ca",        "kube-etcd-healthcheck-client",  ( ),     CLIENT,        no_sans,          file="pki/etcd/healthcheck-client"),
    LeafProfile("admin",                    "ca",             "kubernetes-admin",              MASTERS, CLIENT,        no_sans,          kubeconfig="admin.conf"),
    LeafProfile("kube-scheduler",           "ca",             "system:kube-scheduler",         ( ),     CLIENT,        no_sans,          kubeconfig="scheduler.conf", local=True),
    LeafProfile("kube-controller-manager",  "ca",             "system:kube-controller-manager", ( ),    CLIENT,        no_sans,          kubeconfig="controller-manager.conf", local=True),
    LeafProfile("kube-proxy",               "ca",             "system:kube-proxy",             ( ),     CLIENT,        no_sans,          kubeconfig="kube-proxy.conf"),
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


def issuer_of(component: str) -> str | None:
    """The CA that issues a component's certificate, from its row; None for a CA or an unknown name."""
    profile = profile_of(component)
    return profile.issuer if profile else None


def plan(spec: Spec, members: list[str] | None = None) -> list[PlannedLeaf]:
    """The leaves ``spec`` wants, in table order. ``members`` limits per-member rows to those etcd
    members (``render`` writes one member's pair); None means every member."""
    planned = []
    for profile in LEAVES:
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
        common_name=member.name if member is not None else profile.common_name,
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
