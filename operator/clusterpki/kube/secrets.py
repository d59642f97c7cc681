"""The contract's Secret layout: names, labels, data keys, and a Secret as the API holds it.

Pure both ways: :class:`StoredSecret` reads an API object into a typed value (its data decoded), and
:func:`secret_object` makes the API object of a component's data. No API calls here.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from clusterpki.pki import catalog, keys, kubeconfig, record, times
from clusterpki.pki import spec as spec_model
from clusterpki.pki.certificates import KeyPair
from clusterpki.pki.placement import NEXT, PREVIOUS, SecretKey

GROUP = spec_model.API_GROUP
LABEL_PKI = f"{GROUP}/cluster-pki"
LABEL_COMPONENT = f"{GROUP}/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "clusterpki"
ANNOTATION_ADOPTED = f"{GROUP}/adopted"  # shown on a brought-in CA's Secret; the record decides, not this
TLS = "kubernetes.io/tls"
OPAQUE = "Opaque"

Secret = dict[str, Any]


def is_rotation(component: str) -> bool:
    return component.endswith((NEXT, PREVIOUS))


def secret_name(pki_name: str, component: str) -> str:
    return f"{pki_name}-{component}"


def labels(pki_name: str, component: str) -> dict[str, str]:
    return {LABEL_PKI: pki_name, LABEL_COMPONENT: component, LABEL_MANAGED_BY: MANAGER}


def selector(pki_name: str) -> str:
    """The label selector for every Secret of one ClusterPKI."""
    return f"{LABEL_PKI}={pki_name},{LABEL_MANAGED_BY}={MANAGER}"


def components(pki_spec: spec_model.Spec) -> list[str]:
    """The components a spec wants a Secret for: the CAs, the leaves, and ``sa``."""
    return [*(ca.component for ca in catalog.CERTIFICATE_AUTHORITIES),
            *(leaf.component for leaf in catalog.plan(pki_spec)), catalog.SERVICE_ACCOUNT]


def names(pki_spec: spec_model.Spec) -> dict[str, str]:
    """The Secret of each CA, leaf and the service-account key a spec wants: component -> name."""
    return {c: secret_name(pki_spec.name, c) for c in components(pki_spec)}


def owner_of(found: Mapping[str, str]) -> str | None:
    """The ClusterPKI a Secret's labels give it to, if clusterpki manages it."""
    return found.get(LABEL_PKI) if found.get(LABEL_MANAGED_BY) == MANAGER else None


@dataclass(frozen=True)
class StoredSecret:
    """One Secret as the API holds it, its data decoded."""

    name: str
    resource_version: str
    kind: str
    immutable: bool
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    owner_references: tuple[Mapping[str, Any], ...]
    finalizers: tuple[str, ...]
    created: datetime | None
    data: Mapping[str, bytes]
    deleting: bool = False  # deleted, and held by a finalizer: it is going away

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> StoredSecret:
        meta = obj.get("metadata") or {}
        created = meta.get("creationTimestamp")
        return cls(name=meta.get("name", ""), resource_version=meta.get("resourceVersion", ""),
                   kind=obj.get("type") or OPAQUE, immutable=bool(obj.get("immutable")),
                   labels=dict(meta.get("labels") or {}), annotations=dict(meta.get("annotations") or {}),
                   owner_references=tuple(meta.get("ownerReferences") or ()),
                   finalizers=tuple(meta.get("finalizers") or ()),
                   created=times.parse_time(created) if created else None,
                   data={k: _decode(v) for k, v in (obj.get("data") or {}).items()},
                   deleting=bool(meta.get("deletionTimestamp")))

    @property
    def component(self) -> str | None:
        return self.labels.get(LABEL_COMPONENT)

    @property
    def digest(self) -> str:
        """What the record compares: the digest of the whole data."""
        return record.data_digest(self.data)

    def value(self, key: SecretKey) -> bytes:
        """One data key's value; ValueError naming the key (never its content) when it is empty or absent."""
        found = self.data.get(key.value)
        if not found:
            raise ValueError(f"{key.value} is missing")
        return found


def owned(items: list[Secret], pki_name: str) -> tuple[dict[str, StoredSecret], list[str]]:
    """The Secrets of one ClusterPKI by component, from those carrying its labels, and the names of
    impostors: a Secret is one of its own only if it also has the name its component's Secret has."""
    found: dict[str, StoredSecret] = {}
    impostors = []
    for item in items:
        stored = StoredSecret.from_object(item)
        if stored.component and stored.name == secret_name(pki_name, stored.component):
            found[stored.component] = stored
        else:
            impostors.append(stored.name)
    return found, sorted(impostors)


def read_pair(secret: StoredSecret) -> KeyPair:
    """The certificate and key of a TLS Secret. Errors name the key, never its content."""
    try:
        cert, *chain = x509.load_pem_x509_certificates(secret.value(SecretKey.CERTIFICATE))
    except ValueError as exc:
        raise ValueError(str(exc) if "missing" in str(exc) else "tls.crt is not a PEM certificate") from None
    return KeyPair(cert, read_key(secret, SecretKey.KEY), tuple(chain))


def read_key(secret: StoredSecret, key: SecretKey) -> keys.PrivateKey:
    try:
        return keys.load_private_pem(secret.value(key))
    except ValueError as exc:
        if "missing" in str(exc):
            raise
        raise ValueError(f"{key.value} is {exc}") from None


def tls_data(pair: KeyPair, bundle: list[x509.Certificate], login: bytes | None = None) -> dict[str, bytes]:
    """A TLS Secret's data: the pair, the issuer's trust bundle, and a client's kubeconfig."""
    data = {SecretKey.CERTIFICATE.value: kubeconfig.pem_bundle(pair.certificates),
            SecretKey.KEY.value: keys.private_pem(pair.key), SecretKey.BUNDLE.value: kubeconfig.pem_bundle(bundle)}
    if login is not None:
        data[SecretKey.KUBECONFIG.value] = login
    return data


def sa_data(key: keys.PrivateKey, trusted: list[keys.PublicKey]) -> dict[str, bytes]:
    """The service-account Secret's data: the signing key, and every public key that verifies tokens."""
    return {SecretKey.SA_KEY.value: keys.private_pem(key),
            SecretKey.SA_PUB.value: b"".join(keys.public_pem(k) for k in trusted)}


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": body["metadata"]["name"],
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": False}


def secret_object(namespace: str, pki_name: str, component: str, kind: str, data: Mapping[str, bytes],
                  owner: Mapping[str, Any] | None, current: StoredSecret | None, adopted: bool) -> Secret:
    """The API object of a component's Secret. A current Secret's foreign labels and annotations are kept;
    its finalizers and other ownerReferences are not (someone else's finalizer would keep a Secret the
    operator deletes, and someone else's ownerReference would have the garbage collector delete it); a
    brought-in one gets no ownerReference and is marked adopted. A ``kind`` other than the current
    Secret's means deleting and creating it again (the API keeps a Secret's type)."""
    meta: dict[str, Any] = {"name": secret_name(pki_name, component), "namespace": namespace,
                            "labels": {**(current.labels if current else {}), **labels(pki_name, component)}}
    annotations = dict(current.annotations) if current else {}
    if adopted:
        annotations[ANNOTATION_ADOPTED] = "true"
    if annotations:
        meta["annotations"] = annotations
    if owner is not None and not adopted:
        meta["ownerReferences"] = [dict(owner)]
    if current is not None:
        meta["resourceVersion"] = current.resource_version
    return {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": meta,
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def differs(current: StoredSecret | None, wanted: Secret) -> bool:
    """Whether storing ``wanted`` would change anything that matters in ``current``."""
    if current is None:
        return True
    meta = wanted["metadata"]
    return (current.kind != wanted["type"] or current.deleting or bool(current.finalizers)
            or current.data != {k: _decode(v) for k, v in wanted["data"].items()}
            or dict(current.labels) != meta.get("labels", {})
            or dict(current.annotations) != meta.get("annotations", {})
            or [dict(r) for r in current.owner_references] != meta.get("ownerReferences", []))


def unblocked(current: StoredSecret, namespace: str) -> Secret:
    """``current`` exactly as stored but for its finalizers: what lets a delete of it complete."""
    meta = {"name": current.name, "namespace": namespace, "resourceVersion": current.resource_version,
            "labels": dict(current.labels), "annotations": dict(current.annotations),
            "ownerReferences": [dict(r) for r in current.owner_references], "finalizers": []}
    found = {"apiVersion": "v1", "kind": "Secret", "type": current.kind, "metadata": meta,
             "data": {k: base64.b64encode(v).decode() for k, v in current.data.items()}}
    if current.immutable:
        found["immutable"] = True
    return found


def _decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError, TypeError):
        return b""  # what cannot be decoded is nothing the record holds
