"""The Secrets a decision wants, component by component: their type, data and material. Pure.

The data is what the record's digests are taken of, so it is built in one place: a CA's bundle and
key, a leaf's pair, its issuer's bundle and, for a client's login, its kubeconfig; the
service-account key and every public key that verifies tokens; the rotation's halves; and the
halves kept on record from earlier rotations, as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from clusterpki.controller.custody import Custody, Material
from clusterpki.controller.observe import Observed
from clusterpki.controller.phases import Step
from clusterpki.kube import secrets
from clusterpki.kube.secrets import OPAQUE, TLS
from clusterpki.pki import catalog, engine, kubeconfig
from clusterpki.pki.certificates import KeyPair
from clusterpki.pki.placement import SecretKey


@dataclass(frozen=True)
class Wanted:
    kind: str
    data: Mapping[str, bytes]
    material: Material
    adopted: bool = False


def of_pki(pki: engine.PKI) -> dict[str, Wanted]:
    """The Secrets of a complete PKI, by component, CAs first: what the operator stores, and what
    ``clusterpki import`` stores of a kubeadm directory."""
    found = {ca.component: Wanted(TLS, secrets.tls_data(pki.cas[ca.component], pki.bundle(ca.component)),
                                  pki.cas[ca.component]) for ca in catalog.CERTIFICATE_AUTHORITIES}
    for component, leaf in pki.planned.items():
        pair = pki.leaves[component]
        login = kubeconfig.render(pki.spec.server_url, leaf.identity.common_name, pair, pki.bundle(leaf.issuer)) \
            if leaf.profile.kubeconfig else None
        found[component] = Wanted(TLS, secrets.tls_data(pair, pki.bundle(leaf.issuer), login), pair)
    found[catalog.SERVICE_ACCOUNT] = Wanted(OPAQUE, secrets.sa_data(pki.service_account, pki.service_account_keys()),
                                            pki.service_account)
    return found


def wanted_secrets(seen: Observed, custody: Custody, pki: engine.PKI, step: Step | None) -> dict[str, Wanted]:
    """Every Secret the decision wants stored, by component: CAs first."""
    found = of_pki(pki)
    found.update({ca.component: _authority(seen, custody, ca.component, pki) for ca in catalog.CERTIFICATE_AUTHORITIES})
    if catalog.SERVICE_ACCOUNT in custody.adopted:
        found[catalog.SERVICE_ACCOUNT] = replace(found[catalog.SERVICE_ACCOUNT], adopted=True)
    found.update({half: _half(material) for half, material in (step.halves if step else {}).items()})
    dropped = set(step.delete if step else ()) | set(found)
    for component, material in custody.trusted.items():
        if secrets.is_rotation(component) and component not in dropped:  # kept from an earlier rotation
            found[component] = _half(material)
    return found


def _authority(seen: Observed, custody: Custody, component: str, pki: engine.PKI) -> Wanted:
    """A CA's Secret: its pair and bundle, in the type it has (a CA Secret is never made again); a
    brought-in one keeps its own data, and gets the bundle."""
    pair, bundle = pki.cas[component], pki.bundle(component)
    stored = seen.secrets.get(component)
    adopted = component in custody.adopted
    if adopted and stored is not None and component not in custody.tampered:
        data = {**stored.data, SecretKey.BUNDLE.value: kubeconfig.pem_bundle(bundle)}
        return Wanted(stored.kind, data, pair, adopted=True)
    return Wanted(stored.kind if stored else TLS, secrets.tls_data(pair, bundle), pair, adopted)


def _half(material: Material) -> Wanted:
    """A rotation half: a CA pair with itself as bundle, or a service-account key with its public key."""
    if isinstance(material, KeyPair):
        return Wanted(TLS, secrets.tls_data(material, [material.cert]), material)
    return Wanted(OPAQUE, secrets.sa_data(material, [material.public_key()]), material)
