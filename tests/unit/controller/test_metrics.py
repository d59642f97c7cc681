"""The operator's metrics as a scrape reads them: the per-certificate gauges come from one table, follow
each reconcile's status, and go with a deleted ClusterPKI."""

from __future__ import annotations

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from clusterpki.controller import metrics

NOT_AFTER = "clusterpki_certificate_not_after_timestamp_seconds"
RENEWAL = "clusterpki_certificate_renewal_timestamp_seconds"


def scraped(name: str, namespace: str) -> dict[tuple[str, str, str], float]:
    """The samples of metric ``name`` for ClusterPKIs in ``namespace``, by (cluster_pki, component, issuer)."""
    found = {}
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("namespace") == namespace:
                labels = sample.labels
                found[(labels["cluster_pki"], labels.get("component", ""), labels.get("issuer", ""))] = sample.value
    return found


def status(*certificates: tuple[str, str, str, str], ready: str = "True") -> dict:
    return {"conditions": [{"type": "Ready", "status": ready, "reason": "Issued"}],
            "certificates": [{"name": n, "issuer": i, "notAfter": a, "renewalTime": r} for n, i, a, r in certificates]}


def test_each_certificate_has_its_expiry_and_renewal_and_the_clusterpki_its_readiness():
    metrics.observe("m-1", "a", status(("ca", "self-signed", "2036-01-01T00:00:00Z", "2033-01-01T00:00:00Z"),
                                       ("apiserver", "ca", "2027-01-01T00:00:00Z", "2026-09-01T00:00:00Z")), {})
    assert scraped(NOT_AFTER, "m-1") == {("a", "ca", "self-signed"): 2082758400.0,
                                         ("a", "apiserver", "ca"): 1798761600.0}
    assert scraped(RENEWAL, "m-1") == {("a", "ca", "self-signed"): 1988150400.0,
                                       ("a", "apiserver", "ca"): 1788220800.0}
    assert scraped("clusterpki_ready", "m-1") == {("a", "", ""): 1.0}


def test_a_certificate_no_longer_in_the_status_has_no_series_and_a_new_one_has():
    metrics.observe("m-2", "a", status(("ca", "self-signed", "2036-01-01T00:00:00Z", "2033-01-01T00:00:00Z"),
                                       ("etcd-server-m0", "etcd-ca", "2027-01-01T00:00:00Z", "2026-09-01T00:00:00Z")), {})
    metrics.observe("m-2", "a", status(("ca", "self-signed", "2036-01-01T00:00:00Z", "2033-01-01T00:00:00Z"),
                                       ("etcd-server-m1", "etcd-ca", "2027-02-01T00:00:00Z", "2026-10-01T00:00:00Z"),
                                       ready="False"), {})
    assert set(scraped(NOT_AFTER, "m-2")) == {("a", "ca", "self-signed"), ("a", "etcd-server-m1", "etcd-ca")}
    assert scraped("clusterpki_ready", "m-2") == {("a", "", ""): 0.0}


def test_a_status_without_certificates_keeps_the_last_ones_and_a_deleted_clusterpki_has_none():
    metrics.observe("m-3", "a", status(("ca", "self-signed", "2036-01-01T00:00:00Z", "2033-01-01T00:00:00Z")), {})
    metrics.observe("m-3", "b", status(("ca", "self-signed", "2036-01-01T00:00:00Z", "2033-01-01T00:00:00Z")), {})
    metrics.observe("m-3", "a", {"conditions": [{"type": "Ready", "status": "False", "reason": "ApiError"}]}, {})
    assert set(scraped(NOT_AFTER, "m-3")) == {("a", "ca", "self-signed"), ("b", "ca", "self-signed")}
    metrics.forget("m-3", "a")
    assert set(scraped(NOT_AFTER, "m-3")) == {("b", "ca", "self-signed")}
    assert set(scraped(RENEWAL, "m-3")) == {("b", "ca", "self-signed")}
    assert set(scraped("clusterpki_ready", "m-3")) == {("b", "", "")}
