"""``clusterpki import``: read an existing kubeadm PKI (``/etc/kubernetes``) and derive the ClusterPKI that
takes it over. The spec comes from what the certificates hold; the CAs and the service-account key are
taken as they are, and so is every leaf that is valid for that spec. The rest is left to the operator.

Pure: files in, a plan out. The CLI stores the plan (:mod:`clusterpki.kube.takeover`).
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from cryptography import x509

from clusterpki.errors import UserError
from clusterpki.kubeadm import layout
from clusterpki.pki import documents
from clusterpki.pki import catalog, certificates, durations, engine, keys, kubeconfig
from clusterpki.pki import spec as spec_model
from clusterpki.pki.certificates import KeyPair

ADMIN_CONF = "admin.conf"
SUPER_ADMIN_CONF = "super-admin.conf"
APISERVER_MANIFEST = "manifests/kube-apiserver.yaml"
CONTROLLER_MANAGER_CONF = "controller-manager.conf"
APISERVER = "pki/apiserver"
ETCD_SERVER, ETCD_PEER = "pki/etcd/server", "pki/etcd/peer"
# What a directory must hold to be taken over: without these, the spec cannot be derived, or a CA or the
# service-account key would have to be made anew, which would break the running cluster.
REQUIRED = (
    *(f"{ca.file}.{ext}" for ca in catalog.CERTIFICATE_AUTHORITIES for ext in ("crt", "key")),
    catalog.SERVICE_ACCOUNT_FILES[0], f"{APISERVER}.crt", f"{APISERVER}.key", f"{ETCD_SERVER}.crt", ADMIN_CONF,
)
IN_CLUSTER_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
SERVICE_DOMAIN = "kubernetes.default.svc."
LOOPBACK_NAMES, LOOPBACK_IPS = set(catalog.LOOPBACK_NAMES), set(catalog.LOOPBACK_IPS)  # in every etcd certificate
KUBEADM_CERT_VALIDITY = timedelta(hours=8760)  # kubeadm's CertificateValidity
HOUR, MINUTE = timedelta(hours=1), timedelta(minutes=1)


class Derived(NamedTuple):
    """One spec field, its value, and where it was read."""

    field: str
    value: str | None  # None: left unset
    source: str


class Takeover(NamedTuple):
    """What ``clusterpki import`` would store: the ClusterPKI, and the PKI read from the directories."""

    resource: dict[str, Any]
    derived: list[Derived]
    pki: engine.PKI
    origin: dict[str, str]  # component taken over -> the file it was read from
    left: dict[str, str]  # leaf component the operator will issue -> why

    @property
    def taken(self) -> list[str]:
        """The components stored as read: the CAs, the service-account key and the valid leaves."""
        return list(self.origin)


class _Member(NamedTuple):
    name: str
    dns_names: list[str]
    ips: list[str]
    advertise: tuple[str, int] | None = None  # its apiserver's (IP, port), when its controller-manager.conf says

    @property
    def advertise_address(self) -> str | None:
        return spec_model.host_port(*self.advertise) if self.advertise else None

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "dnsNames": self.dns_names, "ips": self.ips,
                **({"advertiseAddress": self.advertise_address} if self.advertise else {})}


def derive(dirs: list[Path], name: str, namespace: str, now: datetime, service_cidr: str | None = None) -> Takeover:
    """Read kubeadm directories (one per control-plane node; they share the CAs and ``sa.key``, and each
    adds its etcd member) into the ClusterPKI ``namespace/name`` that takes them over.

    Raises UserError, before anything is written, for a directory that is missing files, holds an
    unusable CA, or disagrees with the others.
    """
    for directory in dirs:
        _check_complete(directory)
    first = dirs[0]
    cas = {ca.component: _read_ca(first, ca, now) for ca in catalog.CERTIFICATE_AUTHORITIES}
    sa_key = _read_key(first, catalog.SERVICE_ACCOUNT_FILES[0])
    for directory in dirs[1:]:
        _check_same_authorities(first, directory, cas, sa_key)
    _check_sa_pub(dirs, sa_key)

    server = _admin_server(first)
    members = [_member(directory, server) for directory in dirs]
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise UserError(f"the directories {', '.join(map(str, dirs))} hold the etcd members {', '.join(names)}: "
                        "each directory must be a different member")
    apiserver_certs = [_read_cert(d / f"{APISERVER}.crt") for d in dirs]
    apiserver = _read_pair(first, APISERVER)
    raw, derived = _spec(server, apiserver_certs, apiserver, cas["ca"].cert, members, service_cidr)
    leaves, unreadable, origin = _leaves(dirs, names)
    release = _release(dirs, leaves)
    if release.value is not None:
        raw["kubernetesVersion"] = release.value
    derived.append(release)
    resource = {"apiVersion": spec_model.API_VERSION, "kind": spec_model.KIND,
                "metadata": {"name": name, "namespace": namespace}, "spec": raw}
    try:
        pki_spec = spec_model.from_resource(resource)
    except spec_model.SpecError as exc:
        raise UserError(f"the ClusterPKI derived from {first} is not valid: {exc}") from None

    pki = engine.build(pki_spec, engine.Existing(cas=cas, leaves=leaves, service_account=sa_key), now)
    taken = {ca.component: f"{ca.file}.crt" for ca in catalog.CERTIFICATE_AUTHORITIES}
    taken[catalog.SERVICE_ACCOUNT] = catalog.SERVICE_ACCOUNT_FILES[0]
    left: dict[str, str] = {}
    for component in pki.planned:
        issue = pki.issued.get(component)
        reason = unreadable.get(component) or (issue.message if issue else None)
        if reason is None:
            taken[component] = origin[component]
        else:
            left[component] = reason
    return Takeover(resource, derived, pki, taken, left)


def _release(dirs: list[Path], leaves: dict[str, KeyPair]) -> Derived:
    """``kubernetesVersion``, such that the identities are those the leaves hold: kubeadm's release, from
    its apiserver's manifest, when its rows are those; else the contract's (unset), or the last release
    before kubeadm v1.29 or that release, whichever agrees with more of them. ``admin.conf`` must agree,
    and none may put a certificate into ``system:masters`` that is not there now: re-issuing would change
    who may do what. ``super-admin.conf``, if any, must be the first directory's: kubeadm init's node's,
    which its agent keeps current."""
    first = dirs[0]
    found = {c: certificates.identity_of(pair.cert).organizations for c, pair in leaves.items()}
    running = _running_release(first)
    candidates = [*([running[1]] if running else []), None, catalog.LAST_BEFORE_SPLIT, catalog.SUPER_ADMIN_SPLIT]
    agreeing = [(sum(found.get(c) == o for c, o in wanted.items()), -index, release)
                for index, release in enumerate(candidates)
                if _keeps_privileges(wanted := _organizations(release), found)]
    if not agreeing:
        groups = ", ".join(f"{c} O={','.join(found.get(c, ())) or '(none)'}" for c in sorted(found)
                           if c in ("admin", "apiserver-kubelet-client"))
        raise UserError(f"{first}: {groups} is what no kubeadm release issues together ({catalog.MASTERS[0]} "
                        f"before v1.29, {catalog.CLUSTER_ADMINS[0]} since): taking it over would re-issue a "
                        "certificate into another group; nothing was imported")
    release = max(agreeing, key=lambda a: a[:2])[2]
    elsewhere = [d for d in dirs[1:] if (d / SUPER_ADMIN_CONF).is_file()]
    if release is not None and release >= catalog.SUPER_ADMIN_SPLIT and elsewhere and \
            not (first / SUPER_ADMIN_CONF).is_file():
        raise UserError(f"{elsewhere[0] / SUPER_ADMIN_CONF} is kubeadm init's: give its directory first, whose "
                        "agent keeps it current; nothing was imported")
    source = f"the groups of {ADMIN_CONF} and the client certificates"
    seen = f" (its apiserver runs {running[0]}, per {APISERVER_MANIFEST})" if running else ""
    if running and release == running[1]:
        return Derived("kubernetesVersion", running[0], f"{first.name}/{APISERVER_MANIFEST}'s image; {source} agree")
    if release is None:
        return Derived("kubernetesVersion", None, f"{source} are the contract's{seen}")
    return Derived("kubernetesVersion", str(release), f"{source} are kubeadm's of {release}{seen}")


def _keeps_privileges(wanted: dict[str, tuple[str, ...]], found: dict[str, tuple[str, ...]]) -> bool:
    """Whether rows that want ``wanted`` keep admin.conf's group and put nothing into system:masters that
    is not there now."""
    escalated = [c for c, groups in wanted.items() if c in found and set(catalog.MASTERS) <= set(groups)
                 and not set(catalog.MASTERS) <= set(found[c])]
    return wanted.get("admin") == found.get("admin") and not escalated


def _organizations(release: spec_model.Release | None) -> dict[str, tuple[str, ...]]:
    """The O of each shared leaf, as the rows of ``release`` have it."""
    return {p.component: p.organizations for p in catalog.rows(release)
            if not p.per_member and p.where is not catalog.Where.RENDER_ONLY}


def _running_release(directory: Path) -> tuple[str, spec_model.Release] | None:
    """The release the apiserver's static pod runs, from its image tag; None when not found."""
    try:
        pod = documents.load((directory / APISERVER_MANIFEST).read_bytes())
        images = [c.get("image", "") for c in pod["spec"]["containers"]]
    except (OSError, documents.Error, KeyError, TypeError, AttributeError):
        return None
    for image in images:
        tag = image.split("@")[0].rpartition(":")[2]
        text = re.split(r"[-+]", tag)[0]  # v1.29.3-rc.0, v1.29.3+build: the release is v1.29
        try:
            return f"v{text.removeprefix('v')}", spec_model.Release.parse(text)
        except ValueError:
            continue
    return None


def _check_complete(directory: Path) -> None:
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory")
    missing = [path for path in REQUIRED if not (directory / path).is_file()]
    if missing:
        raise UserError(f"{directory} is not a complete kubeadm PKI: {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} missing; nothing was imported")


def _read_ca(directory: Path, ca: catalog.CAProfile, now: datetime) -> KeyPair:
    pair = _read_pair(directory, ca.file)
    problem = engine.check_ca(pair, now)
    if problem:
        raise UserError(f"the {ca.component} CA in {directory / ca.file}.crt cannot be taken over: {problem}")
    return pair


def _read_pair(directory: Path, file: str) -> KeyPair:
    return KeyPair(_read_cert(directory / f"{file}.crt"), _read_key(directory, f"{file}.key"))


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return layout.read_cert(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"{path} cannot be read: {exc}") from None


def _read_key(directory: Path, file: str) -> keys.PrivateKey:
    try:
        return keys.load_private_pem((directory / file).read_bytes())
    except (ValueError, OSError) as exc:
        raise UserError(f"{directory / file} cannot be read: {exc}") from None


def _check_same_authorities(first: Path, other: Path, cas: dict[str, KeyPair], sa_key: keys.PrivateKey) -> None:
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        pair = _read_pair(other, ca.file)
        if pair.cert != cas[ca.component].cert or not keys.same_public_key(pair.key, cas[ca.component].key):
            raise UserError(f"{other / ca.file}.crt is not the {ca.component} CA of {first}: the directories "
                            "must come from one cluster")
    if not keys.same_public_key(_read_key(other, catalog.SERVICE_ACCOUNT_FILES[0]), sa_key):
        raise UserError(f"{other}/pki/sa.key is not the service-account key of {first}: the directories must "
                        "come from one cluster")


def _check_sa_pub(dirs: list[Path], sa_key: keys.PrivateKey) -> None:
    """``sa.pub`` is derived from ``sa.key``; one that holds another key is a sign of a mixed-up directory."""
    for directory in dirs:
        path = directory / catalog.SERVICE_ACCOUNT_FILES[1]
        if path.is_file() and path.read_bytes().strip() != keys.public_pem(sa_key).strip():
            raise UserError(f"{path} is not the public key of {directory}/pki/sa.key")


def _member(directory: Path, endpoint: str) -> _Member:
    """The etcd member a directory belongs to: the CN of its etcd server certificate, the names the
    server and peer certificates hold beyond the loopback ones, and where its own apiserver listens when
    its ``controller-manager.conf`` points there rather than at ``endpoint`` (kubeadm's localAPIEndpoint)."""
    server = _read_cert(directory / f"{ETCD_SERVER}.crt")
    identities = [certificates.identity_of(server)]
    peer = directory / f"{ETCD_PEER}.crt"
    if peer.is_file():
        identities.append(certificates.identity_of(_read_cert(peer)))
    name = identities[0].common_name
    dns = [d for i in identities for d in i.dns_names if d not in LOOPBACK_NAMES]
    ips = [str(ip) for i in identities for ip in i.ips if ip not in LOOPBACK_IPS]
    return _Member(name, list(dict.fromkeys(dns)), list(dict.fromkeys(ips)), _local_endpoint(directory, endpoint))


def _local_endpoint(directory: Path, endpoint: str) -> tuple[str, int] | None:
    """(IP, port) of the server in the directory's ``controller-manager.conf``, when it is an IP address
    and not ``endpoint``; None otherwise (no such file, or one that is not a plain kubeconfig)."""
    path = directory / CONTROLLER_MANAGER_CONF
    try:
        server, _, _ = kubeconfig.read(path.read_bytes())
    except (OSError, ValueError):
        return None
    url = urlsplit(server)
    if server == endpoint or url.scheme != "https" or not url.hostname:
        return None
    try:
        address = ipaddress.ip_address(url.hostname)
    except ValueError:
        return None
    return str(address), url.port or 443


def _admin_server(directory: Path) -> str:
    try:
        server, _, _ = kubeconfig.read((directory / ADMIN_CONF).read_bytes())
    except ValueError as exc:
        raise UserError(f"{directory / ADMIN_CONF} cannot be read: {exc}") from None
    return server


def _spec(server: str, apiserver_certs: list[x509.Certificate], apiserver: KeyPair, ca: x509.Certificate,
          members: list[_Member], service_cidr: str | None) -> tuple[dict[str, Any], list[Derived]]:
    """The spec the certificates were issued for, and a note of where each field comes from."""
    url = urlsplit(server)
    if url.scheme != "https" or not url.hostname:
        raise UserError(f"the server of {ADMIN_CONF}, {server!r}, is not an https:// URL")
    host, port = url.hostname, url.port or 443
    endpoint = spec_model.host_port(host, port)

    dns: list[str] = []
    ips: list[str] = []
    for cert in apiserver_certs:
        identity = certificates.identity_of(cert)
        dns += [d for d in identity.dns_names if d not in dns]
        ips += [str(ip) for ip in identity.ips if str(ip) not in ips]
    domains = [d.removeprefix(SERVICE_DOMAIN) for d in dns if d.startswith(SERVICE_DOMAIN)]
    if not domains:
        raise UserError(f"{APISERVER}.crt holds no {SERVICE_DOMAIN}<cluster domain> name, so the cluster domain "
                        "cannot be derived")
    network = _service_network(service_cidr, ips)
    first_ip = str(network.network_address + 1)
    advertised = {n for m in members if m.advertise for n in (m.name, m.advertise[0])}  # the catalog adds them
    cert_sans = [d for d in dns if d not in IN_CLUSTER_NAMES and d != f"{SERVICE_DOMAIN}{domains[0]}" and d != host
                 and d not in advertised]
    cert_sans += [ip for ip in ips if ip not in (first_ip, host) and ip not in advertised]

    algorithm = keys.algorithm_of(apiserver.key)
    if algorithm is None:
        raise UserError(f"{APISERVER}.key is a key a ClusterPKI cannot ask for; spec.keyAlgorithm takes "
                        f"{', '.join(a.value for a in spec_model.KeyAlgorithm)}")
    ca_validity = _span(ca)
    cert_validity, cert_source = _span(apiserver.cert), f"{APISERVER}.crt, its notAfter - notBefore"
    if apiserver.cert.not_valid_before_utc == ca.not_valid_before_utc and cert_validity % HOUR:
        cert_validity = KUBEADM_CERT_VALIDITY
        cert_source = f"kubeadm's default: {APISERVER}.crt starts when its CA does, so its span says nothing"

    raw = {
        "controlPlaneEndpoint": endpoint,
        "clusterDomain": domains[0],
        "serviceCIDR": str(network),
        "apiServer": {"certSANs": cert_sans},
        "etcd": {"members": [m.to_spec() for m in members]},
        "keyAlgorithm": algorithm.value,
        "validity": {"ca": durations.format_spec(ca_validity), "certificate": durations.format_spec(cert_validity)},
    }
    derived = [
        Derived("controlPlaneEndpoint", endpoint, f"the server of {ADMIN_CONF}"),
        Derived("clusterDomain", domains[0], f"{APISERVER}.crt ({SERVICE_DOMAIN}{domains[0]})"),
        Derived("serviceCIDR", str(network), f"{APISERVER}.crt holds {first_ip}, its first address"
                + ("" if service_cidr else " (kubeadm's default)")),
        Derived("apiServer.certSANs", ", ".join(cert_sans) or "(none)",
                f"{APISERVER}.crt, beyond the in-cluster names, the first service IP and the endpoint"),
        Derived("etcd.members", ", ".join(m.name for m in members), f"{ETCD_SERVER}.crt and {ETCD_PEER}.crt"),
        *([Derived("etcd.members[].advertiseAddress", ", ".join(f"{m.name}={m.advertise_address}" for m in members
                                                                if m.advertise),
                   f"each member's {CONTROLLER_MANAGER_CONF}, whose server is its own apiserver")]
          if any(m.advertise for m in members) else []),
        Derived("keyAlgorithm", algorithm.value, f"{APISERVER}.key"),
        Derived("validity.ca", raw["validity"]["ca"], "pki/ca.crt, its notAfter - notBefore"),
        Derived("validity.certificate", raw["validity"]["certificate"], cert_source),
    ]
    return raw, derived


def _service_network(given: str | None, ips: list[str]) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """The service CIDR: ``given``, or kubeadm's default; either way its first address must be a SAN of the
    apiserver, or Pods would no longer reach ``kubernetes.default``."""
    text = given or str(spec_model.Spec(name="default").service_cidr)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise UserError(f"--service-cidr {text!r} is not a CIDR") from None
    first = str(network.network_address + 1)
    if first not in ips:
        hint = "" if given else "; pass the cluster's service CIDR with --service-cidr"
        raise UserError(f"{APISERVER}.crt does not hold {first}, the first address of {text}{hint}")
    return network


def _span(cert: x509.Certificate) -> timedelta:
    """The validity a certificate was issued for: its span, less the usual 5-minute backdate when that
    gives whole hours (or whole minutes, for short test validities)."""
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    candidates = [span - certificates.BACKDATE, span] if span > certificates.BACKDATE else [span]
    for unit in (HOUR, MINUTE):
        for candidate in candidates:
            if not candidate % unit:
                return candidate
    return span


def _leaves(dirs: list[Path], members: list[str]) -> tuple[dict[str, KeyPair], dict[str, str], dict[str, str]]:
    """The leaves found: shared ones from the first directory, per-member ones from each member's. Also
    why unreadable ones cannot be used, and the file each came from."""
    leaves: dict[str, KeyPair] = {}
    unreadable: dict[str, str] = {}
    origin: dict[str, str] = {}
    for index, (directory, member) in enumerate(zip(dirs, members, strict=True)):
        for component, files in layout.pair_files(member).items():
            profile = catalog.profile_of(component)
            if profile is None or (index and not profile.per_member) or profile.where is catalog.Where.RENDER_ONLY:
                continue
            file = next(p.path for p in files if p.holds_certificate)
            origin[component] = str(directory / file) if len(dirs) > 1 else file
            try:
                pair = layout.read_pair(directory, files)
            except ValueError as exc:
                unreadable[component] = f"{file} cannot be read ({exc})"
                continue
            if pair is not None:
                leaves[component] = pair
    return leaves, unreadable, origin
