"""Where ClusterPKIs live in the API: the CRD's group, version and plural (the document itself is
:mod:`clusterpki.pki.spec`'s)."""

from clusterpki.pki.spec import API_GROUP as GROUP
from clusterpki.pki.spec import KIND, VERSION

PLURAL = "clusterpkis"


def path(namespace: str, name: str | None = None) -> str:
    """The API path of a namespace's ClusterPKIs, or of one of them."""
    collection = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{collection}/{name}" if name else collection

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION", "path"]
