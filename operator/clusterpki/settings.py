"""Names and tunables shared by the operator's modules."""

GROUP = "pki.clusterpki.dev"
VERSION = "v1alpha1"
PLURAL = "clusterpkis"
KOPF_PREFIX = f"kopf.{GROUP}"  # Kopf's own annotations; users' requests use GROUP
RETRY_DELAY = 10  # seconds before a transient failure (an API error) is retried
CONFLICT_RETRY_DELAY = 1  # seconds before a write conflict (another writer got there first) is retried
DRIFT_DELAY = 0.5  # seconds to gather a burst of Secret events into one reconcile
