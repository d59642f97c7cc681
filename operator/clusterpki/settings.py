"""Names and tunables shared by the operator's modules."""

GROUP = "pki.clusterpki.dev"
VERSION = "v1alpha1"
PLURAL = "clusterpkis"
RETRY_DELAY = 10  # seconds before a transient failure (API error, write conflict) is retried
