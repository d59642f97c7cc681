"""Prometheus metrics, served on ``/metrics`` with ``clusterpki run --metrics-port``.

They are fed from the status each reconcile computes, so they say what ``kubectl get`` says.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

from clusterpki.pki import times
from clusterpki.pki.certificates import Issue

CERT_LABELS = ["namespace", "cluster_pki", "component", "issuer"]
READY = Gauge("clusterpki_ready", "1 when the ClusterPKI is Ready, else 0.", ["namespace", "cluster_pki"])
ISSUANCE = Counter("clusterpki_issuance_total", "Certificates and keys issued, by why: new, missing, renewal, "
                   "on-demand, spec-change, rotation or repair.", ["namespace", "cluster_pki", "reason"])
RECONCILE_ERRORS = Counter("clusterpki_reconcile_errors_total", "Reconciles that ended not Ready, by reason.",
                           ["namespace", "cluster_pki", "reason"])
RECONCILES = Counter("clusterpki_reconcile_total", "Reconciles of ClusterPKIs, by outcome: ready, not_ready, or "
                     "stopped (the ClusterPKI or its namespace is being deleted).", ["result"])


class Certificate(NamedTuple):
    """One certificate's series: its component and issuer (labels), and its two timestamps."""

    component: str
    issuer: str
    not_after: float
    renewal: float


class Certificates:
    """The two per-certificate gauges, made at scrape time from one table of each ClusterPKI's
    certificates: a labelled child of a ``Gauge`` costs about half a KiB (its locks and value), and
    a fleet has two per certificate, 30 per ClusterPKI (about 17 MiB at 1,000 ClusterPKIs)."""

    def __init__(self) -> None:
        self.table: dict[tuple[str, str], tuple[Certificate, ...]] = {}

    def collect(self) -> Iterator[Metric]:
        not_after = GaugeMetricFamily("clusterpki_certificate_not_after_timestamp_seconds",
                                      "When each certificate expires (Unix time).", labels=CERT_LABELS)
        renewal = GaugeMetricFamily("clusterpki_certificate_renewal_timestamp_seconds",
                                    "When each certificate falls due for renewal (Unix time).", labels=CERT_LABELS)
        for (namespace, name), certificates in list(self.table.items()):
            for cert in certificates:
                labels = [namespace, name, cert.component, cert.issuer]
                not_after.add_metric(labels, cert.not_after)
                renewal.add_metric(labels, cert.renewal)
        yield not_after
        yield renewal


CERTIFICATES = Certificates()
REGISTRY.register(CERTIFICATES)


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
    if "certificates" in status:
        CERTIFICATES.table[(namespace, name)] = tuple(
            Certificate(e["name"], e["issuer"], _unix(e["notAfter"]), _unix(e["renewalTime"]))
            for e in status["certificates"])


def forget(namespace: str, name: str) -> None:
    """A deleted ClusterPKI has no series any more."""
    CERTIFICATES.table.pop((namespace, name), None)
    try:
        READY.remove(namespace, name)
    except KeyError:
        pass


def _unix(text: str) -> float:
    return times.parse_time(text).timestamp()
