"""``clusterpki run``: compose the operator's handlers and start Kopf with the in-cluster config or
the current kubeconfig.

The ClusterPKI controller always runs; the kubelet CSR handlers join it only with ``--csr-policy``,
so without one the operator never even reads a CSR.
"""

from __future__ import annotations

import logging

import kopf

from clusterpki.errors import UserError
from clusterpki.kube.api import connection_info, load_configuration


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

        from clusterpki.csr import metrics  # noqa: F401  (its family is served, at 0, without a CSR policy too)

        prometheus_client.start_http_server(metrics_port)
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


def build_registry(csr_policy: bool) -> kopf.OperatorRegistry:
    """The handlers of one operator, on a registry of their own."""
    from clusterpki.controller import handlers as controller

    registry = kopf.OperatorRegistry()
    kopf.on.startup(registry=registry)(configure)
    kopf.on.login(registry=registry)(login)
    controller.register(registry)
    if csr_policy:
        from clusterpki.csr import handlers as csr

        csr.register(registry)
    return registry


def configure(settings: kopf.OperatorSettings, **_: object) -> None:
    """Kopf settings for this operator: no Events of Kopf's own, no cluster-wide scans."""
    settings.posting.enabled = False  # Events are posted by the store, explicitly
    # No cluster-wide scans of namespaces and CRDs: they need RBAC the operator has no use for, and
    # the namespaces to serve are given exactly (-n) or are all of them (-A).
    settings.scanning.disabled = True


def login(**_: object) -> kopf.ConnectionInfo:
    """Kopf logs in with exactly the credentials the Secrets store uses."""
    return kopf.ConnectionInfo(**connection_info(load_configuration()))
