"""Which control-plane component reads which file of kubeadm's layout, and whether it picks a new
version up by itself (RELOAD) or must be restarted (RESTART).

Measured on etcd 3.4 and kube-apiserver v1.24 with the files replaced atomically (rename), and held
by ``tests/e2e/test_ha.py`` through renewals and rotations on those processes:
- kube-apiserver reloads its serving pair (``--tls-cert-file``) and its client CA bundles
  (``--client-ca-file``, ``--requestheader-client-ca-file``); it reads the etcd CA and client pair,
  the service-account keys, the front-proxy and kubelet client pairs once, at start.
- etcd reads its server and peer pairs at each handshake, its trusted CA files once, at start.
- kube-controller-manager and kube-scheduler read their kubeconfigs, and kube-controller-manager the
  root CA, signing CA and service-account key, once, at start.
(Kubelets, not in the table yet: v1.24 reloads its client CA file within a second, and reads its client
certificate and kubelet.conf only at start; ``bench/kubelet_reloads.sh``.)
A file not known to reload is marked RESTART: a restart too many costs a moment, a missed one an
outage later. A file is rewritten, and its readers restarted, only for a change of material
(:func:`clusterpki.kubeadm.layout.to_write`): a trust bundle's CAs in another order are the same trust.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

RELOAD, RESTART = "reload", "restart"


class Consumer(NamedTuple):
    component: str
    files: dict[str, str]  # path below DIR -> RELOAD or RESTART
    health_ca: str | None = None  # the bundle that verifies its health endpoint; None: a self-signed one
    health_client: str | None = None  # the client pair (path without .crt/.key) its health endpoint asks for


CONSUMERS: tuple[Consumer, ...] = (  # in the order they are restarted: what others depend on first
    Consumer("etcd", {
        "pki/etcd/ca.crt":                    RESTART,  # --trusted-ca-file, --peer-trusted-ca-file
        "pki/etcd/server.crt":                RELOAD,   # --cert-file
        "pki/etcd/server.key":                RELOAD,   # --key-file
        "pki/etcd/peer.crt":                  RELOAD,   # --peer-cert-file
        "pki/etcd/peer.key":                  RELOAD,   # --peer-key-file
    }, health_ca="pki/etcd/ca.crt", health_client="pki/etcd/healthcheck-client"),
    Consumer("kube-apiserver", {
        "pki/ca.crt":                         RELOAD,   # --client-ca-file
        "pki/apiserver.crt":                  RELOAD,   # --tls-cert-file
        "pki/apiserver.key":                  RELOAD,   # --tls-private-key-file
        "pki/front-proxy-ca.crt":             RELOAD,   # --requestheader-client-ca-file
        "pki/front-proxy-client.crt":         RESTART,  # --proxy-client-cert-file
        "pki/front-proxy-client.key":         RESTART,  # --proxy-client-key-file
        "pki/apiserver-kubelet-client.crt":   RESTART,  # --kubelet-client-certificate
        "pki/apiserver-kubelet-client.key":   RESTART,  # --kubelet-client-key
        "pki/etcd/ca.crt":                    RESTART,  # --etcd-cafile
        "pki/apiserver-etcd-client.crt":      RESTART,  # --etcd-certfile
        "pki/apiserver-etcd-client.key":      RESTART,  # --etcd-keyfile
        "pki/sa.pub":                         RESTART,  # --service-account-key-file
        "pki/sa.key":                         RESTART,  # --service-account-signing-key-file
    }, health_ca="pki/ca.crt"),  # /readyz is public
    Consumer("kube-controller-manager", {
        "controller-manager.conf":            RESTART,  # --kubeconfig
        "pki/ca.crt":                         RESTART,  # --root-ca-file, --cluster-signing-cert-file
        "pki/ca.key":                         RESTART,  # --cluster-signing-key-file
        "pki/sa.key":                         RESTART,  # --service-account-private-key-file
    }),
    Consumer("kube-scheduler", {
        "scheduler.conf":                     RESTART,  # --kubeconfig
    }),
)

BY_COMPONENT = {consumer.component: consumer for consumer in CONSUMERS}


def to_restart(components: Iterable[str], changed: set[str]) -> list[str]:
    """The components, in restart order, that read a changed file they do not reload."""
    wanted = set(components)
    return [c.component for c in CONSUMERS
            if c.component in wanted and any(kind == RESTART and path in changed for path, kind in c.files.items())]
