"""clusterpki: a Kubernetes control-plane PKI, issued by an operator or rendered offline."""

__version__ = "0.1.0"
