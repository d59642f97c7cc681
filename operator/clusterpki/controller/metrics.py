"""Prometheus metrics, served on ``/metrics`` with ``clusterpki run --metrics-port``.

They are fed from the status each reconcile computes, so they say what ``kubectl get`` says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from clusterpki.pki import times
from clusterpki.pki.certificates import Issue

CERT_LABELS = ["namespace", "cluster_pki", "component", "issuer"]
NOT_AFTER = Gauge("clusterpki_certificate_not_after_timestamp_seconds",
                  "When each certificate expires (Unix time).", CERT_LABELS)
RENEWAL = Gauge("clusterpki_certificate_renewal_timestamp_seconds",
                "When each certificate falls due for renewal (Unix time).", CERT_LABELS)
READY = Gauge("clusterpki_ready", "1 when the ClusterPKI is Ready, else 0.", ["namespace", "cluster_pki"])
ISSUANCE = Counter("clusterpki_issuance_total", "Certificates and keys issued, by why: new, missing, renewal, "
                   "on-demand, spec-change, rotation or repair.", ["namespace", "cluster_pki", "reason"])
RECONCILE_ERRORS = Counter("clusterpki_reconcile_errors_total", "Reconciles that ended not Ready, by reason.",
                           ["namespace", "cluster_pki", "reason"])
RECONCILES = Counter("clusterpki_reconcile_total", "Reconciles of ClusterPKIs, by outcome: ready, not_ready, or "
                     "stopped (the ClusterPKI or its namespace is being deleted).", ["result"])

_series: dict[tuple[str, str], set[tuple[str, str]]] = {}  # the certificate series of each ClusterPKI


def observe(namespace: str, name: str, status: Mapping[str, Any], issued: Mapping[str, Issue]) -> None:
    """Record one reconcile's outcome."""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    if ready is not None:
        READY.labels(namespace, name).set(1 if ready["status"] == "True" else 0)
        RECONCILES.labels("ready" if ready["status"] == "True" else "not_ready").inc()
        if ready["status"] != "True":
            RECONCILE_ERRORS.labels(namespace, name, ready.get("reason", "")).inc()
    for issue in issued.values():
        ISSUANCE.labels(namespace, name, issue.why.value).inc()
    if "certificates" not in status:
        return
    series = set()
    for entry in status["certificates"]:
        labels = (namespace, name, entry["name"], entry["issuer"])
        NOT_AFTER.labels(*labels).set(_unix(entry["notAfter"]))
        RENEWAL.labels(*labels).set(_unix(entry["renewalTime"]))
        series.add((entry["name"], entry["issuer"]))
    for stale in _series.get((namespace, name), set()) - series:
        _remove((namespace, name, *stale))
    _series[(namespace, name)] = series


def forget(namespace: str, name: str) -> None:
    """A deleted ClusterPKI has no series any more."""
    for component, issuer in _series.pop((namespace, name), set()):
        _remove((namespace, name, component, issuer))
    try:
        READY.remove(namespace, name)
    except KeyError:
        pass


def _remove(labels: tuple[str, ...]) -> None:
    for gauge in (NOT_AFTER, RENEWAL):
        try:
            gauge.remove(*labels)
        except KeyError:
            pass


def _unix(text: str) -> float:
    return times.parse_time(text).timestamp()
