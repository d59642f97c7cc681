"""Kubelet CSRs as a kubelet (or a forger) would submit them, for unit and operator tests."""

from __future__ import annotations

import base64
import ipaddress
from functools import lru_cache
from typing import Any

from clusterpki.csr.rules import CLIENT_SIGNER, SERVING_SIGNER
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


@lru_cache(maxsize=None)
def key(kind: str = "ec") -> Any:
    if kind == "rsa1024":
        return rsa.generate_private_key(65537, 1024)
    if kind == "rsa2048":
        return rsa.generate_private_key(65537, 2048)
    if kind == "p521":
        return ec.generate_private_key(ec.SECP521R1())
    return ec.generate_private_key(ec.SECP256R1())


def request_pem(cn: str, orgs: tuple[str, ...] = ("system:nodes",), dns: tuple[str, ...] = (),
                ips: tuple[str, ...] = (), uris: tuple[str, ...] = (), emails: tuple[str, ...] = (),
                key_kind: str = "ec") -> str:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    names += [x509.UniformResourceIdentifier(u) for u in uris] + [x509.RFC822Name(e) for e in emails]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    pem = builder.sign(key(key_kind), hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    return base64.b64encode(pem).decode()


def kubelet_csr(name: str, node: str = "node-a", serving: bool = False, **overrides: Any) -> dict[str, Any]:
    """A valid CSR of ``node``'s kubelet; ``overrides`` forge parts of it (see the tests)."""
    request_args = {k: overrides.pop(k) for k in ("cn", "orgs", "dns", "ips", "uris", "emails", "key_kind")
                    if k in overrides}
    request_args.setdefault("cn", f"system:node:{node}")
    if serving:
        request_args.setdefault("dns", (node,))
        request_args.setdefault("ips", ("10.0.0.1",))
    spec = {
        "signerName": SERVING_SIGNER if serving else CLIENT_SIGNER,
        "username": f"system:node:{node}",
        "groups": ["system:nodes", "system:authenticated"],
        "usages": ["digital signature", "server auth" if serving else "client auth"],
        "request": request_pem(**request_args),
    }
    spec.update(overrides)
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name, "creationTimestamp": "2026-11-22T12:00:00Z"}, "spec": spec}


def node_body(name: str, hostnames: tuple[str, ...] = (), ips: tuple[str, ...] = (),
              extra: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """A Node as its kubelet reports it: ``extra`` adds (type, address) pairs, such as ExternalDNS."""
    addresses = [{"type": "Hostname", "address": h} for h in hostnames]
    addresses += [{"type": "InternalIP", "address": i} for i in ips]
    addresses += [{"type": kind, "address": address} for kind, address in extra]
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {"addresses": addresses}}
