"""Which nodes' reports the controller counts: the policy ClusterPKI's alone, and none before the Node
watch has listed every Node (after a start, a missing report is not a node that is current)."""

from types import SimpleNamespace

from clusterpki.controller.handlers import _nodes, node_reported
from clusterpki.kube import node_reports

POLICY, OTHER = ("kube-system", "cluster"), ("tenant", "pki")


class Scheduled:
    def __init__(self) -> None:
        self.keys = []

    def after(self, key, delay) -> None:
        self.keys.append(key)


def state(synced: bool = True) -> SimpleNamespace:
    return SimpleNamespace(node_policy=POLICY, node_reports={}, bodies={POLICY: {}, OTHER: {}},
                           scheduler=Scheduled(), nodes=SimpleNamespace(is_synced=lambda namespace: synced))


def node(name: str, value: str | None) -> dict:
    return {"metadata": {"name": name, "annotations": {node_reports.ANNOTATION: value} if value else {}}}


def test_only_the_policy_clusterpki_counts_nodes_and_only_once_they_are_listed():
    watched = state()
    node_reported(watched, "ADDED", node("n1", "kube-system/cluster:abc"))
    node_reported(watched, "ADDED", node("n2", "tenant/pki:junk"))  # any node may name any ClusterPKI
    assert _nodes(watched, POLICY) == {"n1": "abc"}
    assert _nodes(watched, OTHER) == {}, "a node's annotation holds no other ClusterPKI's rotation"
    assert watched.scheduler.keys == [POLICY], "another ClusterPKI's name on a Node makes no look at it"
    node_reported(watched, "MODIFIED", node("n1", "kube-system/cluster:abc"))
    assert watched.scheduler.keys == [POLICY], "the same report again: no look"
    node_reported(watched, "DELETED", node("n1", "kube-system/cluster:abc"))
    assert _nodes(watched, POLICY) == {}
    assert _nodes(state(synced=False), POLICY) is None
