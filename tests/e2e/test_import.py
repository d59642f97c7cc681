"""``clusterpki import`` on a real kube-apiserver, run as a user runs it with their kubeconfig: a kubeadm
directory made by ``clusterpki render`` and one made with the ``openssl`` CLI alone are taken over, and the
operator then keeps, renews and rotates them without ever making a CA of its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clusterpki.agent.verify import verify
from clusterpki.kube import secrets
from clusterpki.kubeadm import layout
from clusterpki.pki import spec
from clusterpki.pki.record import Record

from tests import kubeadm_openssl
from tests.helpers import document, openssl, render
from tests.kube import cert_of, decode
from tests.runners import cli

CA_FILES = {"ca": "pki/ca.crt", "etcd-ca": "pki/etcd/ca.crt", "front-proxy-ca": "pki/front-proxy-ca.crt"}
SELECTOR = "pki.clusterpki.dev/cluster-pki=taken"


@pytest.fixture(scope="module", params=["render", "openssl"])
def kubeadm_dir(request, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "openssl":
        made = kubeadm_openssl.make(tmp / "etc", "cp-1", "192.0.2.10", "api.example.com:6443")
        for key in ("pki/apiserver.key", "pki/etcd/server.key", "pki/ca.key"):  # as `openssl genpkey` writes them
            openssl("pkey", "-in", str(made / key), "-out", str(made / f"{key}.pkcs8"))
            (made / f"{key}.pkcs8").replace(made / key)
            assert b"BEGIN PRIVATE KEY" in (made / key).read_bytes()
        return made
    body = document("demo", controlPlaneEndpoint="api.example.com:6443", apiServer={"certSANs": ["192.0.2.7"]},
                    etcd={"members": [{"name": "node-a", "ips": ["192.0.2.21"]}]})
    assert render(tmp, tmp / "etc", body) == 0
    return tmp / "etc"


def file_cert(directory: Path, file: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / file).read_bytes())


def agent_would_write(found: dict, obj: dict, directory: Path) -> set[str]:
    """The files an agent of the node would write, from the Secrets verified against the record as it does."""
    member = obj["spec"]["etcd"]["members"][0]["name"]
    stored = {c: secrets.StoredSecret.from_object(s) for c, s in found.items()}
    checked = verify(stored, Record.from_status(obj["status"]["record"]), None, spec.from_resource(obj), member)
    assert checked.pki is not None, checked
    return set(layout.to_write(directory, layout.files_for(checked.pki, member)))


async def nothing_written(api, namespace: str) -> bool:
    return (await api.list("secrets", namespace, labelSelector=SELECTOR) == []
            and await api.get("clusterpkis", "taken", namespace) is None)


async def test_import_keeps_the_cas_and_valid_leaves_and_the_operator_renews_and_rotates_them(
        operator, api, namespace, cluster, kubeadm_dir):
    code, out, err = await cli("import", "-n", namespace, "taken", "--dir", str(kubeadm_dir),
                               kubeconfig=cluster.kubeconfig)
    assert code == 0, err
    assert "Imported: created " in out and f"ClusterPKI {namespace}/taken" in out
    obj = await api.ready(namespace, "taken", timeout=30)
    found = await api.secrets_of(namespace, "taken")

    for ca, file in CA_FILES.items():
        assert cert_of(found[ca]) == file_cert(kubeadm_dir, file), f"{ca} is the file's CA"
        stored_key = serialization.load_pem_private_key(decode(found[ca], "tls.key"), None)
        file_key = serialization.load_pem_private_key((kubeadm_dir / file.replace(".crt", ".key")).read_bytes(), None)
        assert stored_key.private_numbers() == file_key.private_numbers(), f"{ca} has the file's key"
        assert "pki.clusterpki.dev/adopted" not in (found[ca]["metadata"].get("annotations") or {}), \
            "imported CAs are the operator's own, unlike brought-in ones"
    apiserver = next(c for c in obj["status"]["certificates"] if c["name"] == "apiserver")
    assert int(apiserver["serialNumber"], 16) == file_cert(kubeadm_dir, "pki/apiserver.crt").serial_number, \
        "a valid leaf is taken over, not re-issued"
    assert "kube-proxy" in found, "a leaf kubeadm never wrote is issued by the operator"
    issued = {name for kind, reason, message in await api.events(namespace) if reason == "Issued"
              for name in message.partition(": ")[2].split(", ")}
    assert issued <= {"kube-proxy"}, "nothing taken over was issued again"
    assert agent_would_write(found, obj, kubeadm_dir) <= {"kube-proxy.conf"}, \
        "an agent on the taken-over node rewrites nothing kubeadm wrote (so restarts nothing): keys in PKCS#8 " \
        "and kubeconfigs laid out by kubeadm hold the same material"

    before = await api.serials(namespace, "taken")
    code, _, err = await cli("renew", "-n", namespace, "taken", kubeconfig=cluster.kubeconfig)
    assert code == 0, err

    async def renewed():
        now = await api.serials(namespace, "taken")
        leaves = [c for c in before if c not in CA_FILES]
        return now if all(now[c] != before[c] for c in leaves) else None
    after = await api.wait_for(renewed, 30, "every leaf renewed")
    assert {ca: after[ca] for ca in CA_FILES} == {ca: before[ca] for ca in CA_FILES}, "no CA changes"
    found = await api.secrets_of(namespace, "taken")
    for ca, file in CA_FILES.items():
        assert cert_of(found[ca]) == file_cert(kubeadm_dir, file)
    file_ca = file_cert(kubeadm_dir, "pki/ca.crt")
    cert_of(found["apiserver"]).verify_directly_issued_by(file_ca)

    await api.patch("clusterpkis", "taken", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca-grace": "2s", "pki.clusterpki.dev/rotate-ca": "front-proxy-ca"}}}, namespace)

    async def rotated():
        got = await api.get("clusterpkis", "taken", namespace)
        return ((got.get("status") or {}).get("caRotation") or {}).get("phase") == "Completed"
    await api.wait_for(rotated, 40, "the imported front-proxy-ca rotated")
    final = await api.serials(namespace, "taken")
    assert final["front-proxy-ca"] != before["front-proxy-ca"] and final["front-proxy-ca-previous"] == before[
        "front-proxy-ca"], "imported CAs are rotatable"
    assert (final["ca"], final["etcd-ca"]) == (before["ca"], before["etcd-ca"])


async def test_a_dry_run_prints_the_spec_and_the_plan_and_writes_nothing(api, namespace, cluster, tmp_path):
    directory = kubeadm_openssl.make(tmp_path / "etc", "cp-1", "192.0.2.10", "api.example.com:6443")
    code, out, err = await cli("import", "-n", namespace, "taken", "--dir", str(directory), "--dry-run",
                               kubeconfig=cluster.kubeconfig)
    assert code == 0, err
    assert "  controlPlaneEndpoint  api.example.com:6443  the server of admin.conf" in out
    assert "    keyAlgorithm: RSA-2048\n" in out
    assert re.search(r"^  taken-apiserver +taken over from pki/apiserver.crt, valid until 20", out, re.MULTILINE)
    assert re.search(r"^  taken-kube-proxy +the operator issues it: it did not exist$", out, re.MULTILINE)
    assert out.endswith(f"Dry run: nothing was written. Without --dry-run, import creates 14 Secrets and "
                        f"ClusterPKI {namespace}/taken.\n")
    assert "PRIVATE KEY" not in out + err
    assert await nothing_written(api, namespace)


async def test_bad_input_and_conflicts_are_one_sentence_and_write_nothing(api, namespace, cluster, tmp_path):
    directory = kubeadm_openssl.make(tmp_path / "etc", "cp-1", "192.0.2.10", "api.example.com:6443")
    (directory / "pki/etcd/ca.key").rename(tmp_path / "ca.key")
    code, out, err = await cli("import", "-n", namespace, "taken", "--dir", str(directory),
                               kubeconfig=cluster.kubeconfig)
    assert (code, out) == (1, "")
    assert err == (f"clusterpki: error: {directory} is not a complete kubeadm PKI: pki/etcd/ca.key is missing; "
                   "nothing was imported\n")
    (tmp_path / "ca.key").rename(directory / "pki/etcd/ca.key")

    await api.create("secrets", {"metadata": {"name": "taken-admin"}, "stringData": {"a": "b"}}, namespace)
    code, _, err = await cli("import", "-n", namespace, "taken", "--dir", str(directory),
                             kubeconfig=cluster.kubeconfig)
    assert code == 1
    assert err == (f"clusterpki: error: cannot import into {namespace}/taken: Secret {namespace}/taken-admin exists "
                   "already; nothing was written\n")
    assert await nothing_written(api, namespace)
    assert await api.get("secrets", "taken-admin", namespace) is not None, "the stranger's Secret is untouched"

    code, _, err = await cli("import", "-n", "no-such-namespace", "taken", "--dir", str(directory),
                             kubeconfig=cluster.kubeconfig)
    assert (code, err) == (1, "clusterpki: error: namespace no-such-namespace does not exist; create it first\n")


async def test_a_create_that_fails_halfway_is_undone(api, namespace, cluster, tmp_path):
    """A user who may write Secrets but not ClusterPKIs: the apiserver refuses the last create, a real
    failure after every Secret was made, and the import must leave the namespace as it was."""
    directory = kubeadm_openssl.make(tmp_path / "etc", "cp-1", "192.0.2.10", "api.example.com:6443")
    await api.create("serviceaccounts", {"metadata": {"name": "importer"}}, namespace)
    await api.create("roles", {"metadata": {"name": "importer"}, "rules": [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "delete"]},
        {"apiGroups": ["pki.clusterpki.dev"], "resources": ["clusterpkis"], "verbs": ["get"]}]}, namespace)
    await api.create("rolebindings", {"metadata": {"name": "importer"}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "importer"}, "subjects": [
        {"kind": "ServiceAccount", "name": "importer", "namespace": namespace}]}, namespace)
    cluster_wide = f"{namespace}-importer"  # to read the namespace itself
    await api.create("clusterroles", {"metadata": {"name": cluster_wide}, "rules": [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"]}]})
    await api.create("clusterrolebindings", {"metadata": {"name": cluster_wide}, "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_wide}, "subjects": [
        {"kind": "ServiceAccount", "name": "importer", "namespace": namespace}]})
    kubeconfig = cluster.token_kubeconfig(tmp_path / "importer.kubeconfig", namespace, "importer")
    try:
        code, _, err = await cli("import", "-n", namespace, "taken", "--dir", str(directory), kubeconfig=kubeconfig)
    finally:
        await api.delete("clusterrolebindings", cluster_wide)
        await api.delete("clusterroles", cluster_wide)
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"clusterpki: error: cannot import into {namespace}/taken: create ClusterPKI "
                          f"{namespace}/taken failed: HTTP 403 Forbidden"), err
    assert err.endswith("; nothing was left behind\n"), err
    assert await nothing_written(api, namespace)
