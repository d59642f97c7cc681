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


def test_a_node_agent_runs_on_every_node_as_the_node_and_restarts_its_kubelet():
    objects = manifests.manifests(spec.from_resource(document("p")), "ns")
    daemon = next(o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["name"] == "clusterpki-node-agent-p")
    pod = daemon["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod, "it runs as the node"
    assert pod["tolerations"] == [{"operator": "Exists"}] and "nodeSelector" not in pod, "every node"
    assert pod["hostPID"] and pod["hostNetwork"]
    container = pod["containers"][0]
    assert container["args"][:4] == ["node-agent", "-n", "ns", "p"]
    assert container["args"][container["args"].index("--node") + 1] == "$(NODE_NAME)"
    assert container["env"] == [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    restart = container["args"][container["args"].index("--restart-command") + 1]
    assert restart.startswith("nsenter -t 1 ") and restart.endswith("systemctl restart kubelet")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    assert mounts == paths == {"kubernetes": "/etc/kubernetes", "kubelet-pki": "/var/lib/kubelet/pki"}, \
        "mounted where kubelet.conf names them on the host"
    selector = daemon["spec"]["selector"]["matchLabels"]
    assert daemon["spec"]["template"]["metadata"]["labels"] == selector
    assert not [o for o in objects if o["kind"] == "DaemonSet" and o["metadata"]["labels"] == selector
                and o is not daemon], "its selector matches no other DaemonSet's pods"


def test_node_agents_can_be_left_out():
    objects = manifests.manifests(spec.from_resource(document("p")), "ns", node_agents=False)
    daemons = [o["metadata"]["name"] for o in objects if o["kind"] == "DaemonSet"]
    assert daemons and all(name.startswith("clusterpki-agent-p-") for name in daemons), daemons
    assert manifests.node_role_name("p") in {o["metadata"]["name"] for o in objects if o["kind"] == "Role"}, \
        "the nodes still read their ClusterPKI (node agents run some other way)"


def _agent_manifests(tmp_path, *args):
    import subprocess
    import sys

    from tests.helpers import REPO
    return subprocess.run([sys.executable, "-m", "clusterpki", "agent-manifests", *args], capture_output=True,
                          text=True, cwd=REPO)


def test_the_namespace_comes_from_the_file_unless_given(tmp_path):
    """``kubectl get clusterpki NAME -o yaml > FILE`` then ``agent-manifests -f FILE``: the file's namespace."""
    import yaml
    body = document("p")
    body["metadata"]["namespace"] = "from-file"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(body))
    printed = _agent_manifests(tmp_path, "-f", str(tmp_path / "p.yaml"))
    assert printed.returncode == 0, printed.stderr
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(printed.stdout)} == {"from-file"}
    given = _agent_manifests(tmp_path, "-f", str(tmp_path / "p.yaml"), "-n", "given")
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(given.stdout)} == {"given"}
    del body["metadata"]["namespace"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(body))
    neither = _agent_manifests(tmp_path, "-f", str(tmp_path / "p.yaml"))
    said = neither.stderr.splitlines()
    assert neither.returncode == 2 and said[0].startswith("usage:") and "-n" in said[-1], neither.stderr


def test_only_the_first_member_s_agent_may_read_the_super_admin_secret():
    """super-admin.conf is kubeadm init's node's alone; its system:masters credential is read by no other
    agent, whatever kubernetesVersion (so a change of it needs no new Role)."""
    members = {"members": [{"name": "m0"}, {"name": "m1"}]}
    for version in ({}, {"kubernetesVersion": "v1.30"}):
        objects = manifests.manifests(spec.from_resource(document("p", etcd=members, **version)), "ns")
        readable = {o["metadata"]["name"]: o["rules"][0]["resourceNames"] for o in objects if o["kind"] == "Role"
                    and o["metadata"]["name"].startswith("clusterpki-agent-p-")}
        assert "p-super-admin" in readable["clusterpki-agent-p-m0"]
        assert "p-super-admin" not in readable["clusterpki-agent-p-m1"]
        assert not [n for names in readable.values() for n in names if n.startswith("p-kubelet")], "no Secret"
