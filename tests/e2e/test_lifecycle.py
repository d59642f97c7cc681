"""The certificate lifecycle on a real kube-apiserver, with real timers: renewal on time, renewal on
demand, drift repair, lost and restored CAs, and Secrets that belong to another ClusterPKI."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.e2e.conftest import pki
from tests.helpers import CAS, FAMILY, LEAVES
from tests.kube import Recorder, cert_of
from tests.runners import cli

SHORT = {"validity": {"certificate": "20s"}, "renewBefore": "15s"}  # renewal 5 s after issuance


def parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


async def test_leaves_are_renewed_on_time_with_new_keys_once_per_window(operator, api, namespace):
    async with Recorder(api, "secrets", namespace) as recorder:
        await api.apply_pki(pki("alpha", namespace, **SHORT))
        obj = await api.ready(namespace, "alpha")
        first = await api.secrets_of(namespace, "alpha")
        due = parse(obj["status"]["nextRenewal"])
        entries = {e["name"]: e for e in obj["status"]["certificates"]}
        assert all(parse(entries[c]["renewalTime"]) == parse(entries[c]["notAfter"]) - timedelta(seconds=15)
                   for c in LEAVES)

        async def all_renewed():
            now = await api.serials(namespace, "alpha")
            return all(now[c] != cert_of(first[c]).serial_number for c in LEAVES)
        await api.wait_for(all_renewed, timeout=15, what="every leaf renewed")
        assert datetime.now(timezone.utc) - due < timedelta(seconds=4), "renewed within seconds of renewalTime"

        now = await api.secrets_of(namespace, "alpha")
        assert {c: now[c]["data"] for c in CAS | {"sa"}} == {c: first[c]["data"] for c in CAS | {"sa"}}
        assert all(now[c]["data"]["tls.key"] == first[c]["data"]["tls.key"] for c in LEAVES), \
            "a renewal keeps the key, as kubeadm's does: a reader never sees a new certificate beside an old key"
        old, new = cert_of(first["apiserver"]).serial_number, cert_of(now["apiserver"]).serial_number
        await api.wait_for(lambda: api.has_event(namespace, "Renewed", f"Renewed apiserver (serial {old:X} -> "
                                                 f"{new:X}): it is due for renewal"), what="the Renewed Event")
        assert parse((await api.ready(namespace, "alpha"))["status"]["nextRenewal"]) > due
    # One renewal per window: each leaf Secret was created once and replaced once, by the operator.
    for component in LEAVES:
        kinds = [kind for kind, o in recorder.events if o["metadata"]["name"] == f"alpha-{component}"]
        assert kinds == ["ADDED", "MODIFIED"], component


async def test_renewal_continues_after_a_restart(operator, api, namespace):
    await api.apply_pki(pki("alpha", namespace, **SHORT))
    await api.ready(namespace, "alpha")
    first = await api.serials(namespace, "alpha")
    await operator.restart()

    async def renewed():
        return (await api.serials(namespace, "alpha"))["apiserver"] != first["apiserver"]
    await api.wait_for(renewed, timeout=15, what="renewal after the restart")


async def test_renew_annotation_fires_once_per_value(operator, api, namespace):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    first = await api.serials(namespace, "alpha")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/renew": "apiserver,admin@1"}}}, namespace)

    async def handled():
        obj = await api.get("clusterpkis", "alpha", namespace)
        return (obj["status"].get("requests") or {}).get("renew") == "apiserver,admin@1"
    await api.wait_for(handled, what="the renew request")
    second = await api.serials(namespace, "alpha")
    assert {c for c in first if first[c] != second[c]} == {"apiserver", "admin"}

    await api.patch("clusterpkis", "alpha", {"metadata": {"labels": {"touched": "yes"}}}, namespace)
    await asyncio.sleep(1)
    assert await api.serials(namespace, "alpha") == second, "the same value does not fire again"

    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/renew": "nonsense@2"}}}, namespace)
    await api.wait_for(lambda: api.has_event(namespace, "InvalidRenewRequest", kind="Warning"),
                       what="the invalid request's Event")
    assert await api.serials(namespace, "alpha") == second


async def test_clusterpki_renew_command_renews_every_leaf(operator, api, namespace, cluster):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    first = await api.serials(namespace, "alpha")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterpki", "renew", "-n", namespace, "alpha",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig)})
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().startswith(f"Requested the renewal of all leaves of ClusterPKI {namespace}/alpha")

    async def all_renewed():
        now = await api.serials(namespace, "alpha")
        return all(now[c] != first[c] for c in LEAVES) and all(now[c] == first[c] for c in CAS)
    await api.wait_for(all_renewed, what="every leaf renewed on demand")

    renewed = await api.serials(namespace, "alpha")
    for wrong in ("apiserverr", "ca"):  # a typo, and a CA (rotated, never renewed): one line, exit 1, nothing asked
        code, out, err = await cli("renew", "-n", namespace, "alpha", "--component", wrong,
                                   "--kubeconfig", str(cluster.kubeconfig), kubeconfig=Path("/nonexistent"))
        assert code == 1 and err.count("\n") == 1 and f"--component {wrong}:" in err and "apiserver" in err, err
    obj = await api.get("clusterpkis", "alpha", namespace)
    assert not (obj["metadata"].get("annotations") or {}).get("pki.clusterpki.dev/renew", "").startswith(("apiserverr", "ca@"))
    assert await api.serials(namespace, "alpha") == renewed


async def test_drifted_leaves_are_repaired_within_seconds(operator, api, namespace):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    other_key = (await api.get("secrets", "alpha-admin", namespace))["data"]["tls.key"]
    etcd_pair = (await api.get("secrets", "alpha-etcd-healthcheck-client", namespace))["data"]

    # (A real apiserver refuses a kubernetes.io/tls Secret without tls.crt and tls.key.)
    await api.delete("secrets", "alpha-kube-proxy", namespace)
    await api.patch("secrets", "alpha-kube-scheduler", {"data": {"tls.crt": etcd_pair["tls.crt"],
                                                                 "tls.key": etcd_pair["tls.key"]}}, namespace)
    await api.patch("secrets", "alpha-apiserver", {"data": {"tls.crt": base64.b64encode(b"junk").decode()}},
                    namespace)
    await api.patch("secrets", "alpha-front-proxy-client", {"data": {"tls.key": other_key}}, namespace)

    async def repaired():
        found = await api.secrets_of(namespace, "alpha")
        try:
            return all(cert_of(found[c]) for c in ("kube-proxy", "apiserver")) and \
                found["front-proxy-client"]["data"]["tls.key"] != other_key and \
                found["kube-scheduler"]["data"]["tls.key"] != etcd_pair["tls.key"]
        except (KeyError, ValueError):
            return False
    await api.wait_for(repaired, timeout=10, what="the drifted Secrets repaired")
    for component in ("kube-proxy", "kube-scheduler", "apiserver", "front-proxy-client"):
        await api.wait_for(lambda c=component: api.has_event(namespace, "Reissued", f"Re-issued {c} "),
                           what=f"{component}'s Event")
    reasons = {m.split(" (serial")[0]: m.split("): ", 1)[1] for _, r, m in await api.events(namespace)
               if r == "Reissued"}
    assert reasons["Re-issued kube-proxy"] == "its Secret was missing"
    assert reasons["Re-issued kube-scheduler"] == "it is not signed by its CA"
    assert reasons["Re-issued apiserver"] == "its Secret cannot be used (tls.crt is not a PEM certificate)"
    assert reasons["Re-issued front-proxy-client"] == "its private key does not match the certificate"
    await api.ready(namespace, "alpha")


async def test_a_missing_ca_is_never_regenerated_and_is_recovered_by_rotation(operator, api, namespace):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    await api.delete("secrets", "alpha-etcd-ca", namespace)
    obj = await api.ready(namespace, "alpha", status="False", timeout=10)
    condition = obj["status"]["conditions"][0]
    assert condition["reason"] == "CAMissing"
    assert condition["message"].startswith("CA Secret alpha-etcd-ca is missing; a CA is never regenerated silently")
    assert await api.get("secrets", "alpha-etcd-ca", namespace) is None
    await api.wait_for(lambda: api.has_event(namespace, "CAMissing", condition["message"]), what="the Event")

    # Recovery only through an explicit rotation: a new etcd CA, and every leaf it issues re-issued.
    before = await api.serials(namespace, "alpha")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca": "etcd-ca"}}}, namespace)
    obj = await api.ready(namespace, "alpha", timeout=10)
    assert obj["status"]["caRotation"]["trigger"] == "recovery"
    after = await api.secrets_of(namespace, "alpha")
    assert {c for c in before if before[c] != cert_of(after[c]).serial_number} == set(FAMILY["etcd-ca"])
    for leaf in FAMILY["etcd-ca"]:
        cert_of(after[leaf]).verify_directly_issued_by(cert_of(after["etcd-ca"]))


async def test_a_restored_ca_secret_is_noticed(operator, api, namespace):
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    saved = await api.get("secrets", "alpha-etcd-ca", namespace)
    await api.delete("secrets", "alpha-etcd-ca", namespace)
    await api.ready(namespace, "alpha", status="False", timeout=10)
    await api.create("secrets", {"metadata": {"name": "alpha-etcd-ca", "labels": saved["metadata"]["labels"]},
                                 "type": saved["type"], "data": saved["data"]}, namespace)
    await api.ready(namespace, "alpha", timeout=10)


async def test_a_ca_of_another_clusterpki_is_never_taken(operator, api, namespace):
    await api.apply_pki(pki("x", namespace))
    await api.ready(namespace, "x")
    before = await api.get("secrets", "x-etcd-ca", namespace)
    await api.apply_pki(pki("x-etcd", namespace))  # its "ca" Secret would be named x-etcd-ca, which is x's
    obj = await api.ready(namespace, "x-etcd", status="False", timeout=10)
    assert obj["status"]["conditions"][0]["reason"] == "SecretConflict"
    assert await api.get("secrets", "x-etcd-ca", namespace) == before
    await api.ready(namespace, "x")
