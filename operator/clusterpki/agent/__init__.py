"""The agents on the nodes. ``clusterpki agent`` (:mod:`.agent`), one per control-plane instance, writes a
ClusterPKI's Secrets into kubeadm's layout for its own etcd member, restarts the components that do not
reload what changed, one at a time, and reports what each component runs (:mod:`clusterpki.kube.reports`).
``clusterpki node-agent`` (:mod:`.node`), one per node, keeps the kubelet on the cluster CA through a
rotation, as the node itself, and reports on its own Node (:mod:`clusterpki.kube.node_reports`)."""
