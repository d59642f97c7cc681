"""``clusterpki agent``: one per control-plane instance. It writes a ClusterPKI's Secrets into
kubeadm's layout for its own etcd member, restarts the components that do not reload what changed,
one at a time, and reports what each component runs (:mod:`clusterpki.kube.reports`)."""
