"""The verdicts on kubelet CSRs and their reasons, as enums: the condition's reason and the metrics' label."""

from __future__ import annotations

import enum


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
    TOO_MANY_SANS = "TooManySANs"
    SAN_TYPE_NOT_ALLOWED = "SANTypeNotAllowed"
    NODE_NOT_FOUND = "NodeNotFound"
    SAN_NOT_OWNED_BY_NODE = "SANNotOwnedByNode"  # its Node does not report it
    SAN_OF_ANOTHER_NODE = "SANOfAnotherNode"  # another Node reports it too
    SAN_RESERVED = "SANReserved"  # the service CIDR's, the apiserver's, the endpoint's, an etcd member's, loopback
    SAN_WILDCARD = "SANWildcard"
    SAN_OUTSIDE_BOUNDS = "SANOutsideBounds"  # outside spec.kubelet.servingNames
