"""A node's kubelet files in kubeadm's layout, as the node agent reads and writes them.

- ``/etc/kubernetes/pki/ca.crt``: the kubelet's ``clientCAFile`` (kubeadm's KubeletConfiguration). The
  kubelet reloads it within a second (``bench/kubelet_reloads.sh``). On a control-plane node the
  control-plane agent owns it (it is also kube-controller-manager's signing certificate), so the node
  agent leaves it alone there.
- ``/etc/kubernetes/kubelet.conf``: its cluster's ``certificate-authority-data`` verifies the
  apiserver. The kubelet reads it at start only.
- ``/var/lib/kubelet/pki/kubelet-client-current.pem``: the kubelet's client certificate and key in one
  file, a symlink to ``kubelet-client-<time>.pem`` (the kubelet's own naming, so its certificate
  manager rotates it later as it would its own). The kubelet reads it at start (a replaced one went
  unused for 30 s and more): a new one needs a restart.
"""

from __future__ import annotations

import base64
import os
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from cryptography import x509

from clusterpki.errors import UserError
from clusterpki.kubeadm import writer
from clusterpki.pki import documents, keys
from clusterpki.pki.kubeconfig import pem_bundle

CLIENT_CA = "pki/ca.crt"  # below /etc/kubernetes
CA_KEY = "pki/ca.key"  # present on a control-plane node only
KUBECONFIG = "kubelet.conf"  # below /etc/kubernetes
CLIENT_CURRENT = "pki/kubelet-client-current.pem"  # below /var/lib/kubelet


class Files(NamedTuple):
    """Where one node's kubelet files are: kubeadm's ``/etc/kubernetes`` and the kubelet's root dir."""

    etc: Path
    kubelet: Path

    @property
    def control_plane(self) -> bool:
        return (self.etc / CA_KEY).exists()

    def client_ca(self) -> bytes | None:
        path = self.etc / CLIENT_CA
        return path.read_bytes() if path.exists() else None

    def write_client_ca(self, ca: x509.Certificate) -> bool:
        """Write the kubelet's client CA file if it is not ``ca`` alone; whether it was written."""
        return bool(writer.write(self.etc, {CLIENT_CA: writer.FileContent(pem_bundle([ca]), 0o644)}, set()))

    def kubeconfig_cas(self) -> list[x509.Certificate]:
        """The CAs ``kubelet.conf`` trusts the apiserver with (every cluster of it)."""
        return [c for data in _ca_data(self._kubeconfig()) for c in x509.load_pem_x509_certificates(data)]

    def write_kubeconfig_ca(self, ca: x509.Certificate) -> None:
        """``kubelet.conf`` with ``ca`` as every cluster's CA data, the rest as it was."""
        config = self._kubeconfig()
        for entry in config.get("clusters") or []:
            cluster = entry.get("cluster") or {}
            cluster.pop("certificate-authority", None)
            cluster["certificate-authority-data"] = base64.b64encode(pem_bundle([ca])).decode()
        writer.write(self.etc, {KUBECONFIG: writer.FileContent(documents.dump(config).encode(), 0o600)}, set())

    def client_certificate(self) -> x509.Certificate | None:
        """The kubelet's client certificate (the first of its file), or None when it has none readable."""
        try:
            return x509.load_pem_x509_certificates((self.kubelet / CLIENT_CURRENT).read_bytes())[0]
        except (OSError, ValueError):
            return None

    def write_client_certificate(self, chain: bytes, key: keys.PrivateKey, now: datetime) -> Path:
        """A new ``kubelet-client-<time>.pem`` (the certificate, its chain, the key) and the
        ``kubelet-client-current.pem`` symlink moved to it in one rename."""
        name = f"kubelet-client-{now.strftime('%Y-%m-%d-%H-%M-%S')}.pem"
        directory = self.kubelet / "pki"
        writer.write(directory, {name: writer.FileContent(chain + keys.private_pem(key), 0o600)}, set())
        link = directory / ".kubelet-client-current.pem.new"
        link.unlink(missing_ok=True)
        os.symlink(directory / name, link)
        os.replace(link, directory / Path(CLIENT_CURRENT).name)
        return directory / name

    def _kubeconfig(self) -> dict:
        path = self.etc / KUBECONFIG
        try:
            config = documents.load(path.read_text())
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
        except documents.Error:
            raise UserError(f"{path} is not valid YAML") from None
        if not isinstance(config, dict) or not config.get("clusters"):
            raise UserError(f"{path} is not a kubeconfig with clusters")
        return config


def _ca_data(config: dict) -> list[bytes]:
    found = []
    for entry in config.get("clusters") or []:
        cluster = entry.get("cluster") or {}
        if cluster.get("certificate-authority-data"):
            found.append(base64.b64decode(cluster["certificate-authority-data"]))
        elif cluster.get("certificate-authority"):
            found.append(Path(cluster["certificate-authority"]).read_bytes())
    return found
