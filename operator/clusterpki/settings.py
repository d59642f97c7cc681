"""Names and tunables shared by the operator's modules."""

GROUP = "pki.clusterpki.dev"
VERSION = "v1alpha1"
PLURAL = "clusterpkis"
KOPF_PREFIX = f"kopf.{GROUP}"  # Kopf's own annotations; users' requests use GROUP
RETRY_DELAY = 10  # seconds before a transient failure (an API error) is retried
CONFLICT_RETRY_DELAY = 1  # seconds before a write conflict (another writer got there first) is retried
DRIFT_DELAY = 0.5  # seconds to gather a burst of Secret events into one reconcile
# ClusterPKIs reconciled at once. Each holds its Secrets and keys in memory while it runs, so a
# renewal wave of a whole fleet would otherwise peak at the fleet's size; the work is CPU-bound, and
# more at once would not finish sooner.
CONCURRENT_RECONCILES = 16
# How long Kopf waits for its own patch to come back through the watch before it trusts an older
# event. Kopf's 5 s is too short for a busy fleet: its watch then lags, an older event (without
# Kopf's last-handled annotation) passes for the truth, and the create handler runs a second time.
CONSISTENCY_TIMEOUT = 60
