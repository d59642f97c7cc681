"""The controller's tunables."""

RETRY_DELAY = 10  # seconds before a transient failure (an API error) is retried
CONFLICT_RETRY_DELAY = 1  # seconds before a write conflict (another writer got there first) is retried
# seconds between looks at a ClusterPKI that a Secret in the way stops: the operator watches its own Secrets
# only, so nothing tells it when the one in the way goes; it then proceeds by itself
IN_THE_WAY_RETRY = 30
DRIFT_DELAY = 0.5  # seconds to gather a burst of Secret events into one reconcile
NODE_REPORT_DELAY = 2.0  # seconds to gather nodes' reports (thousands per rotation phase) into one reconcile
# ClusterPKIs reconciled at once. Each holds its Secrets and keys in memory while it runs, so a
# renewal wave of a whole fleet would otherwise peak at the fleet's size; the work is CPU-bound, and
# more at once would not finish sooner.
CONCURRENT_RECONCILES = 16
# A ClusterPKI that has written nothing yet, and whose name an older ClusterPKI's could clash with (see
# gates.settling), writes nothing until this long after its creation second: by then the watch has brought
# every ClusterPKI made that second, some of which may be older by name (creation times are whole seconds)
SETTLE_SECONDS = 2
