"""Kubelet CertificateSigningRequests: which ones the operator decides, the decision, and signing.

Only the two kubelet signers are ever considered. A CSR is approved only when every rule holds; a
definite violation is denied with a reason that names the rule. Pure functions: the Node index and
the policy come in, a :class:`Decision` goes out.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from clusterpki.pki import certificates, times
from clusterpki.pki.spec import IPAddress, KubeletPolicy

CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
SIGNERS = (CLIENT_SIGNER, SERVING_SIGNER)
NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
BOOTSTRAPPERS_GROUP = "system:bootstrappers"


class Verdict(str, enum.Enum):
    APPROVED = "Approved"
    DENIED = "Denied"
    PENDING = "Pending"  # the Node is not seen yet


APPROVED, DENIED, PENDING = Verdict.APPROVED, Verdict.DENIED, Verdict.PENDING


class Reason(str, enum.Enum):
    """Why a CSR is decided so: the condition's reason, and the metric's label."""

    AUTO_APPROVED = "AutoApproved"
    REQUESTER_NOT_A_NODE = "RequesterNotANode"
    INVALID_REQUEST = "InvalidRequest"
    SUBJECT_MISMATCH = "SubjectMismatch"
    BOOTSTRAP_FOR_EXISTING_NODE = "BootstrapForExistingNode"
    NODE_NAME_MISMATCH = "NodeNameMismatch"
    WEAK_KEY = "WeakKey"
    EXPIRATION_TOO_LONG = "ExpirationTooLong"
    USAGES_NOT_ALLOWED = "UsagesNotAllowed"
    SANS_NOT_ALLOWED = "SANsNotAllowed"
    NO_SANS = "NoSANs"
    SAN_TYPE_NOT_ALLOWED = "SANTypeNotAllowed"
    NODE_NOT_FOUND = "NodeNotFound"
    SAN_NOT_OWNED_BY_NODE = "SANNotOwnedByNode"
NODE_WAIT = timedelta(minutes=1)  # how long a serving CSR waits for its Node to be seen

_DS, _KE = "digital signature", "key encipherment"
ALLOWED_USAGES = {
    CLIENT_SIGNER: ({_DS, "client auth"}, {_DS, _KE, "client auth"}),
    SERVING_SIGNER: ({_DS, "server auth"}, {_DS, _KE, "server auth"}),
}
_HOSTNAME_TYPES = ("Hostname", "InternalDNS", "ExternalDNS")
_IP_TYPES = ("InternalIP", "ExternalIP")


class Node(NamedTuple):
    name: str
    hostnames: frozenset[str]
    ips: frozenset[IPAddress]


class Decision(NamedTuple):
    verdict: Verdict
    reason: Reason
    message: str


def node_of(body: Mapping[str, Any]) -> Node:
    """The addresses a Node reports, as the index keeps them."""
    addresses = (body.get("status") or {}).get("addresses") or []
    ips = set()
    for a in addresses:
        if a.get("type") in _IP_TYPES:
            try:
                ips.add(ipaddress.ip_address(a.get("address", "")))
            except ValueError:
                continue
    return Node(body["metadata"]["name"],
                frozenset(a["address"].lower() for a in addresses if a.get("type") in _HOSTNAME_TYPES),
                frozenset(ips))


def is_decided(csr: Mapping[str, Any]) -> bool:
    """Approved, denied or failed already: never written to again."""
    conditions = (csr.get("status") or {}).get("conditions") or []
    return any(c.get("type") in (APPROVED.value, DENIED.value, "Failed") for c in conditions)


def concerns(csr: Mapping[str, Any]) -> bool:
    """Whether the operator may decide this CSR at all: a kubelet signer, and not decided yet."""
    return (csr.get("spec") or {}).get("signerName") in SIGNERS and not is_decided(csr)


def decide(csr: Mapping[str, Any], nodes: Mapping[str, Node], policy: KubeletPolicy,
           max_validity: timedelta) -> Decision | None:
    """The decision on an undecided kubelet CSR, or None when the policy leaves that signer alone."""
    spec = csr.get("spec") or {}
    signer = spec.get("signerName")
    if (signer == CLIENT_SIGNER and not policy.approve_client_csrs) or \
            (signer == SERVING_SIGNER and not policy.approve_serving_csrs):
        return None

    username, groups = spec.get("username", ""), set(spec.get("groups") or [])
    bootstrap = signer == CLIENT_SIGNER and BOOTSTRAPPERS_GROUP in groups and username.startswith("system:bootstrap:")
    if not bootstrap and not (username.startswith(NODE_PREFIX) and NODES_GROUP in groups):
        return _deny(Reason.REQUESTER_NOT_A_NODE, f"{username!r} is not a node (system:node:<name> in group system:nodes)")

    try:
        request = x509.load_pem_x509_csr(base64.b64decode(spec.get("request", "")))
    except ValueError:
        return _deny(Reason.INVALID_REQUEST, "spec.request is not a PEM certificate request")
    if not request.is_signature_valid:
        return _deny(Reason.INVALID_REQUEST, "the request's signature does not match its public key")

    cns = request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(request.subject) != 2 or len(cns) != 1 or len(orgs) != 1 or orgs[0].value != NODES_GROUP \
            or not str(cns[0].value).startswith(NODE_PREFIX):
        return _deny(Reason.SUBJECT_MISMATCH, f"the subject {request.subject.rfc4514_string()!r} is not exactly "
                                        f"CN=system:node:<name>, O=system:nodes")
    node_name = str(cns[0].value)[len(NODE_PREFIX):]
    if bootstrap:
        if node_name in nodes:
            return _deny(Reason.BOOTSTRAP_FOR_EXISTING_NODE, f"a bootstrap token may not request a certificate for "
                                                     f"{node_name}, which is already a registered Node")
    elif username != f"{NODE_PREFIX}{node_name}":
        return _deny(Reason.NODE_NAME_MISMATCH, f"{username!r} asks for a certificate of node {node_name!r}")

    weak = _weak_key(request.public_key())
    if weak:
        return _deny(Reason.WEAK_KEY, weak)
    seconds = spec.get("expirationSeconds")
    if seconds is not None and timedelta(seconds=int(seconds)) > max_validity:
        return _deny(Reason.EXPIRATION_TOO_LONG, f"expirationSeconds {seconds} is longer than the policy's "
                                          f"validity.certificate ({int(max_validity.total_seconds())}s)")
    usages = set(spec.get("usages") or [])
    if usages not in ALLOWED_USAGES[signer]:
        allowed = " or ".join("{" + ", ".join(sorted(u)) + "}" for u in ALLOWED_USAGES[signer])
        return _deny(Reason.USAGES_NOT_ALLOWED, f"usages {{{', '.join(sorted(usages))}}} are not {allowed}")

    sans = _sans(request)
    if signer == CLIENT_SIGNER:
        if sans:
            return _deny(Reason.SANS_NOT_ALLOWED, "a kubelet client certificate has no subject alternative names")
        return Decision(APPROVED, Reason.AUTO_APPROVED, f"kubelet client certificate of node {node_name}")

    if not sans:
        return _deny(Reason.NO_SANS, "a kubelet serving certificate needs at least one DNS name or IP address")
    others = [n for n in sans if not isinstance(n, (x509.DNSName, x509.IPAddress))]
    if others:
        return _deny(Reason.SAN_TYPE_NOT_ALLOWED, f"{type(others[0]).__name__} {others[0].value} is not allowed")
    node = nodes.get(node_name)
    if node is None:
        return Decision(PENDING, Reason.NODE_NOT_FOUND, f"node {node_name} is not registered")
    if not node.hostnames and not node.ips:  # registered, its addresses not reported yet
        return Decision(PENDING, Reason.NODE_NOT_FOUND, f"node {node_name} reports no addresses yet")
    for name in sans:
        owned = name.value.lower() in node.hostnames if isinstance(name, x509.DNSName) else name.value in node.ips
        if not owned:
            return _deny(Reason.SAN_NOT_OWNED_BY_NODE, f"{name.value} is not an address of {node_name}")
    return Decision(APPROVED, Reason.AUTO_APPROVED, f"kubelet serving certificate of node {node_name}")


def node_not_found(csr: Mapping[str, Any], now: datetime, seen_since: datetime | None = None) -> Decision | None:
    """A pending serving CSR is denied after a minute without its Node, counted from its creation or
    from when this operator first saw it, whichever is later (a restart must not deny at once)."""
    created = times.parse_time(csr["metadata"]["creationTimestamp"])
    if now - max(created, seen_since or created) < NODE_WAIT:
        return None
    node = str((csr.get("spec") or {}).get("username", "")).removeprefix(NODE_PREFIX)
    return _deny(Reason.NODE_NOT_FOUND, f"node {node} was not registered within {int(NODE_WAIT.total_seconds())}s")


def with_decision(csr: Mapping[str, Any], decision: Decision, now: datetime) -> dict[str, Any]:
    """The CSR with its Approved/Denied condition, for a PUT to the ``approval`` subresource."""
    condition = {"type": decision.verdict.value, "status": "True", "reason": decision.reason.value,
                 "message": decision.message, "lastUpdateTime": times.format_time(now),
                 "lastTransitionTime": times.format_time(now)}
    status = dict(csr.get("status") or {})
    status["conditions"] = [*(status.get("conditions") or []), condition]
    return {**csr, "status": status}


def needs_signature(csr: Mapping[str, Any]) -> bool:
    """Approved by anyone, not failed, not signed yet, for a kubelet signer."""
    conditions = (csr.get("status") or {}).get("conditions") or []
    types = {c.get("type") for c in conditions if c.get("status", "True") == "True"}
    return (csr.get("spec") or {}).get("signerName") in SIGNERS and APPROVED.value in types and \
        not types & {DENIED.value, "Failed"} and not (csr.get("status") or {}).get("certificate")


def sign(csr: Mapping[str, Any], ca: certificates.KeyPair, max_validity: timedelta, now: datetime) -> str:
    """The signed certificate (base64 PEM, for ``status.certificate``), with the signer's usages, the
    request's SANs, and ``expirationSeconds`` honoured up to the policy's validity."""
    spec = csr["spec"]
    request = x509.load_pem_x509_csr(base64.b64decode(spec["request"]))
    usage = certificates.CLIENT_AUTH if spec["signerName"] == CLIENT_SIGNER else certificates.SERVER_AUTH
    sans = _sans(request)
    identity = certificates.Identity(
        common_name=str(request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value),
        organizations=tuple(str(a.value) for a in request.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)),
        usages=(usage,),
        dns_names=tuple(n.value for n in sans if isinstance(n, x509.DNSName)),
        ips=tuple(n.value for n in sans if isinstance(n, x509.IPAddress)),
    )
    seconds = spec.get("expirationSeconds")
    validity = min(timedelta(seconds=int(seconds)), max_validity) if seconds else max_validity
    cert = certificates.sign_leaf(identity, request.public_key(), ca, validity, now)
    return base64.b64encode(cert.public_bytes(Encoding.PEM)).decode()


def _weak_key(key: Any) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        return None if key.key_size >= 2048 else f"an RSA key of {key.key_size} bits is shorter than 2048"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return None if isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)) else \
            f"the curve {key.curve.name} is not P-256 or P-384"
    return f"a {type(key).__name__} is not RSA or ECDSA"


def _sans(request: x509.CertificateSigningRequest) -> list[x509.GeneralName]:
    try:
        return list(request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _deny(reason: Reason, message: str) -> Decision:
    return Decision(DENIED, reason, message)
