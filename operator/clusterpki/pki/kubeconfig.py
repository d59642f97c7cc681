"""Kubeconfigs with embedded certificates, as kubeadm writes admin.conf and friends."""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clusterpki.pki import documents, keys
from clusterpki.pki.certificates import KeyPair

CLUSTER_NAME = "kubernetes"


def render(server: str, user: str, pair: KeyPair, trust: Iterable[x509.Certificate]) -> bytes:
    """A kubeconfig logging ``user`` in with ``pair`` to ``server``, trusting the CAs in ``trust``."""
    values = {"ca": _b64(pem_bundle(trust)), "cert": _b64(pem_bundle(pair.certificates)),
              "key": _b64(keys.private_pem(pair.key))}
    skeleton = _skeleton(server, user)
    if skeleton is None or not all(values.values()):
        return documents.dump(_document(server, user, values)).encode()
    return skeleton.format(**values).encode()


@functools.lru_cache(maxsize=256)
def _skeleton(server: str, user: str) -> str | None:
    """The YAML of a kubeconfig for ``user`` at ``server`` with a field for each base64 value. Dumped
    once per (server, user), not per kubeconfig: the dump was about 5% of a fleet's resume. A PEM's
    base64 is a plain scalar (``LS0t...``, no space, never folded), so its field in the dumped text
    stands for exactly what a dump of the whole document would write. None when a marker is not found
    exactly once (a server or user that holds one): such a kubeconfig is dumped whole."""
    text = documents.dump(_document(server, user, _FIELDS)).replace("{", "{{").replace("}", "}}")
    for name, marker in _FIELDS.items():
        if text.count(marker) != 1:
            return None
        text = text.replace(marker, f"{{{name}}}")
    return text


def _document(server: str, user: str, values: dict[str, str]) -> dict[str, object]:
    context = f"{user}@{CLUSTER_NAME}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER_NAME, "cluster": {
            "server": server,
            "certificate-authority-data": values["ca"],
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": values["cert"],
            "client-key-data": values["key"],
        }}],
        "contexts": [{"name": context, "context": {"cluster": CLUSTER_NAME, "user": user}}],
        "current-context": context,
        "preferences": {},
    }


_FIELDS = {name: f"CLUSTERPKI{name.upper()}FIELD" for name in ("ca", "cert", "key")}


def read(data: bytes) -> tuple[str, KeyPair, list[x509.Certificate]]:
    """The server, the client pair and the trusted CAs of a kubeconfig written by :func:`render`.

    Raises ValueError with a sentence that never contains key material.
    """
    try:
        document = documents.load(data)
        cluster = document["clusters"][0]["cluster"]
        user = document["users"][0]["user"]
        cert, *chain = x509.load_pem_x509_certificates(base64.b64decode(user["client-certificate-data"]))
        key = keys.load_private_pem(base64.b64decode(user["client-key-data"]))
        trust = x509.load_pem_x509_certificates(base64.b64decode(cluster["certificate-authority-data"]))
        return str(cluster["server"]), KeyPair(cert, key, tuple(chain)), trust
    except (documents.Error, KeyError, IndexError, TypeError, ValueError):
        raise ValueError("not a kubeconfig with an embedded client certificate and key") from None


PLAIN = {"": {"apiVersion", "kind", "clusters", "users", "contexts", "current-context", "preferences"},
         "cluster": {"server", "certificate-authority-data"}, "user": {"client-certificate-data", "client-key-data"},
         "context": {"cluster", "user"}}


def is_plain(data: bytes) -> bool:
    """Whether a kubeconfig holds one cluster, user and context, with nothing but a server, CA data and an
    embedded client pair (as kubeadm and :func:`render` write them): no token, exec plugin, proxy or
    other context for a reader to use."""
    try:
        document = documents.load(data)
        (cluster,), (user,), (context,) = document["clusters"], document["users"], document["contexts"]
        sections = {"": document, "cluster": cluster["cluster"], "user": user["user"], "context": context["context"]}
        return all(isinstance(s, dict) and set(s) <= PLAIN[k] for k, s in sections.items()) and \
            not document.get("preferences") and document.get("current-context") == context["name"] and \
            context["context"] == {"cluster": cluster["name"], "user": user["name"]}
    except (documents.Error, KeyError, TypeError, ValueError):
        return False


def pem_bundle(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
