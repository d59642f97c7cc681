"""Where ClusterPKIs live in the API: the CRD's group, version and plural (the document itself is
:mod:`clusterpki.pki.spec`'s)."""

from clusterpki.pki.spec import API_GROUP as GROUP
from clusterpki.pki.spec import KIND, VERSION

PLURAL = "clusterpkis"

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION"]
