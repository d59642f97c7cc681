"""kubeadm's on-disk layout (``/etc/kubernetes``): which file holds what, reading and writing it
atomically, ``clusterpki render`` and ``check-expiration``."""
