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
# Below /var/lib/kubelet: why the kubelet must restart, written before what it must reread and removed once
# a restart succeeded, so that an agent stopped in between owes that restart after its own.
RESTART_OWED = "pki/.clusterpki-restart-owed"


class Files(NamedTuple):
    """Where one node's kubelet files are: kubeadm's ``/etc/kubernetes`` and the kubelet's root dir."""

    etc: Path
    kubelet: Path

    @property
    def control_plane(self) -> bool:
        return (self.etc / CA_KEY).exists()

    def write_client_ca(self, ca: x509.Certificate) -> bool:
        """Write the kubelet's client CA file if it is not ``ca`` alone; whether it was written."""
        return bool(writer.write(self.etc, {CLIENT_CA: writer.FileContent(pem_bundle([ca]), 0o644)}, set()))

    def kubeconfig_cas(self) -> list[x509.Certificate]:
        """The CAs ``kubelet.conf`` trusts the apiserver with (every cluster of it)."""
        found = []
        for data in _ca_data(self._kubeconfig(), self.etc):
            try:
                found += x509.load_pem_x509_certificates(data)
            except ValueError:
                pass  # not PEM: rewritten with the CA's data
        return found

    def write_kubeconfig_ca(self, ca: x509.Certificate) -> None:
        """``kubelet.conf`` with ``ca`` as every cluster's CA data, the rest as it was."""
        config = self._kubeconfig()
        for entry in config.get("clusters") or []:
            cluster = entry.get("cluster") or {}
            cluster.pop("certificate-authority", None)
            cluster["certificate-authority-data"] = base64.b64encode(pem_bundle([ca])).decode()
        writer.write(self.etc, {KUBECONFIG: writer.FileContent(documents.dump(config).encode(), 0o600)}, set())

    def client_certificate(self) -> x509.Certificate | None:
        """The kubelet's client certificate (the first of its file), or None when it has none readable.
        UserError when kubelet.conf does not read it from ``kubelet-client-current.pem``: a certificate
        embedded there, or in another file, is one the agent cannot replace."""
        users = self._kubeconfig().get("users") or []
        paths = {str((u.get("user") or {}).get(k, "")) for u in users for k in ("client-certificate", "client-key")}
        current = str(self.kubelet / CLIENT_CURRENT)
        if paths != {current}:
            raise UserError(f"{self.etc / KUBECONFIG} must read the kubelet's client certificate and key from "
                            f"{current}, as kubeadm writes it (it names {', '.join(sorted(paths)) or 'none'})")
        try:
            return x509.load_pem_x509_certificates((self.kubelet / CLIENT_CURRENT).read_bytes())[0]
        except (OSError, ValueError):
            return None

    def owe_restart(self, why: str) -> None:
        path = self.kubelet / RESTART_OWED
        owed = path.read_text() if path.exists() else ""
        path.write_text("; ".join(filter(None, [owed, why])))

    def restart_owed(self) -> str | None:
        path = self.kubelet / RESTART_OWED
        return (path.read_text() or "the agent stopped before its restart") if path.exists() else None

    def restart_done(self) -> None:
        (self.kubelet / RESTART_OWED).unlink(missing_ok=True)

    def write_client_certificate(self, chain: bytes, key: keys.PrivateKey, now: datetime) -> Path:
        """A new ``kubelet-client-<time>.pem`` (the certificate, its chain, the key) and the
        ``kubelet-client-current.pem`` symlink moved to it in one rename."""
        name = f"kubelet-client-{now.strftime('%Y-%m-%d-%H-%M-%S')}.pem"
        directory = self.kubelet / "pki"
        writer.write(directory, {name: writer.FileContent(chain + keys.private_pem(key), 0o600)}, set())
        link = directory / ".kubelet-client-current.pem.new"
        link.unlink(missing_ok=True)
        os.symlink(name, link)  # relative: right wherever the directory is seen from
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


def _ca_data(config: dict, base: Path) -> list[bytes]:
    found = []
    for entry in config.get("clusters") or []:
        cluster = entry.get("cluster") or {}
        if cluster.get("certificate-authority-data"):
            found.append(base64.b64decode(cluster["certificate-authority-data"]))
        elif cluster.get("certificate-authority"):
            path = Path(cluster["certificate-authority"])
            try:  # relative to the kubeconfig's directory, as kubectl and client-go read it
                found.append((path if path.is_absolute() else base / path).read_bytes())
            except OSError:
                found.append(b"")  # unreadable: rewritten with the CA's data
    return [data for data in found if data]
