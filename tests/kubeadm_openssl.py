"""A kubeadm ``/etc/kubernetes`` made with the ``openssl`` CLI alone, the way kubeadm lays it out: RSA-2048
keys in PKCS#1, CAs for 10 years, leaves for 1 year, kubeadm's subjects and SANs (its etcd certificates
carry ``::1``, its apiserver the node name and advertise address), and the kubeconfigs ``admin.conf``,
``controller-manager.conf`` and ``scheduler.conf``, but no ``kube-proxy.conf``, which kubeadm does not write.
With ``node_files``, ``kubelet.conf`` is a bootstrapped kubelet's (it points at the client certificate
the kubelet rotates) and ``manifests/kube-apiserver.yaml`` names the release's image. From v1.29, as kubeadm (KEP-4214),
``admin.conf`` and ``apiserver-kubelet-client`` are in ``kubeadm:cluster-admins``, the etcd clients in no
group (before, all four are in ``system:masters``), and ``kubeadm init``'s node has ``super-admin.conf``.
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
         domain: str = "cluster.local", release: tuple[int, int] = (1, 24), init: bool = True,
         node_files: bool = False) -> Path:
    """Write kubeadm ``release``'s PKI for the control-plane node ``node`` below ``out`` (``init``: the node
    ``kubeadm init`` ran on); return ``out``."""
    split = release >= (1, 29)
    admins = "kubeadm:cluster-admins" if split else "system:masters"
    etcd_clients = "" if split else "/O=system:masters"
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
        ("pki/apiserver-kubelet-client", "pki/ca", f"/O={admins}/CN=kube-apiserver-kubelet-client", CLIENT, []),
        ("pki/apiserver-etcd-client", "pki/etcd/ca", f"{etcd_clients}/CN=kube-apiserver-etcd-client", CLIENT, []),
        ("pki/front-proxy-client", "pki/front-proxy-ca", "/CN=front-proxy-client", CLIENT, []),
        ("pki/etcd/server", "pki/etcd/ca", f"/CN={node}", BOTH, etcd_sans),
        ("pki/etcd/peer", "pki/etcd/ca", f"/CN={node}", BOTH, etcd_sans),
        ("pki/etcd/healthcheck-client", "pki/etcd/ca", f"{etcd_clients}/CN=kube-etcd-healthcheck-client", CLIENT, []),
        ("admin", "pki/ca", f"/O={admins}/CN=kubernetes-admin", CLIENT, []),
        *([("super-admin", "pki/ca", "/O=system:masters/CN=kubernetes-super-admin", CLIENT, [])] if split and init
          else []),
        ("controller-manager", "pki/ca", "/CN=system:kube-controller-manager", CLIENT, []),
        ("scheduler", "pki/ca", "/CN=system:kube-scheduler", CLIENT, []),
    ]
    for file, ca, subject, usage, sans in leaves:
        _leaf(out, file, ca, subject, usage, sans)
    _key(out / "pki" / "sa.key")
    openssl("rsa", "-in", str(out / "pki" / "sa.key"), "-pubout", "-out", str(out / "pki" / "sa.pub"))
    logins = [("admin", "kubernetes-admin"), ("controller-manager", "system:kube-controller-manager"),
              ("scheduler", "system:kube-scheduler"), *([("super-admin", "kubernetes-super-admin")] if split and init
                                                        else [])]
    for conf, user in logins:
        _kubeconfig(out, conf, user, f"https://{endpoint}")
        for ext in ("crt", "key"):
            (out / f"{conf}.{ext}").unlink()
    if node_files:
        _node_files(out, release, f"https://{endpoint}")
    return out


def _node_files(out: Path, release: tuple[int, int], server: str) -> None:
    _kubelet_conf(out, server)
    (out / "manifests").mkdir(exist_ok=True)
    (out / "manifests" / "kube-apiserver.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kube-apiserver", "namespace": "kube-system"},
        "spec": {"containers": [{"name": "kube-apiserver", "command": ["kube-apiserver"],
                                 "image": f"registry.k8s.io/kube-apiserver:v{release[0]}.{release[1]}.3"}]}}))


def _kubelet_conf(out: Path, server: str) -> None:
    """A bootstrapped kubelet's: its client pair is the file the kubelet rotates."""
    pem = "/var/lib/kubelet/pki/kubelet-client-current.pem"
    document = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode((out / "pki" / "ca.crt").read_bytes()).decode()}}],
        "users": [{"name": "default-auth", "user": {"client-certificate": pem, "client-key": pem}}],
        "contexts": [{"name": "default-context", "context": {"cluster": "kubernetes", "user": "default-auth"}}],
        "current-context": "default-context",
    }
    (out / "kubelet.conf").write_text(yaml.safe_dump(document))
    (out / "kubelet.conf").chmod(0o600)


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
