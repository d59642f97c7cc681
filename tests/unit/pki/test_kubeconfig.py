"""Kubeconfigs: rendered from a dumped skeleton, byte for byte what a dump of the whole document writes
(so that no stored kubeconfig reads as changed), and read back."""

from __future__ import annotations

import base64

import pytest
from clusterpki.pki import documents, engine, keys, kubeconfig, spec, times

from tests.unit.pki.test_engine import make_spec

SERVERS = ("https://10.0.0.1:6443", "https://[fd00::1]:6443", "https://api.example.com/x{0}y}", "https://a b:1")
USERS = ("system:kube-scheduler", "kubernetes-admin", "system:node:cp-0", "a{key}b", "'quoted' user", "- x",
         "CLUSTERPKICAFIELD")  # a user named as a marker: dumped whole


@pytest.fixture(scope="module")
def made() -> engine.PKI:
    return engine.build(make_spec(), engine.Existing(), times.now())


def whole_dump(server: str, user: str, pair, trust) -> bytes:
    context = f"{user}@{kubeconfig.CLUSTER_NAME}"
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return documents.dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": kubeconfig.CLUSTER_NAME, "cluster": {
            "server": server, "certificate-authority-data": b64(kubeconfig.pem_bundle(trust))}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(kubeconfig.pem_bundle(pair.certificates)),
                                          "client-key-data": b64(keys.private_pem(pair.key))}}],
        "contexts": [{"name": context, "context": {"cluster": kubeconfig.CLUSTER_NAME, "user": user}}],
        "current-context": context, "preferences": {}}).encode()


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("user", USERS)
def test_a_render_is_byte_for_byte_the_dump_of_the_whole_document(made, server, user):
    pair, trust = made.leaves["admin"], made.bundle("ca")
    rendered = kubeconfig.render(server, user, pair, trust)
    assert rendered == whole_dump(server, user, pair, trust)
    read_server, read_pair, read_trust = kubeconfig.read(rendered)
    assert (read_server, read_pair.cert, read_trust) == (server, pair.cert, list(trust))
    assert kubeconfig.is_plain(rendered)


def test_the_spec_s_own_endpoint_too(made):
    pki_spec: spec.Spec = made.spec
    pair = made.leaves["kube-scheduler"]
    assert kubeconfig.render(pki_spec.server_url, "system:kube-scheduler", pair, made.bundle("ca")) == \
        whole_dump(pki_spec.server_url, "system:kube-scheduler", pair, made.bundle("ca"))
