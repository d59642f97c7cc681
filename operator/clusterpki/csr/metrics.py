"""The CSR handlers' Prometheus metric, served with the controller's on ``--metrics-port``."""

from prometheus_client import Counter

CSR_DECISIONS = Counter("clusterpki_csr_decisions_total", "Kubelet CSR decisions made by the operator.",
                        ["signer", "decision", "reason"])
CSR_SIGNING_REFUSED = Counter("clusterpki_csr_signing_refused_total", "Approved kubelet CSRs the operator refused to "
                              "sign, because they fail a rule now, by reason.", ["signer", "reason"])
