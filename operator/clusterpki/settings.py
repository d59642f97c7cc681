"""Names and tunables shared by the operator's modules."""

GROUP = "pki.clusterpki.dev"
VERSION = "v1alpha1"
PLURAL = "clusterpkis"
KOPF_PREFIX = f"kopf.{GROUP}"  # Kopf's own annotations; users' requests use GROUP
RETRY_DELAY = 10  # seconds before a transient failure (an API error) is retried
CONFLICT_RETRY_DELAY = 1  # seconds before a write conflict (another writer got there first) is retried
DRIFT_DELAY = 0.5  # seconds to gather a burst of Secret events into one reconcile
# How long Kopf waits for its own patch to come back through the watch before it trusts an older
# event. Kopf's 5 s is too short for a busy fleet: its watch then lags, an older event (without
# Kopf's last-handled annotation) passes for the truth, and the create handler runs a second time.
CONSISTENCY_TIMEOUT = 60
