"""The CLI's cluster paths: ``check-expiration -n NS NAME`` against the emulator."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import yaml

from tests.operator.test_issuance import CAS, ISSUER, LEAVES, pki


async def cli(*args: str, kubeconfig: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterpki", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def test_check_expiration_reads_a_clusterpki_s_secrets(operator, api, kubeconfig):
    await api.apply_pki(pki("alpha", validity={"certificate": "720h"}))
    await api.ready("team-a", "alpha")
    code, out, err = await cli("check-expiration", "-n", "team-a", "alpha", "-o", "json", kubeconfig=kubeconfig)
    assert code == 0, err
    items = {i["name"]: i for i in json.loads(out)["certificates"]}
    assert set(items) == LEAVES | CAS
    assert {name: items[name]["certificateAuthority"] for name in LEAVES} == \
        {name: ISSUER.get(name, "ca") for name in LEAVES}
    assert items["ca"]["certificateAuthority"] == "(self-signed)"
    assert 29 * 86400 < items["admin"]["residualSeconds"] <= 30 * 86400

    code, out, err = await cli("check-expiration", "-n", "team-a", "alpha", kubeconfig=kubeconfig)
    assert code == 0 and out.splitlines()[0].split()[0] == "CERTIFICATE"


async def test_check_expiration_errors_are_one_sentence(emulator, kubeconfig, tmp_path):
    code, _, err = await cli("check-expiration", "-n", "team-a", "missing", kubeconfig=kubeconfig)
    assert (code, err) == (1, "clusterpki: error: no Secrets of ClusterPKI team-a/missing were found\n")

    unreachable = tmp_path / "unreachable"
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:1"
    unreachable.write_text(yaml.safe_dump(config))
    code, _, err = await cli("check-expiration", "-n", "team-a", "alpha", kubeconfig=unreachable)
    assert code == 1
    assert err.startswith("clusterpki: error: cannot read the Secrets of ClusterPKI team-a/alpha: list Secrets of "
                          "team-a/alpha failed") and err.count("\n") == 1 and "Traceback" not in err
