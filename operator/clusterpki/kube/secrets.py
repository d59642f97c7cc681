"""The Secret layout of a ClusterPKI (the contract's "Secrets" section), as plain dicts.

Pure functions both ways: a PKI to the Secrets it should be stored in, and stored Secrets back to
what the engine needs. No API calls here; :mod:`clusterpki.kube.store` does those.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from cryptography import x509

from clusterpki.pki import catalog, engine, keys, kubeconfig
from clusterpki.pki import spec as spec_model
from clusterpki.pki.certificates import KeyPair

GROUP = spec_model.API_GROUP
LABEL_PKI = f"{GROUP}/cluster-pki"
LABEL_COMPONENT = f"{GROUP}/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "clusterpki"
ANNOTATION_ADOPTED = f"{GROUP}/adopted"
TLS = "kubernetes.io/tls"
OPAQUE = "Opaque"

Secret = dict[str, Any]


def immutable(secret: Secret | None) -> bool:
    return bool(secret and secret.get("immutable"))


class Stored(NamedTuple):
    """What the Secrets of one ClusterPKI hold, read back for the engine."""

    existing: engine.Existing
    unreadable: dict[str, str]  # leaf component -> why it cannot be used (it will be re-issued)
    ca_problems: dict[str, str]  # CA component -> why it cannot be used (it is never replaced)
    sa_problem: str | None
    adopted: set[str]  # CA components brought in by the user


NEXT, PREVIOUS = "-next", "-previous"  # suffixes of the components that hold a rotation's other half


def is_rotation(component: str) -> bool:
    return component.endswith((NEXT, PREVIOUS))


def secret_name(pki_name: str, component: str) -> str:
    return f"{pki_name}-{component}"


def labels(pki_name: str, component: str) -> dict[str, str]:
    return {LABEL_PKI: pki_name, LABEL_COMPONENT: component, LABEL_MANAGED_BY: MANAGER}


def selector(pki_name: str) -> str:
    """The label selector for every Secret of one ClusterPKI."""
    return f"{LABEL_PKI}={pki_name},{LABEL_MANAGED_BY}={MANAGER}"


def names(pki_spec: spec_model.Spec) -> dict[str, str]:
    """The Secret of each CA, leaf and the service-account key a spec wants: component -> name."""
    components = [ca.component for ca in catalog.CERTIFICATE_AUTHORITIES]
    components += [leaf.component for leaf in catalog.plan(pki_spec)] + [catalog.SERVICE_ACCOUNT]
    return {c: secret_name(pki_spec.name, c) for c in components}


def owned(items: list[Secret], pki_name: str) -> tuple[dict[str, Secret], list[str]]:
    """The Secrets of one ClusterPKI by component, from those carrying its labels, and the names of
    impostors: a Secret is one of its own only if it also has the name its component's Secret has."""
    found: dict[str, Secret] = {}
    impostors = []
    for item in items:
        component = component_of(item)
        if component and item["metadata"]["name"] == secret_name(pki_name, component):
            found[component] = item
        else:
            impostors.append(item["metadata"]["name"])
    return found, sorted(impostors)


def owner_of(labels: Mapping[str, str]) -> str | None:
    """The ClusterPKI a Secret's labels give it to, if clusterpki manages it."""
    return labels.get(LABEL_PKI) if labels.get(LABEL_MANAGED_BY) == MANAGER else None


def read(secrets: Mapping[str, Secret], now: datetime) -> Stored:
    """Read the Secrets of one ClusterPKI, keyed by component, into what the engine needs."""
    cas: dict[str, KeyPair] = {}
    ca_problems: dict[str, str] = {}
    adopted: set[str] = set()
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        secret = secrets.get(ca.component)
        if secret is None:
            continue
        if not _is_ours(secret) or (secret["metadata"].get("annotations") or {}).get(ANNOTATION_ADOPTED):
            adopted.add(ca.component)
        try:
            pair = read_pair(secret)
        except ValueError as exc:
            ca_problems[ca.component] = str(exc)
            continue
        problem = engine.check_ca(pair, now)
        if problem:
            ca_problems[ca.component] = problem
        else:
            cas[ca.component] = pair

    leaves: dict[str, KeyPair] = {}
    unreadable: dict[str, str] = {}
    for component, secret in secrets.items():
        if component in catalog.CA_BY_COMPONENT or component == catalog.SERVICE_ACCOUNT or is_rotation(component):
            continue
        try:
            leaves[component] = read_pair(secret)
        except ValueError as exc:
            unreadable[component] = f"its Secret cannot be used ({exc})"

    service_account, sa_problem = None, None
    if catalog.SERVICE_ACCOUNT in secrets:
        try:
            service_account = _load_key("sa.key", _data(secrets[catalog.SERVICE_ACCOUNT], "sa.key"))
        except ValueError as exc:
            sa_problem = str(exc)
    return Stored(engine.Existing(cas, leaves, service_account), unreadable, ca_problems, sa_problem, adopted)


def read_pair(secret: Secret) -> KeyPair:
    """The certificate and key of a TLS Secret. Errors name the key, never its content."""
    pem = _data(secret, "tls.crt")
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise ValueError("tls.crt is not a PEM certificate") from None
    return KeyPair(cert, _load_key("tls.key", _data(secret, "tls.key")))


def desired(pki: engine.PKI, namespace: str, owner: dict[str, Any] | None,
            current: Mapping[str, Secret], adopted: set[str]) -> dict[str, Secret]:
    """Every Secret of ``pki`` as it should be stored. ``owner`` is the ownerReference to set (with
    ``secretRetention: Delete``); ``current`` are the stored Secrets, whose foreign labels, annotations
    and ownerReferences are kept. Adopted CA Secrets keep their data and type; only ``ca.crt`` and our
    labels are added."""
    name = pki.spec.name
    wanted: dict[str, tuple[str, dict[str, bytes]]] = {}
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        pair = pki.cas[ca.component]
        wanted[ca.component] = (TLS, tls_data(pair, pki.bundle(ca.component)))
    for component, leaf in pki.planned.items():
        pair = pki.leaves[component]
        data = tls_data(pair, pki.bundle(leaf.issuer))
        if leaf.profile.kubeconfig:
            data["kubeconfig"] = kubeconfig.render(pki.spec.server_url, leaf.profile.common_name, pair,
                                                   pki.bundle(leaf.issuer))
        wanted[component] = (TLS, data)
    wanted[catalog.SERVICE_ACCOUNT] = (OPAQUE, {
        "sa.key": keys.private_pem(pki.service_account),
        "sa.pub": b"".join(keys.public_pem(k) for k in pki.service_account_keys())})

    secrets = {}
    for component, (kind, data) in wanted.items():
        existing = current.get(component)
        meta: dict[str, Any] = {"name": secret_name(name, component), "namespace": namespace}
        old_meta = existing["metadata"] if existing else {}
        meta["labels"] = {**(old_meta.get("labels") or {}), **labels(name, component)}
        annotations = dict(old_meta.get("annotations") or {})
        encoded = {k: base64.b64encode(v).decode() for k, v in data.items()}
        if existing is not None and (component in adopted or component in catalog.CA_BY_COMPONENT):
            kind = existing.get("type", kind)  # immutable, and a CA Secret is never re-created
        if component in adopted and existing is not None:
            encoded = {**(existing.get("data") or {}), "ca.crt": encoded["ca.crt"]}
            annotations[ANNOTATION_ADOPTED] = "true"
        if annotations:
            meta["annotations"] = annotations
        references = [r for r in old_meta.get("ownerReferences") or []
                      if not (owner and r.get("uid") == owner["uid"]) and r.get("kind") != "ClusterPKI"]
        if owner is not None and component not in adopted:
            references.append(owner)
        if references:
            meta["ownerReferences"] = references
        if existing is not None:
            meta["resourceVersion"] = old_meta.get("resourceVersion")
            if old_meta.get("finalizers"):
                meta["finalizers"] = old_meta["finalizers"]
        secrets[component] = {"apiVersion": "v1", "kind": "Secret", "type": kind, "metadata": meta,
                              "data": encoded}
        if immutable(existing):
            secrets[component]["immutable"] = True
    return secrets


def differs(current: Secret | None, wanted: Secret) -> bool:
    """Whether storing ``wanted`` would change anything that matters in ``current``."""
    if current is None:
        return True
    meta, want_meta = current["metadata"], wanted["metadata"]
    return (current.get("type") != wanted["type"] or (current.get("data") or {}) != wanted["data"]
            or (meta.get("labels") or {}) != want_meta.get("labels", {})
            or (meta.get("annotations") or {}) != want_meta.get("annotations", {})
            or (meta.get("ownerReferences") or []) != want_meta.get("ownerReferences", []))


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": body["apiVersion"], "kind": body["kind"], "name": body["metadata"]["name"],
            "uid": body["metadata"]["uid"], "controller": True, "blockOwnerDeletion": False}


def component_of(secret: Secret) -> str | None:
    return (secret["metadata"].get("labels") or {}).get(LABEL_COMPONENT)


def _is_ours(secret: Secret) -> bool:
    return (secret["metadata"].get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGER


def tls_data(pair: KeyPair, bundle: list[x509.Certificate]) -> dict[str, bytes]:
    return {"tls.crt": kubeconfig.pem_bundle([pair.cert]), "tls.key": keys.private_pem(pair.key),
            "ca.crt": kubeconfig.pem_bundle(bundle)}


def _load_key(name: str, data: bytes) -> keys.PrivateKey:
    try:
        return keys.load_private_pem(data)
    except ValueError as exc:
        raise ValueError(f"{name} is {exc}") from None


def _data(secret: Secret, key: str) -> bytes:
    value = (secret.get("data") or {}).get(key)
    if not value:
        raise ValueError(f"{key} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ValueError(f"{key} is not base64") from None

