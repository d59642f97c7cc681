"""``clusterpki agent-manifests``: what nodes may read, exactly."""

from clusterpki.kube import manifests
from clusterpki.pki import spec

from tests.helpers import document


def test_nodes_may_get_their_clusterpki_and_nothing_else():
    objects = manifests.manifests(spec.from_resource(document("p")), "ns")
    name = manifests.node_role_name("p")
    role = next(o for o in objects if o["kind"] == "Role" and o["metadata"]["name"] == name)
    assert role["rules"] == [{"apiGroups": ["pki.clusterpki.dev"], "resources": ["clusterpkis"],
                              "resourceNames": ["p"], "verbs": ["get"]}]
    binding = next(o for o in objects if o["kind"] == "RoleBinding" and o["metadata"]["name"] == name)
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]
    assert binding["roleRef"]["name"] == name and role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "ns"
