"""What every node's kubelet must hold of the ``ca`` authority, from the record alone. Pure.

A kubelet reads ``ca`` in three places: ``/etc/kubernetes/pki/ca.crt`` (its ``clientCAFile``, which
verifies the apiserver's ``apiserver-kubelet-client``), the CA data of ``kubelet.conf`` (which verifies
the apiserver's serving certificate), and its client certificate (which the apiserver's
``--client-ca-file`` verifies). The first two follow the control plane's ``pki/ca.crt``: one
certificate, the old CA through Rotating, the new one from Completing (the new CA's leaves carry it
cross-signed by the old while both are in use, so either verifies them). The client certificate must be
issued by the CA that signs now (the bundle's first), so that Completing, which drops the old CA from the
apiserver's ``--client-ca-file``, finds every kubelet with one from the new CA.

The operator publishes the bundle's certificates in ``status.trustBundles``; a node takes them only if
their fingerprints are the record's, in order (``status`` is the operator's alone). A node reports the
:func:`revision` it runs; the operator compares it with the record's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

from cryptography import x509

from clusterpki.pki import placement
from clusterpki.pki.record import Record, certificate_fingerprint

AUTHORITY = "ca"
# The operator's own signer: a node agent asks it for its kubelet's client certificate from the CA that
# signs now (Kubernetes' kubelet signer is kube-controller-manager's, which signs with the old CA until
# Completing). Only the operator signs it, and only for the node itself.
SIGNER = "pki.clusterpki.dev/kubelet-client"


class Wanted(NamedTuple):
    """What a node's kubelet must run: the CA it trusts (both files), and its client certificate's issuer."""

    trusted: x509.Certificate
    signer: x509.Certificate
    revision: str


def _fingerprints(record: Record) -> tuple[str, str] | None:
    """(trusted, signer) fingerprints of ``ca`` on record; None before it is issued."""
    bundle = record.bundles.get(AUTHORITY, ())
    if not bundle:
        return None
    rotating = len(bundle) >= 2 and bundle[1] != record.fingerprint(f"{AUTHORITY}{placement.NEXT}")
    return (bundle[1] if rotating else bundle[0]), bundle[0]


def revision(record: Record) -> str | None:
    """What a node whose kubelet runs the record's ``ca`` reports; None before ``ca`` is issued."""
    found = _fingerprints(record)
    return hashlib.sha256(" ".join(found).encode()).hexdigest()[:16] if found else None


def wanted(record: Record, published: bytes) -> Wanted:
    """The node's wanted state from the published bundle, which must be the record's, certificate for
    certificate; ValueError otherwise (or before ``ca`` is issued)."""
    found = _fingerprints(record)
    if found is None:
        raise ValueError("the ca authority is not issued yet")
    try:
        certs: Sequence[x509.Certificate] = x509.load_pem_x509_certificates(published)
    except ValueError:
        raise ValueError("status.trustBundles.ca is not a PEM bundle") from None
    by_fingerprint = {certificate_fingerprint(c): c for c in certs}
    if tuple(certificate_fingerprint(c) for c in certs) != tuple(record.bundles[AUTHORITY]):
        raise ValueError("status.trustBundles.ca is not the ca bundle on record")
    trusted, signer = found
    return Wanted(by_fingerprint[trusted], by_fingerprint[signer], revision(record) or "")
