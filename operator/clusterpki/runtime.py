"""``clusterpki run``: start the operator (Kopf) with the in-cluster config or the current kubeconfig."""

from __future__ import annotations

import logging

import kopf

from clusterpki.errors import UserError
from clusterpki.store import load_configuration


def run(namespaces: list[str], standalone: bool, liveness: str | None, verbose: bool) -> int:
    try:
        load_configuration()
    except Exception as exc:  # the client raises several kinds for a missing or broken kubeconfig
        raise UserError(f"cannot load Kubernetes credentials (in-cluster or KUBECONFIG): {exc}") from None
    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    import clusterpki.handlers  # noqa: F401  (registers the handlers)

    kopf.run(clusterwide=not namespaces, namespaces=namespaces, standalone=standalone,
             liveness_endpoint=liveness)
    return 0
