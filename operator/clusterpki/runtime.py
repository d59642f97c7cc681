"""``clusterpki run``: start the operator (Kopf) with the in-cluster config or the current kubeconfig."""

from __future__ import annotations

import logging

import kopf

from clusterpki.errors import UserError
from clusterpki.store import load_configuration


def run(namespaces: list[str], standalone: bool, liveness: str | None, verbose: bool,
        csr_policy: str | None = None, metrics_port: int | None = None) -> int:
    policy = parse_policy(csr_policy, namespaces)
    try:
        load_configuration()
    except Exception as exc:  # the client raises several kinds for a missing or broken kubeconfig
        raise UserError(f"cannot load Kubernetes credentials (in-cluster or KUBECONFIG): {exc}") from None
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not verbose:  # Kopf's line per watch event ("Handler 'drift' succeeded."): thousands a minute in a fleet
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if metrics_port is not None:
        import prometheus_client

        prometheus_client.start_http_server(metrics_port)
    from clusterpki.handlers import build_registry

    kopf.run(registry=build_registry(csr_policy=policy is not None), memo=kopf.Memo(csr_policy=policy, namespaces=namespaces),
             clusterwide=not namespaces, namespaces=namespaces, standalone=standalone,
             liveness_endpoint=liveness)
    return 0


def parse_policy(value: str | None, namespaces: list[str]) -> tuple[str, str] | None:
    """``NS/NAME`` of the ClusterPKI whose ``spec.kubelet`` governs this cluster's kubelet CSRs."""
    if value is None:
        return None
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise UserError(f"--csr-policy {value!r} is not NAMESPACE/NAME")
    if namespaces and namespace not in namespaces:
        raise UserError(f"--csr-policy {value}: namespace {namespace} is not among the watched namespaces")
    return namespace, name
