"""The ClusterPKI spec: parsed from the document a user applies, defaulted and validated in one place.

Both ``clusterpki render`` and the operator build a :class:`Spec` through :func:`from_resource`,
so a spec is judged the same way offline and in a cluster. Validation collects every problem
before failing, so a user fixes a file in one pass.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, NamedTuple

from clusterpki.pki import durations

API_GROUP = "pki.clusterpki.dev"
VERSION = "v1alpha1"
API_VERSION = f"{API_GROUP}/{VERSION}"
KIND = "ClusterPKI"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A CA rotation's phases last this long unless the annotation says otherwise.
GRACE_ANNOTATION = f"{API_GROUP}/rotate-ca-grace"
DEFAULT_GRACE = timedelta(hours=24)
# After an ``sa`` rotation the old public key stays in ``sa.pub`` this long, so that tokens it signed
# before the switch keep working until they expire: the longest lifetime the cluster grants
# (kube-apiserver's --service-account-max-token-expiration, or what clients request; 1h is
# TokenRequest's default).
TOKEN_LIFETIME_ANNOTATION = f"{API_GROUP}/max-token-lifetime"
DEFAULT_TOKEN_LIFETIME = timedelta(hours=1)
# The longest validity: "now + validity" must stay a date that X.509 and Python can hold, for every
# renewal to come.
MAX_VALIDITY = timedelta(hours=876000)  # 100 years
# A CA is rotated in the last third of its validity, and the three CAs, issued together, enter that
# window together and rotate one after another, each in two grace periods (Preparing, Rotating) plus
# one to spare: the last third of validity.ca must hold nine grace periods, or the last CA expires
# before its turn.
ROTATION_ROOM = 9

# The ClusterPKI name and the component (e.g. "etcd-server-<member>") are label values: 63 at most.
_LABEL_VALUE_MAX = 63
_MEMBER_NAME_MAX = _LABEL_VALUE_MAX - len("etcd-server-")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


class KeyAlgorithm(str, enum.Enum):
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    RSA_4096 = "RSA-4096"
    ECDSA_P256 = "ECDSA-P256"
    ECDSA_P384 = "ECDSA-P384"

    @property
    def is_rsa(self) -> bool:
        return self.value.startswith("RSA-")


class SecretRetention(str, enum.Enum):
    RETAIN = "Retain"
    DELETE = "Delete"


DEFAULT_BIND_PORT = 6443  # kubeadm's localAPIEndpoint.bindPort

RELEASE_PATTERN = r"v?(1)\.(0|[1-9][0-9]?)(\.(0|[1-9][0-9]*))?"  # spec.kubernetesVersion, as the CRD checks it too
_RELEASE = re.compile(RELEASE_PATTERN)


class Release(NamedTuple):
    """A Kubernetes minor release, as ``spec.kubernetesVersion`` gives it: the certificate identities
    follow kubeadm's for that release (:mod:`clusterpki.pki.catalog`)."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"v{self.major}.{self.minor}"

    @classmethod
    def parse(cls, text: str) -> Release:
        """``v1.29``, ``1.29`` or ``v1.29.3``; ValueError for anything else."""
        found = _RELEASE.fullmatch(text)
        if found is None:
            raise ValueError(f"{text!r} is not a Kubernetes version such as v1.30 or v1.30.2")
        return cls(int(found.group(1)), int(found.group(2)))


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def https_url(host: str, port: int) -> str:
    return f"https://{host_port(host, port)}"


class EtcdMember(NamedTuple):
    """A control-plane member: its etcd member's names, and where its own kube-apiserver listens, if given
    (kubeadm's ``localAPIEndpoint``: its certificate then names the member, and the member's
    kube-controller-manager and kube-scheduler reach their own apiserver there, as kubeadm's do)."""

    name: str
    dns_names: tuple[str, ...]
    ips: tuple[IPAddress, ...]
    advertise_address: IPAddress | None = None
    bind_port: int = DEFAULT_BIND_PORT

    @property
    def local_url(self) -> str | None:
        """``https://advertiseAddress:bindPort``, IPv6 bracketed; None when no address is given."""
        return https_url(str(self.advertise_address), self.bind_port) if self.advertise_address else None


NODE = "{node}"  # in a serving DNS name pattern: the node's name
DEFAULT_SERVING_DNS_NAMES = (NODE,)
DEFAULT_MAX_SERVING_NAMES = 8


class ServingNames(NamedTuple):
    """Bounds on the names a kubelet's serving certificate may carry, beyond being its Node's."""

    ip_ranges: tuple[IPNetwork, ...] = ()  # none: any address the Node reports
    dns_names: tuple[str, ...] = DEFAULT_SERVING_DNS_NAMES  # patterns: {node} is its name, * one label
    max_names: int = DEFAULT_MAX_SERVING_NAMES


class KubeletPolicy(NamedTuple):
    approve_client_csrs: bool = True
    approve_serving_csrs: bool = True
    sign_csrs: bool = False
    serving_names: ServingNames = ServingNames()


class Spec(NamedTuple):
    """A defaulted, validated ClusterPKI spec. Build it with :func:`from_resource`."""

    name: str
    cluster_domain: str = "cluster.local"
    service_cidr: IPNetwork = ipaddress.ip_network("10.96.0.0/12")
    endpoint_host: str = "127.0.0.1"
    endpoint_port: int = 6443
    cert_sans: tuple[str, ...] = ()
    etcd_members: tuple[EtcdMember, ...] = (
        EtcdMember("etcd-0", ("localhost",), (ipaddress.ip_address("127.0.0.1"),)),
    )
    key_algorithm: KeyAlgorithm = KeyAlgorithm.ECDSA_P256
    ca_validity: timedelta = timedelta(hours=87600)
    cert_validity: timedelta = timedelta(hours=8760)
    renew_before: timedelta = timedelta(hours=8760) / 3
    kubelet: KubeletPolicy = KubeletPolicy()
    secret_retention: SecretRetention = SecretRetention.RETAIN
    kubernetes_version: Release | None = None  # None: the contract's identities (catalog.Releases)
    rotation_grace: timedelta = DEFAULT_GRACE  # from the annotation GRACE_ANNOTATION
    token_lifetime: timedelta = DEFAULT_TOKEN_LIFETIME  # from the annotation TOKEN_LIFETIME_ANNOTATION

    @property
    def ca_renew_before(self) -> timedelta:
        """A CA enters its renewal window (and is rotated) in the last third of ``validity.ca``."""
        return self.ca_validity / 3

    @property
    def first_service_ip(self) -> IPAddress:
        """The kubernetes.default Service's ClusterIP: the first address after the network's."""
        return self.service_cidr.network_address + 1

    @property
    def server_url(self) -> str:
        """Where every kubeconfig points: ``https://host:port``, with IPv6 hosts bracketed."""
        return https_url(self.endpoint_host, self.endpoint_port)

    @property
    def first_member(self) -> EtcdMember:
        """kubeadm init's node: the one member whose files include what ``kubeadm join`` does not write."""
        return self.etcd_members[0]

    def member(self, name: str | None) -> EtcdMember:
        """The named etcd member, or the first one when ``name`` is None."""
        if name is None:
            return self.first_member
        for member in self.etcd_members:
            if member.name == name:
                return member
        known = ", ".join(m.name for m in self.etcd_members)
        raise LookupError(f"etcd member {name!r} is not in spec.etcd.members ({known})")


class FieldError(NamedTuple):
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """One or more invalid fields; ``str()`` lists them all."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def from_resource(body: Mapping[str, Any]) -> Spec:
    """Build a Spec from a whole ClusterPKI object (``apiVersion``, ``kind``, ``metadata``, ``spec``)."""
    errors: list[FieldError] = []
    if body.get("apiVersion") != API_VERSION:
        errors.append(FieldError("apiVersion", f"must be {API_VERSION!r}, not {body.get('apiVersion')!r}"))
    if body.get("kind") != KIND:
        errors.append(FieldError("kind", f"must be {KIND!r}, not {body.get('kind')!r}"))
    metadata = body.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = {}
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        errors.append(FieldError("metadata.name", "is required"))
        name = "invalid"
    elif not _is_k8s_name(name) or len(name) > _LABEL_VALUE_MAX:
        errors.append(FieldError("metadata.name", f"{name!r} is not a DNS name of at most "
                                                  f"{_LABEL_VALUE_MAX} characters"))
    raw_spec = body.get("spec")
    if raw_spec is None:
        raw_spec = {}
    if not isinstance(raw_spec, Mapping):
        errors.append(FieldError("spec", "must be a mapping"))
        raw_spec = {}
    annotations = metadata.get("annotations") or {}
    grace = _annotated_duration(annotations, GRACE_ANNOTATION, DEFAULT_GRACE, timedelta(seconds=1), MAX_VALIDITY,
                                errors)
    token_lifetime = _annotated_duration(annotations, TOKEN_LIFETIME_ANNOTATION, DEFAULT_TOKEN_LIFETIME,
                                         timedelta(0), MAX_VALIDITY, errors)
    try:
        spec = from_spec(name, raw_spec, grace)
    except SpecError as exc:
        errors.extend(exc.errors)
    if errors:
        raise SpecError(errors)
    return spec._replace(token_lifetime=token_lifetime)


def _annotated_duration(annotations: Mapping[str, str], key: str, default: timedelta, shortest: timedelta,
                        longest: timedelta, errors: list[FieldError]) -> timedelta:
    """A duration from an annotation, within bounds; the default (and an error) when it is not."""
    if key not in annotations:
        return default
    path, text = f"metadata.annotations[{key}]", annotations[key]
    try:
        value = durations.parse(text)
    except ValueError as exc:
        errors.append(FieldError(path, str(exc)))
        return default
    if value < shortest:
        errors.append(FieldError(path, f"{text!r} is shorter than {durations.format_go(shortest)}"))
        return default
    if value > longest:
        errors.append(FieldError(path, f"{text!r} is longer than 100 years ({durations.format_go(longest)})"))
        return default
    return value


def from_spec(name: str, raw: Mapping[str, Any], grace: timedelta = DEFAULT_GRACE) -> Spec:
    """Default and validate the ``spec`` mapping of a ClusterPKI named ``name``, whose CA rotations
    take ``grace`` per phase."""
    return _SpecReader(name, raw, grace).read()


class _SpecReader:
    """Reads one spec mapping field by field, collecting every error instead of stopping at the first."""

    # The fields of each mapping, by path ("[]": a list's items); clusterpki.kube.crd's table gives the CRD the
    # same fields (a unit test holds them equal).
    _KNOWN = {
        "spec": {
            "clusterDomain", "serviceCIDR", "controlPlaneEndpoint", "apiServer", "etcd",
            "keyAlgorithm", "validity", "renewBefore", "kubelet", "secretRetention", "kubernetesVersion",
        },
        "spec.apiServer": {"certSANs"},
        "spec.etcd": {"members"},
        "spec.etcd.members[]": {"name", "dnsNames", "ips", "advertiseAddress"},
        "spec.validity": {"ca", "certificate"},
        "spec.kubelet": {"approveClientCSRs", "approveServingCSRs", "signCSRs", "servingNames"},
        "spec.kubelet.servingNames": {"ipRanges", "dnsNames", "maxNames"},
    }

    def __init__(self, name: str, raw: Mapping[str, Any], grace: timedelta) -> None:
        self.name = name
        self.raw = raw
        self.grace = grace
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> None:
        self.errors.append(FieldError(path, message))

    def read(self) -> Spec:
        defaults = Spec(name=self.name)
        self._check_unknown("spec", self.raw)
        api_server = self._mapping("spec.apiServer", self.raw.get("apiServer"))
        etcd = self._mapping("spec.etcd", self.raw.get("etcd"))
        validity = self._mapping("spec.validity", self.raw.get("validity"))
        kubelet = self._mapping("spec.kubelet", self.raw.get("kubelet"))

        cluster_domain = self._cluster_domain(defaults.cluster_domain)
        service_cidr = self._service_cidr(defaults.service_cidr)
        host, port = self._endpoint(defaults.endpoint_host, defaults.endpoint_port)
        cert_sans = self._cert_sans(api_server.get("certSANs"))
        members = self._members(etcd.get("members"), defaults.etcd_members)
        key_algorithm = self._enum("spec.keyAlgorithm", KeyAlgorithm, self.raw.get("keyAlgorithm"),
                                   defaults.key_algorithm)
        ca_validity = self._duration("spec.validity.ca", validity.get("ca"), defaults.ca_validity)
        cert_validity = self._duration("spec.validity.certificate", validity.get("certificate"),
                                       defaults.cert_validity)
        if cert_validity > ca_validity:
            self.fail("spec.validity.certificate",
                      f"{durations.format_go(cert_validity)} is longer than spec.validity.ca "
                      f"({durations.format_go(ca_validity)}); a certificate cannot outlive its CA")
        room = ROTATION_ROOM * self.grace
        if ca_validity / 3 < room:
            self.fail("spec.validity.ca",
                      f"{durations.format_go(ca_validity)} leaves {durations.format_go(ca_validity / 3)} (its last "
                      f"third) to rotate the CAs, which takes {durations.format_go(room)}: three CAs, one after "
                      f"another, each in two grace periods of {durations.format_go(self.grace)} "
                      f"({GRACE_ANNOTATION}) and one to spare; make it at least "
                      f"{durations.format_go(3 * room)} or shorten the grace period")
        renew_before = self._duration("spec.renewBefore", self.raw.get("renewBefore"), cert_validity / 3)
        if renew_before >= cert_validity:
            self.fail("spec.renewBefore",
                      f"{durations.format_go(renew_before)} must be shorter than spec.validity.certificate "
                      f"({durations.format_go(cert_validity)})")
        kubelet_policy = KubeletPolicy(
            approve_client_csrs=self._bool("spec.kubelet.approveClientCSRs",
                                           kubelet.get("approveClientCSRs"), True),
            approve_serving_csrs=self._bool("spec.kubelet.approveServingCSRs",
                                            kubelet.get("approveServingCSRs"), True),
            sign_csrs=self._bool("spec.kubelet.signCSRs", kubelet.get("signCSRs"), False),
            serving_names=self._serving_names(kubelet.get("servingNames")),
        )
        retention = self._enum("spec.secretRetention", SecretRetention, self.raw.get("secretRetention"),
                               defaults.secret_retention)
        release = self._release(self.raw.get("kubernetesVersion"))
        if self.errors:
            raise SpecError(self.errors)
        return Spec(
            name=self.name, cluster_domain=cluster_domain, service_cidr=service_cidr,
            endpoint_host=host, endpoint_port=port, cert_sans=cert_sans, etcd_members=members,
            key_algorithm=key_algorithm, ca_validity=ca_validity, cert_validity=cert_validity,
            renew_before=renew_before, kubelet=kubelet_policy, secret_retention=retention,
            kubernetes_version=release, rotation_grace=self.grace,
        )

    # -- field readers ---------------------------------------------------------------------------

    def _check_unknown(self, path: str, value: Mapping[str, Any]) -> None:
        for key in value:
            if key not in self._KNOWN[path]:
                self.fail(f"{path}.{key}", "is not a known field")

    def _mapping(self, path: str, value: Any) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(path, "must be a mapping")
            return {}
        self._check_unknown(path, value)
        return value

    def _string(self, path: str, value: Any) -> str | None:
        if not isinstance(value, str):
            self.fail(path, f"must be a string, not {value!r}")
            return None
        return value

    def _cluster_domain(self, default: str) -> str:
        value = self.raw.get("clusterDomain")
        if value is None:
            return default
        text = self._string("spec.clusterDomain", value)
        if text is not None and not _is_dns_name(text):
            self.fail("spec.clusterDomain", f"{text!r} is not a DNS domain")
        return text or default

    def _service_cidr(self, default: IPNetwork) -> IPNetwork:
        value = self.raw.get("serviceCIDR")
        if value is None:
            return default
        text = self._string("spec.serviceCIDR", value)
        if text is None:
            return default
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            self.fail("spec.serviceCIDR", f"{text!r} is not a CIDR")
            return default
        if "/" not in text:
            self.fail("spec.serviceCIDR", f"{text!r} is not a CIDR: it has no prefix length")
        elif network.num_addresses < 2:
            self.fail("spec.serviceCIDR", f"{text!r} has no room for a service IP")
        return network

    def _endpoint(self, default_host: str, default_port: int) -> tuple[str, int]:
        path = "spec.controlPlaneEndpoint"
        value = self.raw.get("controlPlaneEndpoint")
        if value is None:
            return default_host, default_port
        text = self._string(path, value)
        if text is None:
            return default_host, default_port
        return self._host_port(path, text, default_host, default_port)

    def _host_port(self, path: str, text: str, default_host: str, default_port: int) -> tuple[str, int]:
        """``host[:port]``, an IPv6 host bracketed when a port follows."""
        host, port_text = text, None
        if text.startswith("["):  # [IPv6]:port or [IPv6]
            inside, _, rest = text[1:].partition("]")
            host = inside
            if rest:
                if not rest.startswith(":"):
                    self.fail(path, f"{text!r} is not host[:port]")
                    return default_host, default_port
                port_text = rest[1:]
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        if not host:
            self.fail(path, f"{text!r} has no host")
            return default_host, default_port
        if not _is_ip(host) and not _is_dns_name(host):
            self.fail(path, f"host {host!r} is neither an IP address nor a DNS name")
        port = default_port
        if port_text is not None:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                self.fail(path, f"port {port_text!r} is not a number from 1 to 65535")
            else:
                port = int(port_text)
        return host, port

    def _cert_sans(self, value: Any) -> tuple[str, ...]:
        path = "spec.apiServer.certSANs"
        if value is None:
            return ()
        if not isinstance(value, list):
            self.fail(path, "must be a list")
            return ()
        sans = []
        for index, item in enumerate(value):
            text = self._string(f"{path}[{index}]", item)
            if text is None:
                continue
            if not _is_ip(text) and not _is_dns_name(text, wildcard=True):
                self.fail(f"{path}[{index}]", f"{text!r} is neither an IP address nor a DNS name")
                continue
            sans.append(text)
        return tuple(sans)

    def _members(self, value: Any, default: tuple[EtcdMember, ...]) -> tuple[EtcdMember, ...]:
        path = "spec.etcd.members"
        if value is None:
            return default
        if not isinstance(value, list) or not value:
            self.fail(path, "must be a non-empty list")
            return default
        members: list[EtcdMember] = []
        seen: set[str] = set()
        for index, item in enumerate(value):
            here = f"{path}[{index}]"
            if not isinstance(item, Mapping):
                self.fail(here, "must be a mapping with name, dnsNames and ips")
                continue
            for key in item:
                if key not in self._KNOWN["spec.etcd.members[]"]:
                    self.fail(f"{here}.{key}", "is not a known field")
            name = item.get("name")
            if not isinstance(name, str) or not name:
                self.fail(f"{here}.name", "is required")
                continue
            if not _is_dns_label(name):
                self.fail(f"{here}.name", f"{name!r} is not a DNS label (lower-case letters, digits and '-')")
            elif len(name) > _MEMBER_NAME_MAX:
                self.fail(f"{here}.name", f"{name!r} is longer than {_MEMBER_NAME_MAX} characters")
            if name in seen:
                self.fail(f"{here}.name", f"{name!r} is a duplicate member name")
            seen.add(name)
            dns_names = self._string_list(f"{here}.dnsNames", item.get("dnsNames"), _is_member_dns, "a DNS name")
            ips = self._string_list(f"{here}.ips", item.get("ips"), _is_ip, "an IP address")
            address, port = self._advertised(f"{here}.advertiseAddress", item.get("advertiseAddress"))
            members.append(EtcdMember(name, tuple(dns_names), tuple(ipaddress.ip_address(i) for i in ips),
                                      address, port))
        return tuple(members)

    def _advertised(self, path: str, value: Any) -> tuple[IPAddress | None, int]:
        """A member's ``advertiseAddress``: ``IP[:port]`` (``[IPv6]:port``), the port 6443 by default."""
        if value is None:
            return None, DEFAULT_BIND_PORT
        text = self._string(path, value)
        if text is None:
            return None, DEFAULT_BIND_PORT
        host, port = self._host_port(path, text, "", DEFAULT_BIND_PORT)
        if not _is_ip(host):
            if host and _is_dns_name(host):  # anything else _host_port has said
                self.fail(path, f"{host!r} is not an IP address (kubeadm's advertiseAddress is one)")
            return None, DEFAULT_BIND_PORT
        return ipaddress.ip_address(host), port

    def _string_list(self, path: str, value: Any, valid: Any, what: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(path, "must be a list")
            return []
        good = []
        for index, item in enumerate(value):
            text = self._string(f"{path}[{index}]", item)
            if text is None:
                continue
            if not valid(text):
                self.fail(f"{path}[{index}]", f"{text!r} is not {what}")
                continue
            good.append(text)
        return good

    def _enum(self, path: str, kind: type[enum.Enum], value: Any, default: Any) -> Any:
        if value is None:
            return default
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(m.value for m in kind)
            self.fail(path, f"{value!r} is not one of {allowed}")
            return default

    def _duration(self, path: str, value: Any, default: timedelta) -> timedelta:
        if value is None:
            return default
        try:
            parsed = durations.parse(value)
        except ValueError as exc:
            self.fail(path, str(exc))
            return default
        if parsed < timedelta(seconds=1):
            self.fail(path, f"{value!r} is shorter than one second")
            return default
        if parsed > MAX_VALIDITY:
            self.fail(path, f"{value!r} is longer than 100 years ({durations.format_go(MAX_VALIDITY)})")
            return default
        return parsed

    def _serving_names(self, value: Any) -> ServingNames:
        path = "spec.kubelet.servingNames"
        found = self._mapping(path, value)
        ranges = [ipaddress.ip_network(c, strict=False) for c in
                  self._string_list(f"{path}.ipRanges", found.get("ipRanges"), _is_cidr, "a CIDR")]
        patterns = self._string_list(f"{path}.dnsNames", found.get("dnsNames"), _is_name_pattern,
                                     "a DNS name, with {node} for the node's name and * for one label")
        most = found.get("maxNames", DEFAULT_MAX_SERVING_NAMES)
        if not isinstance(most, int) or isinstance(most, bool) or not 1 <= most <= 100:
            self.fail(f"{path}.maxNames", f"{most!r} is not a number from 1 to 100")
            most = DEFAULT_MAX_SERVING_NAMES
        dns = tuple(p.lower() for p in patterns) if found.get("dnsNames") is not None else DEFAULT_SERVING_DNS_NAMES
        return ServingNames(tuple(ranges), dns, most)

    def _release(self, value: Any) -> Release | None:
        path = "spec.kubernetesVersion"
        if value is None:
            return None
        text = self._string(path, value)
        if text is None:
            return None
        try:
            return Release.parse(text)
        except ValueError as exc:
            self.fail(path, str(exc))
            return None

    def _bool(self, path: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, not {value!r}")
            return default
        return value


def _is_dns_label(text: str) -> bool:
    """An RFC 1123 label, as Kubernetes names its objects: lower-case, at most 63 characters."""
    return len(text) <= 63 and _DNS_LABEL.fullmatch(text) is not None


def _is_dns_name(text: str, wildcard: bool = False) -> bool:
    """An RFC 1123 subdomain whose last label is not all digits (no top-level domain is, so
    ``300.1.1.1`` or ``1.2.3`` is a mistyped IP address, not a name). DNS SANs compare
    case-insensitively, so any case is accepted. With ``wildcard``, a leading ``*.`` label is allowed
    too, as in certificate SANs."""
    if wildcard and text.startswith("*."):
        text = text[2:]
    labels = text.lower().split(".")
    return 0 < len(text) <= 253 and all(_is_dns_label(label) for label in labels) and not labels[-1].isdigit()


def _is_k8s_name(text: str) -> bool:
    return 0 < len(text) <= 253 and all(_is_dns_label(label) for label in text.split("."))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return "/" in text


def _is_name_pattern(text: str) -> bool:
    """A DNS name where ``{node}`` stands for the node's name and ``*`` for exactly one label."""
    example = text.replace(NODE, "node").split(".")
    return "{" not in "".join(example) and _is_dns_name(".".join("x" if label == "*" else label for label in example))


def _is_member_dns(text: str) -> bool:
    return _is_dns_name(text) and not _is_ip(text)
