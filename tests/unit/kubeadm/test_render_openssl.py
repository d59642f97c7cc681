"""A rendered PKI, checked with the real ``openssl`` CLI: chains, subjects, SANs, EKUs and key match."""

from __future__ import annotations

import base64
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tests.helpers import document, openssl, render

# (file below DIR/pki, CA file, subject, EKU text, SAN text or None)
FILES = [
    ("apiserver", "ca", "CN = kube-apiserver", "TLS Web Server Authentication",
     "DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local, "
     "DNS:api.example.com, IP Address:10.96.0.1, IP Address:192.0.2.7"),
    ("apiserver-kubelet-client", "ca", "O = system:masters, CN = kube-apiserver-kubelet-client",
     "TLS Web Client Authentication", None),
    ("apiserver-etcd-client", "etcd/ca", "CN = kube-apiserver-etcd-client", "TLS Web Client Authentication", None),
    ("front-proxy-client", "front-proxy-ca", "CN = front-proxy-client", "TLS Web Client Authentication", None),
    ("etcd/server", "etcd/ca", "CN = node-b", "TLS Web Server Authentication, TLS Web Client Authentication",
     "DNS:node-b.internal, DNS:localhost, IP Address:192.0.2.22, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"),
    ("etcd/peer", "etcd/ca", "CN = node-b", "TLS Web Server Authentication, TLS Web Client Authentication",
     "DNS:node-b.internal, DNS:localhost, IP Address:192.0.2.22, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"),
    ("etcd/healthcheck-client", "etcd/ca", "CN = kube-etcd-healthcheck-client", "TLS Web Client Authentication", None),
]
KUBECONFIGS = [
    ("admin.conf", "O = system:masters, CN = kubernetes-admin"),
    ("scheduler.conf", "CN = system:kube-scheduler"),
    ("controller-manager.conf", "CN = system:kube-controller-manager"),
    ("kube-proxy.conf", "CN = system:kube-proxy"),
]


@pytest.fixture(scope="module", params=["ECDSA-P256", "RSA-2048"])
def rendered(request, tmp_path_factory) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp(request.param)
    body = document("demo", keyAlgorithm=request.param, controlPlaneEndpoint="api.example.com:6443",
                    apiServer={"certSANs": ["192.0.2.7"]},
                    etcd={"members": [{"name": "node-a", "ips": ["192.0.2.21"]},
                                      {"name": "node-b", "dnsNames": ["node-b.internal"], "ips": ["192.0.2.22"]}]})
    assert render(tmp, tmp / "out", body, "--etcd-member", "node-b") == 0
    return request.param, tmp / "out"


def x509_field(path: Path, *options: str) -> str:
    return openssl("x509", "-in", str(path), "-noout", *options).strip()


def ext_value(path: Path, name: str) -> str | None:
    text = x509_field(path, "-ext", name)
    lines = [line.strip() for line in text.splitlines()[1:]]
    return ", ".join(lines) if lines else None


def public_key_of_cert(path: Path) -> str:
    return openssl("x509", "-in", str(path), "-noout", "-pubkey")


def public_key_of_key(path: Path) -> str:
    return openssl("pkey", "-in", str(path), "-pubout")


@pytest.mark.parametrize("name, ca, subject, eku, san", FILES, ids=[f[0] for f in FILES])
def test_leaf_files(rendered, name, ca, subject, eku, san):
    algorithm, out = rendered
    crt, key, ca_crt = out / f"pki/{name}.crt", out / f"pki/{name}.key", out / f"pki/{ca}.crt"
    assert openssl("verify", "-CAfile", str(ca_crt), str(crt)).strip() == f"{crt}: OK"
    assert x509_field(crt, "-subject", "-nameopt", "oneline") == f"subject={subject}"
    assert ext_value(crt, "extendedKeyUsage") == eku
    assert ext_value(crt, "subjectAltName") == san
    assert "critical" in x509_field(crt, "-ext", "basicConstraints").splitlines()[0]
    key_usage = x509_field(crt, "-ext", "keyUsage")
    assert "critical" in key_usage.splitlines()[0]
    expected_usage = "Digital Signature, Key Encipherment" if algorithm.startswith("RSA") else "Digital Signature"
    assert key_usage.splitlines()[1].strip() == expected_usage
    assert public_key_of_cert(crt) == public_key_of_key(key)
    text = x509_field(crt, "-text")
    assert "X509v3 Subject Key Identifier" in text and "X509v3 Authority Key Identifier" in text
    assert ("Public-Key: (2048 bit)" if algorithm == "RSA-2048" else "NIST CURVE: P-256") in text


def test_other_members_chain_does_not_cross_cas(rendered):
    _, out = rendered
    result = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out / "pki/ca.crt"), str(out / "pki/etcd/server.crt")],
        capture_output=True, text=True)
    assert result.returncode != 0, "an etcd certificate must not verify against the cluster CA"


@pytest.mark.parametrize("ca, cn", [("ca", "kubernetes"), ("etcd/ca", "etcd-ca"), ("front-proxy-ca", "front-proxy-ca")])
def test_ca_files(rendered, ca, cn):
    _, out = rendered
    crt = out / f"pki/{ca}.crt"
    assert openssl("verify", "-CAfile", str(crt), str(crt)).strip() == f"{crt}: OK"
    assert x509_field(crt, "-subject", "-nameopt", "oneline") == f"subject=CN = {cn}"
    assert x509_field(crt, "-ext", "basicConstraints").splitlines()[1].strip() == "CA:TRUE"
    assert "Certificate Sign" in x509_field(crt, "-ext", "keyUsage")
    assert public_key_of_cert(crt) == public_key_of_key(out / f"pki/{ca}.key")


@pytest.mark.parametrize("name, subject", KUBECONFIGS)
def test_kubeconfigs(rendered, tmp_path, name, subject):
    _, out = rendered
    config = yaml.safe_load((out / name).read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://api.example.com:6443"
    ca_pem = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca_pem == (out / "pki/ca.crt").read_bytes()
    user = config["users"][0]["user"]
    (tmp_path / "client.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
    (tmp_path / "client.key").write_bytes(base64.b64decode(user["client-key-data"]))
    crt = tmp_path / "client.crt"
    assert openssl("verify", "-CAfile", str(out / "pki/ca.crt"), str(crt)).strip().endswith("OK")
    assert x509_field(crt, "-subject", "-nameopt", "oneline") == f"subject={subject}"
    assert ext_value(crt, "extendedKeyUsage") == "TLS Web Client Authentication"
    assert public_key_of_cert(crt) == public_key_of_key(tmp_path / "client.key")
    assert config["current-context"] == config["contexts"][0]["name"]


def test_service_account_pair(rendered):
    _, out = rendered
    assert public_key_of_key(out / "pki/sa.key") == (out / "pki/sa.pub").read_text()


def test_private_files_are_0600_and_the_rest_0644(rendered):
    _, out = rendered
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 27
    for path in files:
        private = path.suffix in (".key", ".conf")
        assert path.stat().st_mode & 0o777 == (0o600 if private else 0o644), path
    assert not [p for p in out.rglob(".clusterpki-*")], "the staging directory must be gone"


def test_validity_is_the_spec_s(rendered):
    _, out = rendered
    dates = x509_field(out / "pki/apiserver.crt", "-startdate", "-enddate")
    start, end = (re.search(r"=(.*)", line).group(1) for line in dates.splitlines())
    fmt = "%b %d %H:%M:%S %Y GMT"
    lifetime = datetime.strptime(end, fmt) - datetime.strptime(start, fmt)
    assert lifetime.total_seconds() == 8760 * 3600 + 300  # one year, plus the five-minute backdate
