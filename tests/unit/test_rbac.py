"""The operator's RBAC, rule for rule: adding a wildcard or a verb makes this fail on purpose."""

import yaml
from clusterpki.kube.parts import MAX_SHARDS, lease_names

from tests.helpers import REPO

EXPECTED = [
    {"apiGroups": ["pki.clusterpki.dev"], "resources": ["clusterpkis"], "verbs": ["list", "watch"]},
    {"apiGroups": ["pki.clusterpki.dev"], "resources": ["clusterpkis/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "update", "delete"]},
    {"apiGroups": ["certificates.k8s.io"], "resources": ["certificatesigningrequests"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["certificates.k8s.io"],
     "resources": ["certificatesigningrequests/approval", "certificatesigningrequests/status"], "verbs": ["update"]},
    {"apiGroups": ["certificates.k8s.io"], "resources": ["signers"],
     "resourceNames": ["kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving",
                       "pki.clusterpki.dev/kubelet-client"],
     "verbs": ["approve", "sign"]},
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]


def documents():
    return list(yaml.safe_load_all((REPO / "manifests/20-rbac.yaml").read_text()))


def test_the_cluster_role_is_exactly_what_the_operator_uses():
    role = next(d for d in documents() if d["kind"] == "ClusterRole")
    assert role["metadata"]["name"] == "clusterpki"
    assert role["rules"] == EXPECTED
    flat = yaml.safe_dump(role["rules"])
    assert "'*'" not in flat and "\"*\"" not in flat


def test_it_is_bound_to_the_manifests_service_account():
    binding = next(d for d in documents() if d["kind"] == "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "clusterpki"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "clusterpki", "namespace": "clusterpki-system"}]
    account = yaml.safe_load((REPO / "manifests/10-serviceaccount.yaml").read_text())
    assert (account["metadata"]["name"], account["metadata"]["namespace"]) == ("clusterpki", "clusterpki-system")


def test_leader_election_may_touch_only_its_own_leases():
    """The leader's Lease, and each part's for every number of parts ``run --shards`` accepts."""
    role = next(d for d in documents() if d["kind"] == "Role")
    assert (role["metadata"]["name"], role["metadata"]["namespace"]) == ("clusterpki-leader-election",
                                                                         "clusterpki-system")
    names = sorted({name for shards in range(1, MAX_SHARDS + 1) for name in lease_names(shards)})
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": names,
         "verbs": ["get", "update"]}]
    binding = next(d for d in documents() if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == "clusterpki-leader-election"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "clusterpki", "namespace": "clusterpki-system"}]
