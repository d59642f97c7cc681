"""The manifests of a ClusterPKI's agents (``clusterpki agent-manifests``): least privilege, per member.

Each member gets a ServiceAccount of its own, bound to a Role that may read exactly the Secrets its
files come from (the CAs, the shared leaves, its own etcd pair and ``sa``: never another member's
etcd keys, nor another ClusterPKI's), read its ClusterPKI, and update exactly its own report Lease and
the restart Lease (both made here, so an agent needs no ``create``); it may read the other members'
report Leases (their health URLs). And a DaemonSet that runs the agent on that member's node only.
Node agents (``clusterpki node-agent``) run as their node, with its kubelet's credentials: a Role bound
to the group ``system:nodes`` lets every node read this one ClusterPKI, nothing else; and a DaemonSet runs
one on every node, restarting the kubelet through the host's systemd.
Pure: a spec in, objects out.
"""

from __future__ import annotations

from typing import Any

from clusterpki.kube import reports, resource, secrets, turns
from clusterpki.pki import catalog, placement
from clusterpki.pki.spec import EtcdMember, Spec

IMAGE = "ghcr.io/clusterpki/clusterpki:0.1.0"
PORTS = {"kube-apiserver": (6443, "readyz"), "etcd": (2379, "health")}
REPORT_SECONDS = 90  # three resyncs of the agent: after that its report no longer counts
KUBELET_PKI = "/var/lib/kubelet/pki"  # where kubelet.conf's client certificate is, on the host and in the pod
RESTART_KUBELET = "nsenter -t 1 -m -u -i -n -p -- systemctl restart kubelet"  # kubeadm's kubelet unit, from the host's pid 1


def agent_name(pki_name: str, member: str) -> str:
    return f"clusterpki-agent-{pki_name}-{member}"


def secret_names(pki_name: str, member: str, first: bool) -> list[str]:
    """The Secrets one member's files may come from, for any release (a change of ``kubernetesVersion``
    needs no new Role): what its Role may read. Only the first member's holds ``super-admin.conf``."""
    components = [c for c in placement.sources(member) if first or c not in _first_members_only()]
    components += placement.old_signers()
    return [secrets.secret_name(pki_name, c) for c in components]


def manifests(pki_spec: Spec, namespace: str, image: str = IMAGE, directory: str = "/etc/kubernetes",
              node_agents: bool = True) -> list[dict]:
    """Every object the agents of the ClusterPKI ``pki_spec`` (in ``namespace``) need; with ``node_agents``,
    the node agents' DaemonSet too."""
    objects: list[dict[str, Any]] = [_restart_lease(pki_spec.name, namespace), *_nodes_may_read(pki_spec.name, namespace)]
    if node_agents:
        objects.append(_node_agents(pki_spec.name, namespace, image, directory))
    for member in pki_spec.etcd_members:
        others = [m.name for m in pki_spec.etcd_members if m.name != member.name]
        name = agent_name(pki_spec.name, member.name)
        objects += [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, namespace)},
            _role(pki_spec.name, namespace, member.name, others, member == pki_spec.first_member),
            _binding(name, namespace),
            reports.lease(pki_spec.name, namespace, member.name, REPORT_SECONDS),
            _daemon_set(pki_spec, namespace, member, image, directory),
        ]
    return objects


def node_role_name(pki_name: str) -> str:
    return f"clusterpki-nodes-{pki_name}"


def _nodes_may_read(pki_name: str, namespace: str) -> list[dict[str, Any]]:
    """Every node may read the ClusterPKI (its status: the record and the public trust bundle)."""
    name = node_role_name(pki_name)
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(name, namespace),
            "rules": [{"apiGroups": [resource.GROUP], "resources": [resource.PLURAL], "resourceNames": [pki_name],
                       "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(name, namespace),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]}
    return [role, binding]


def _meta(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "clusterpki-agent"}}


def _restart_lease(pki_name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": turns.lease_name(pki_name), "namespace": namespace}, "spec": {}}


def _first_members_only() -> set[str]:
    return {p.component for p in catalog.LEAVES if p.where is catalog.Where.FIRST_MEMBER}


def _role(pki_name: str, namespace: str, member: str, others: list[str], first: bool) -> dict[str, Any]:
    own = [reports.lease_name(pki_name, member), turns.lease_name(pki_name)]
    rules = [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": secret_names(pki_name, member, first),
         "verbs": ["get"]},
        {"apiGroups": [resource.GROUP], "resources": [resource.PLURAL], "resourceNames": [pki_name],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": own,
         "verbs": ["get", "update"]},
    ]
    if others:
        rules.append({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                      "resourceNames": [reports.lease_name(pki_name, m) for m in others], "verbs": ["get"]})
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(agent_name(pki_name, member), namespace), "rules": rules}


def _binding(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}


def _address(member: EtcdMember) -> str | None:
    """Where the member's instances answer: its first IP, else its first name (a health URL must be on an
    address the spec gives the member: another member's agent checks it there)."""
    if member.ips:
        ip = str(member.ips[0])
        return f"[{ip}]" if ":" in ip else ip
    return member.dns_names[0] if member.dns_names else None


def _daemon_set(pki_spec: Spec, namespace: str, member: EtcdMember, image: str, directory: str) -> dict[str, Any]:
    """The agent on the member's node (``kubernetes.io/hostname`` = the member's name, as kubeadm names
    etcd members after their nodes), on the host's network to reach the instances' health endpoints."""
    name = agent_name(pki_spec.name, member.name)
    address = _address(member)
    health = [f"--health={c}=https://{address}:{port}/{path}" for c, (port, path) in PORTS.items()] if address else []
    labels = {"app.kubernetes.io/name": "clusterpki-agent", "app.kubernetes.io/instance": name}
    container = {
        "name": "agent", "image": image, "command": ["clusterpki"],
        "args": ["agent", "-n", namespace, pki_spec.name, "--member", member.name, "--dir", directory,
                 "--restart", "static-pod", *health],
        "securityContext": {"runAsUser": 0, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER"]}},
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "volumeMounts": [{"name": "kubernetes", "mountPath": directory}],
    }
    spec = {"serviceAccountName": name, "hostNetwork": True, "priorityClassName": "system-node-critical",
            "nodeSelector": {"kubernetes.io/hostname": member.name},
            "tolerations": [{"key": f"node-role.kubernetes.io/{role}", "effect": "NoSchedule"}
                            for role in ("control-plane", "master")],
            "containers": [container],
            "volumes": [{"name": "kubernetes", "hostPath": {"path": directory, "type": "Directory"}}]}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(name, namespace),
            "spec": {"selector": {"matchLabels": labels}, "updateStrategy": {"type": "RollingUpdate"},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}


def node_agents_name(pki_name: str) -> str:
    return f"clusterpki-node-agent-{pki_name}"


def _node_agents(pki_name: str, namespace: str, image: str, directory: str) -> dict[str, Any]:
    """``clusterpki node-agent`` on every node, as the node: no ServiceAccount token, the kubelet's own
    kubelet.conf and client certificate (mounted where kubelet.conf names them). It restarts the kubelet
    with ``systemctl`` in the host's namespaces (hostPID, privileged: what a restart of the host's kubelet
    takes), and checks the kubelet's healthz on the host's network. Every node, tainted ones included."""
    name = node_agents_name(pki_name)
    labels = {"app.kubernetes.io/name": "clusterpki-node-agent", "app.kubernetes.io/instance": name}
    container = {
        "name": "node-agent", "image": image, "command": ["clusterpki"],
        "args": ["node-agent", "-n", namespace, pki_name, "--node", "$(NODE_NAME)", "--dir", directory,
                 "--restart-command", RESTART_KUBELET, "--health", "http://127.0.0.1:10248/healthz"],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "securityContext": {"runAsUser": 0, "privileged": True, "readOnlyRootFilesystem": True},
        "resources": {"requests": {"cpu": "5m", "memory": "48Mi"}, "limits": {"memory": "192Mi"}},
        "volumeMounts": [{"name": "kubernetes", "mountPath": directory},
                         {"name": "kubelet-pki", "mountPath": KUBELET_PKI}],
    }
    spec = {"hostNetwork": True, "hostPID": True, "automountServiceAccountToken": False,
            "priorityClassName": "system-node-critical", "tolerations": [{"operator": "Exists"}],
            "containers": [container],
            "volumes": [{"name": "kubernetes", "hostPath": {"path": directory, "type": "Directory"}},
                        {"name": "kubelet-pki", "hostPath": {"path": KUBELET_PKI, "type": "Directory"}}]}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(name, namespace) | {"labels": labels},
            "spec": {"selector": {"matchLabels": labels},
                     "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}
