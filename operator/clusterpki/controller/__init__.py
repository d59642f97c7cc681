"""The ClusterPKI controller: triggers (``handlers``), issuing (``issuance``, ``rotation``,
``requests``), readiness (``status``) and ``metrics``, one job each, as cert-manager splits its
certificates controller."""
