"""The CLI's cluster paths on a real kube-apiserver, run as a user runs them with their kubeconfig."""

from __future__ import annotations

import json

import yaml

from tests.e2e.conftest import pki
from tests.helpers import CAS, ISSUER, LEAVES
from tests.runners import cli


async def test_check_expiration_reads_a_clusterpki_s_secrets(operator, api, namespace, cluster):
    await api.apply_pki(pki("alpha", namespace, validity={"certificate": "720h"}))
    await api.ready(namespace, "alpha")
    code, out, err = await cli("check-expiration", "-n", namespace, "alpha", "-o", "json",
                               kubeconfig=cluster.kubeconfig)
    assert code == 0, err
    items = {i["name"]: i for i in json.loads(out)["certificates"]}
    assert set(items) == LEAVES | CAS
    assert {name: items[name]["certificateAuthority"] for name in LEAVES} == {name: ISSUER[name] for name in LEAVES}
    assert items["ca"]["certificateAuthority"] == "(self-signed)"
    assert 29 * 86400 < items["admin"]["residualSeconds"] <= 30 * 86400

    code, out, err = await cli("check-expiration", "-n", namespace, "alpha", kubeconfig=cluster.kubeconfig)
    assert code == 0 and out.splitlines()[0].split()[0] == "CERTIFICATE"


async def test_check_expiration_errors_are_one_sentence(namespace, cluster, tmp_path):
    code, _, err = await cli("check-expiration", "-n", namespace, "missing", kubeconfig=cluster.kubeconfig)
    assert (code, err) == (1, f"clusterpki: error: no Secrets of ClusterPKI {namespace}/missing were found\n")

    unreachable = tmp_path / "unreachable"
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    unreachable.write_text(yaml.safe_dump(config))
    code, _, err = await cli("check-expiration", "-n", namespace, "alpha", kubeconfig=unreachable)
    assert code == 1
    assert err.startswith(f"clusterpki: error: cannot read the Secrets of ClusterPKI {namespace}/alpha: list "
                          f"Secrets of {namespace}/alpha failed") and err.count("\n") == 1 and "Traceback" not in err
