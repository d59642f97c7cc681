"""Kubelet CertificateSigningRequests: which ones the operator decides, the rules, the decision, and
signing.

Only the kubelet signers are ever considered: Kubernetes' two, and the operator's own
:data:`ROTATION_SIGNER`, which a node agent asks for a client certificate from the CA that signs now
(during a ``ca`` rotation, before the old CA stops being trusted). The operator approves and signs
that one whatever the policy says of the others, since no one else signs it. :func:`check` holds a CSR to every rule: the
requester is the node (or, for a first client certificate, a bootstrap token), the subject is exactly
``CN=system:node:<name>, O=system:nodes``, the key is strong, the lifetime within the policy's, the
usages the signer's, and a serving certificate's names are its Node's and nobody else's, within the
policy's bounds (:mod:`clusterpki.csr.names`). :func:`decide` approves or denies with it where the
policy lets the operator approve; :func:`refusal` holds an approved CSR to the same rules again before
the operator signs it, whoever approved it. Pure functions: the Node index and the bounds come in, a
:class:`Decision` goes out.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from clusterpki.csr import names
from clusterpki.csr.names import Bounds, NodeIndex
from clusterpki.csr.reasons import APPROVED, DENIED, PENDING, Reason, Verdict
from clusterpki.pki import certificates, nodes, times
from clusterpki.pki.spec import KubeletPolicy

CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
ROTATION_SIGNER = nodes.SIGNER  # a node agent's request; only the operator signs it
SIGNERS = (CLIENT_SIGNER, SERVING_SIGNER, ROTATION_SIGNER)
OWN_SIGNERS = (ROTATION_SIGNER,)  # approved and signed whatever spec.kubelet says
NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
BOOTSTRAPPERS_GROUP = "system:bootstrappers"
NODE_WAIT = timedelta(minutes=1)  # how long a serving CSR waits for its Node to be seen


_DS, _KE = "digital signature", "key encipherment"
ALLOWED_USAGES = {
    CLIENT_SIGNER: ({_DS, "client auth"}, {_DS, _KE, "client auth"}),
    ROTATION_SIGNER: ({_DS, "client auth"}, {_DS, _KE, "client auth"}),
    SERVING_SIGNER: ({_DS, "server auth"}, {_DS, _KE, "server auth"}),
}


class Decision(NamedTuple):
    verdict: Verdict
    reason: Reason
    message: str


class Request(NamedTuple):
    """A kubelet CSR, read: who asks, for which node, and what."""

    signer: str
    username: str
    groups: frozenset[str]
    usages: frozenset[str]
    expiration: int | None
    request: x509.CertificateSigningRequest

    @property
    def bootstrap(self) -> bool:
        """A first client certificate, asked for with a bootstrap token."""
        return self.signer == CLIENT_SIGNER and BOOTSTRAPPERS_GROUP in self.groups and \
            self.username.startswith("system:bootstrap:")

    @property
    def node(self) -> str:
        cns = self.request.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(cns[0].value).removeprefix(NODE_PREFIX) if cns else ""

    def sans(self) -> list[x509.GeneralName]:
        try:
            return list(self.request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
        except x509.ExtensionNotFound:
            return []


def is_decided(csr: Mapping[str, Any]) -> bool:
    """Approved, denied or failed already: never written to again."""
    conditions = (csr.get("status") or {}).get("conditions") or []
    return any(c.get("type") in (APPROVED.value, DENIED.value, "Failed") for c in conditions)


def concerns(csr: Mapping[str, Any]) -> bool:
    """Whether the operator may decide this CSR at all: a kubelet signer, and not decided yet."""
    return (csr.get("spec") or {}).get("signerName") in SIGNERS and not is_decided(csr)


def decide(csr: Mapping[str, Any], index: NodeIndex, policy: KubeletPolicy, bounds: Bounds) -> Decision | None:
    """The decision on an undecided kubelet CSR, or None when the policy leaves that signer alone."""
    signer = (csr.get("spec") or {}).get("signerName")
    if (signer == CLIENT_SIGNER and not policy.approve_client_csrs) or \
            (signer == SERVING_SIGNER and not policy.approve_serving_csrs):
        return None
    return check(csr, index, bounds)


def check(csr: Mapping[str, Any], index: NodeIndex, bounds: Bounds) -> Decision:
    """Every rule, in order: the first that fails denies (or, for a Node not seen yet, waits)."""
    found = parse(csr)
    if isinstance(found, Decision):
        return found
    for rule in (_requester, _subject, _key, _lifetime, _usages, _sans):
        decision = rule(found, index, bounds)
        if decision is not None:
            return decision
    kind = "serving" if found.signer == SERVING_SIGNER else "client"
    return Decision(APPROVED, Reason.AUTO_APPROVED, f"kubelet {kind} certificate of node {found.node}")


def parse(csr: Mapping[str, Any]) -> Request | Decision:
    spec = csr.get("spec") or {}
    try:
        request = x509.load_pem_x509_csr(base64.b64decode(spec.get("request", "")))
    except ValueError:
        return _deny(Reason.INVALID_REQUEST, "spec.request is not a PEM certificate request")
    if not request.is_signature_valid:
        return _deny(Reason.INVALID_REQUEST, "the request's signature does not match its public key")
    seconds = spec.get("expirationSeconds")
    return Request(spec.get("signerName", ""), spec.get("username", ""), frozenset(spec.get("groups") or ()),
                   frozenset(spec.get("usages") or ()), int(seconds) if seconds is not None else None, request)


def _requester(found: Request, index: NodeIndex, bounds: Bounds) -> Decision | None:
    if not found.bootstrap and not (found.username.startswith(NODE_PREFIX) and NODES_GROUP in found.groups):
        return _deny(Reason.REQUESTER_NOT_A_NODE,
                     f"{found.username!r} is not a node (system:node:<name> in group system:nodes)")
    return None


def _subject(found: Request, index: NodeIndex, bounds: Bounds) -> Decision | None:
    subject = found.request.subject
    cns = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(subject) != 2 or len(cns) != 1 or len(orgs) != 1 or orgs[0].value != NODES_GROUP \
            or not str(cns[0].value).startswith(NODE_PREFIX):
        return _deny(Reason.SUBJECT_MISMATCH, f"the subject {subject.rfc4514_string()!r} is not exactly "
                                              f"CN=system:node:<name>, O=system:nodes")
    if found.bootstrap and found.node in index:
        return _deny(Reason.BOOTSTRAP_FOR_EXISTING_NODE, f"a bootstrap token may not request a certificate for "
                                                         f"{found.node}, which is already a registered Node")
    if not found.bootstrap and found.username != f"{NODE_PREFIX}{found.node}":
        return _deny(Reason.NODE_NAME_MISMATCH, f"{found.username!r} asks for a certificate of node {found.node!r}")
    return None


def _key(found: Request, index: NodeIndex, bounds: Bounds) -> Decision | None:
    key = found.request.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        weak = None if key.key_size >= 2048 else f"an RSA key of {key.key_size} bits is shorter than 2048"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        weak = None if isinstance(key.curve, (ec.SECP256R1, ec.SECP384R1)) else \
            f"the curve {key.curve.name} is not P-256 or P-384"
    else:
        weak = f"a {type(key).__name__} is not RSA or ECDSA"
    return _deny(Reason.WEAK_KEY, weak) if weak else None


def _lifetime(found: Request, index: NodeIndex, bounds: Bounds) -> Decision | None:
    if found.expiration is not None and timedelta(seconds=found.expiration) > bounds.max_validity:
        return _deny(Reason.EXPIRATION_TOO_LONG, f"expirationSeconds {found.expiration} is longer than the policy's "
                                                 f"validity.certificate ({int(bounds.max_validity.total_seconds())}s)")
    return None


def _usages(found: Request, index: NodeIndex, bounds: Bounds) -> Decision | None:
    if found.usages not in ALLOWED_USAGES[found.signer]:
        allowed = " or ".join("{" + ", ".join(sorted(u)) + "}" for u in ALLOWED_USAGES[found.signer])
        return _deny(Reason.USAGES_NOT_ALLOWED, f"usages {{{', '.join(sorted(found.usages))}}} are not {allowed}")
    return None


def _sans(found: Request, index: NodeIndex, bounds: Bounds) -> Decision | None:
    sans = found.sans()
    if found.signer != SERVING_SIGNER:
        return _deny(Reason.SANS_NOT_ALLOWED, "a kubelet client certificate has no subject alternative names") \
            if sans else None
    others = [n for n in sans if not isinstance(n, (x509.DNSName, x509.IPAddress))]
    if not sans or others:
        return _deny(Reason.SAN_TYPE_NOT_ALLOWED, f"{type(others[0]).__name__} {others[0].value} is not allowed") \
            if others else _deny(Reason.NO_SANS, "a kubelet serving certificate needs a DNS name or IP address")
    if len(sans) > bounds.max_names:
        return _deny(Reason.TOO_MANY_SANS, f"{len(sans)} names are more than spec.kubelet.servingNames.maxNames "
                                           f"({bounds.max_names})")
    return _names(found, sans, index, bounds)


def _names(found: Request, sans: list[x509.GeneralName], index: NodeIndex, bounds: Bounds) -> Decision | None:
    node = index.get(found.node)
    if node is None or not (node.hostnames or node.ips):
        what = "is not registered" if node is None else "reports no addresses yet"
        return Decision(PENDING, Reason.NODE_NOT_FOUND, f"node {found.node} {what}")
    for san in sans:
        is_ip = isinstance(san, x509.IPAddress)
        problem = names.problem(str(san.value) if is_ip else str(san.value).lower(), is_ip, node, index, bounds)
        if problem:
            return _deny(*problem)
    return None


def node_not_found(csr: Mapping[str, Any], now: datetime, seen_since: datetime | None = None) -> Decision | None:
    """A pending serving CSR is denied after a minute without its Node, counted from its creation or
    from when this operator first saw it, whichever is later (a restart must not deny at once)."""
    created = times.parse_time(csr["metadata"]["creationTimestamp"])
    if now - max(created, seen_since or created) < NODE_WAIT:
        return None
    node = str((csr.get("spec") or {}).get("username", "")).removeprefix(NODE_PREFIX)
    return _deny(Reason.NODE_NOT_FOUND, f"node {node} was not registered within {int(NODE_WAIT.total_seconds())}s")


def with_condition(csr: Mapping[str, Any], kind: str, reason: str, message: str, now: datetime) -> dict[str, Any]:
    """The CSR with a condition added: Approved or Denied (for the ``approval`` subresource), or Failed
    (for ``status``: a signer that will not sign)."""
    condition = {"type": kind, "status": "True", "reason": reason, "message": message,
                 "lastUpdateTime": times.format_time(now), "lastTransitionTime": times.format_time(now)}
    status = dict(csr.get("status") or {})
    status["conditions"] = [*(status.get("conditions") or []), condition]
    return {**csr, "status": status}


def with_decision(csr: Mapping[str, Any], decision: Decision, now: datetime) -> dict[str, Any]:
    return with_condition(csr, decision.verdict.value, decision.reason.value, decision.message, now)


def needs_signature(csr: Mapping[str, Any]) -> bool:
    """Approved by anyone, not failed, not signed yet, for a kubelet signer."""
    conditions = (csr.get("status") or {}).get("conditions") or []
    types = {c.get("type") for c in conditions if c.get("status", "True") == "True"}
    return (csr.get("spec") or {}).get("signerName") in SIGNERS and APPROVED.value in types and \
        not types & {DENIED.value, "Failed"} and not (csr.get("status") or {}).get("certificate")


def refusal(csr: Mapping[str, Any], index: NodeIndex, bounds: Bounds) -> Decision | None:
    """Why an approved CSR is not signed: it fails a rule now, whoever approved it; None: sign it."""
    decision = check(csr, index, bounds)
    return None if decision.verdict is APPROVED else decision


def sign(csr: Mapping[str, Any], ca: certificates.KeyPair, max_validity: timedelta, now: datetime) -> str:
    """The signed certificate (base64 PEM, for ``status.certificate``), with the signer's usages, the
    request's SANs, and ``expirationSeconds`` honoured up to the policy's validity."""
    found = parse(csr)
    assert isinstance(found, Request)  # refusal() read it first
    usage = certificates.SERVER_AUTH if found.signer == SERVING_SIGNER else certificates.CLIENT_AUTH
    sans = found.sans()
    identity = certificates.Identity(
        common_name=f"{NODE_PREFIX}{found.node}", organizations=(NODES_GROUP,), usages=(usage,),
        dns_names=tuple(n.value for n in sans if isinstance(n, x509.DNSName)),
        ips=tuple(n.value for n in sans if isinstance(n, x509.IPAddress)))
    validity = min(timedelta(seconds=found.expiration), max_validity) if found.expiration else max_validity
    cert = certificates.sign_leaf(identity, found.request.public_key(), ca, validity, now)
    # During a rotation the CA carries its certificate cross-signed by the old one (on record with its
    # Secret): the kubelet presents it too, so apiservers that trust the old CA alone accept it.
    return base64.b64encode(b"".join(c.public_bytes(Encoding.PEM) for c in [cert, *ca.chain])).decode()


def _deny(reason: Reason, message: str) -> Decision:
    return Decision(DENIED, reason, message)
