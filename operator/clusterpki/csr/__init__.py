"""Kubelet CertificateSigningRequests: the approval and signing rules (``rules``), and their Kopf
handlers with state of their own (``handlers``)."""
