"""A kubeadm ``/etc/kubernetes`` made with the ``openssl`` CLI alone, the way kubeadm v1.24 lays it out: RSA-2048
keys in PKCS#1, CAs for 10 years, leaves for 1 year, kubeadm's subjects and SANs (its etcd certificates
carry ``::1``, its apiserver the node name and advertise address), and the kubeconfigs ``admin.conf``,
``controller-manager.conf`` and ``scheduler.conf``, but no ``kube-proxy.conf``, which kubeadm does not write.
Nothing of clusterpki is used to make it."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml

from tests.helpers import openssl

CAS = {"pki/ca": "kubernetes", "pki/etcd/ca": "etcd-ca", "pki/front-proxy-ca": "front-proxy-ca"}
SERVER, CLIENT, BOTH = "serverAuth", "clientAuth", "serverAuth,clientAuth"


def make(out: Path, node: str, advertise: str, endpoint: str, service_ip: str = "10.96.0.1",
         domain: str = "cluster.local") -> Path:
    """Write kubeadm's PKI for the control-plane node ``node`` below ``out``; return ``out``."""
    (out / "pki" / "etcd").mkdir(parents=True, exist_ok=True)
    for file, cn in CAS.items():
        _key(out / f"{file}.key")
        openssl("req", "-x509", "-new", "-key", str(out / f"{file}.key"), "-subj", f"/CN={cn}", "-days", "3650",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
                "-out", str(out / f"{file}.crt"))
    host = endpoint.rsplit(":", 1)[0]
    apiserver_sans = [f"DNS:{node}", "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                      f"DNS:kubernetes.default.svc.{domain}", f"IP:{service_ip}", f"IP:{advertise}",
                      f"{'IP' if host[0].isdigit() else 'DNS'}:{host}"]
    etcd_sans = [f"DNS:{node}", "DNS:localhost", f"IP:{advertise}", "IP:127.0.0.1", "IP:0:0:0:0:0:0:0:1"]
    leaves = [
        ("pki/apiserver", "pki/ca", "/CN=kube-apiserver", SERVER, apiserver_sans),
        ("pki/apiserver-kubelet-client", "pki/ca", "/O=system:masters/CN=kube-apiserver-kubelet-client", CLIENT, []),
        ("pki/apiserver-etcd-client", "pki/etcd/ca", "/CN=kube-apiserver-etcd-client", CLIENT, []),
        ("pki/front-proxy-client", "pki/front-proxy-ca", "/CN=front-proxy-client", CLIENT, []),
        ("pki/etcd/server", "pki/etcd/ca", f"/CN={node}", BOTH, etcd_sans),
        ("pki/etcd/peer", "pki/etcd/ca", f"/CN={node}", BOTH, etcd_sans),
        ("pki/etcd/healthcheck-client", "pki/etcd/ca", "/CN=kube-etcd-healthcheck-client", CLIENT, []),
        ("admin", "pki/ca", "/O=system:masters/CN=kubernetes-admin", CLIENT, []),
        ("controller-manager", "pki/ca", "/CN=system:kube-controller-manager", CLIENT, []),
        ("scheduler", "pki/ca", "/CN=system:kube-scheduler", CLIENT, []),
    ]
    for file, ca, subject, usage, sans in leaves:
        _leaf(out, file, ca, subject, usage, sans)
    _key(out / "pki" / "sa.key")
    openssl("rsa", "-in", str(out / "pki" / "sa.key"), "-pubout", "-out", str(out / "pki" / "sa.pub"))
    for conf, user in (("admin", "kubernetes-admin"), ("controller-manager", "system:kube-controller-manager"),
                       ("scheduler", "system:kube-scheduler")):
        _kubeconfig(out, conf, user, f"https://{endpoint}")
    for conf in ("admin", "controller-manager", "scheduler"):
        for ext in ("crt", "key"):
            (out / f"{conf}.{ext}").unlink()
    return out


def _key(path: Path) -> None:
    openssl("genrsa", "-traditional", "-out", str(path), "2048")
    path.chmod(0o600)


def _leaf(out: Path, file: str, ca: str, subject: str, usage: str, sans: list[str]) -> None:
    key, csr, extensions = out / f"{file}.key", out / f"{file}.csr", out / f"{file}.ext"
    _key(key)
    openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
    lines = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={usage}", "authorityKeyIdentifier=keyid"]
    if sans:
        lines.append(f"subjectAltName={','.join(sans)}")
    extensions.write_text("\n".join(lines) + "\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(out / f"{ca}.crt"), "-CAkey", str(out / f"{ca}.key"),
            "-set_serial", f"0x{os.urandom(8).hex()}", "-days", "365",
            "-extfile", str(extensions), "-out", str(out / f"{file}.crt"))
    csr.unlink()
    extensions.unlink()


def _kubeconfig(out: Path, conf: str, user: str, server: str) -> None:
    def data(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    document = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {"server": server,
                                                       "certificate-authority-data": data(out / "pki" / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate-data": data(out / f"{conf}.crt"),
                                          "client-key-data": data(out / f"{conf}.key")}}],
        "contexts": [{"name": f"{user}@kubernetes", "context": {"cluster": "kubernetes", "user": user}}],
        "current-context": f"{user}@kubernetes",
    }
    path = out / f"{conf}.conf"
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
