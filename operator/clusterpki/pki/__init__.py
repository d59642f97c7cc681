"""The PKI engine: pure functions from a ClusterPKI spec to certificates, keys and kubeconfigs.

``catalog`` is the one table of every certificate's CN, O, usages and SANs. Nothing here knows
Kubernetes (no ``kopf``, ``kubernetes`` or ``aiohttp``; a test holds it to that), so the operator,
``clusterpki render`` and the agent share it.
"""
