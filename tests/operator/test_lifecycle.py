"""The certificate lifecycle with real timers: renewal on time, renewal on demand, drift repair."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from datetime import datetime, timedelta, timezone

from tests.operator.test_issuance import CAS, LEAVES, cert_of, pki, serials

SHORT = {"validity": {"certificate": "20s"}, "renewBefore": "15s"}  # renewal 5 s after issuance


def keys_of(emulator, namespace: str) -> dict[str, str]:
    return {s["metadata"]["name"]: s["data"].get("tls.key") for s in emulator.list("secrets", namespace)}


def parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


async def test_leaves_are_renewed_on_time_with_new_keys(operator, api, emulator):
    await api.apply_pki(pki("alpha", **SHORT))
    obj = await api.ready("team-a", "alpha")
    first, first_keys = serials(emulator, "team-a", "alpha"), keys_of(emulator, "team-a")
    due = parse(obj["status"]["nextRenewal"])
    entries = {e["name"]: e for e in obj["status"]["certificates"]}
    assert all(parse(entries[c]["renewalTime"]) == parse(entries[c]["notAfter"]) - timedelta(seconds=15)
               for c in LEAVES)

    async def all_renewed():
        now = serials(emulator, "team-a", "alpha")
        return all(now[c] != first[c] for c in LEAVES)
    await api.wait_for(all_renewed, timeout=12, what="every leaf renewed")
    renewed_at = datetime.now(timezone.utc)
    assert renewed_at - due < timedelta(seconds=4), "renewed within a few seconds of renewalTime"

    now, now_keys = serials(emulator, "team-a", "alpha"), keys_of(emulator, "team-a")
    assert {c: now[c] for c in CAS} == {c: first[c] for c in CAS}, "the CAs are unchanged"
    assert all(now_keys[f"alpha-{c}"] != first_keys[f"alpha-{c}"] for c in LEAVES), "a new key each time"
    expected = f"Renewed apiserver (serial {first['apiserver']:X} -> {now['apiserver']:X}): it is due for renewal"
    await api.wait_for(lambda: _has_event(api, "Renewed", expected), what="the Renewed Event")
    obj = await api.ready("team-a", "alpha")
    assert parse(obj["status"]["nextRenewal"]) > due
    # One renewal per window: each leaf Secret was written once at creation and once at renewal.
    for component in LEAVES:
        writes = [w for w in emulator.writes() if w.path == f"/api/v1/namespaces/team-a/secrets/alpha-{component}"]
        assert [w.method for w in writes] == ["PUT"], component


async def test_renewal_continues_after_a_restart(operator, api, emulator):
    await api.apply_pki(pki("alpha", **SHORT))
    await api.ready("team-a", "alpha")
    first = serials(emulator, "team-a", "alpha")
    await operator.stop()
    await operator.start()

    async def renewed():
        return serials(emulator, "team-a", "alpha")["apiserver"] != first["apiserver"]
    await api.wait_for(renewed, timeout=12, what="renewal after the restart")


async def test_renew_annotation_fires_once_per_value(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    first = serials(emulator, "team-a", "alpha")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/renew": "apiserver,admin@1"}}}, "team-a")

    async def handled():
        obj = await api.get("clusterpkis", "alpha", "team-a")
        return obj["status"].get("renewRequest") == "apiserver,admin@1"
    await api.wait_for(handled, what="the renew request")
    second = serials(emulator, "team-a", "alpha")
    assert {c for c in first if first[c] != second[c]} == {"apiserver", "admin"}

    await api.patch("clusterpkis", "alpha", {"metadata": {"labels": {"touched": "yes"}}}, "team-a")
    await asyncio.sleep(1)
    assert serials(emulator, "team-a", "alpha") == second, "the same value does not fire again"

    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/renew": "nonsense@2"}}}, "team-a")
    await api.wait_for(lambda: _has_event(api, "InvalidRenewRequest"), what="the invalid request's Event")
    assert serials(emulator, "team-a", "alpha") == second


async def test_clusterpki_renew_command_renews_every_leaf(operator, api, emulator, kubeconfig):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    first = serials(emulator, "team-a", "alpha")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterpki", "renew", "-n", "team-a", "alpha",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().startswith("Requested the renewal of all leaves of ClusterPKI team-a/alpha")

    async def all_renewed():
        now = serials(emulator, "team-a", "alpha")
        return all(now[c] != first[c] for c in LEAVES) and all(now[c] == first[c] for c in CAS)
    await api.wait_for(all_renewed, what="every leaf renewed on demand")


async def test_drifted_leaves_are_repaired_within_seconds(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    other_key = emulator.get("secrets", "alpha-admin", "team-a")["data"]["tls.key"]

    await api.delete("secrets", "alpha-kube-proxy", "team-a")
    await api.patch("secrets", "alpha-kube-scheduler", {"data": None}, "team-a")  # emptied
    await api.patch("secrets", "alpha-apiserver", {"data": {"tls.crt": base64.b64encode(b"junk").decode()}},
                    "team-a")
    await api.patch("secrets", "alpha-front-proxy-client", {"data": {"tls.key": other_key}}, "team-a")

    async def repaired():
        found = {s["metadata"]["name"]: s for s in emulator.list("secrets", "team-a")}
        try:
            return all(cert_of(found[f"alpha-{c}"]) for c in ("kube-proxy", "kube-scheduler", "apiserver")) and \
                found["alpha-front-proxy-client"]["data"]["tls.key"] != other_key
        except (KeyError, ValueError):
            return False
    await api.wait_for(repaired, timeout=10, what="the drifted Secrets repaired")
    for component in ("kube-proxy", "kube-scheduler", "apiserver", "front-proxy-client"):
        await api.wait_for(lambda c=component: _has_event(api, "Reissued", f"Re-issued {c} "),
                           what=f"{component}'s Event")
    reasons = {m.split(" (serial")[0]: m.split("): ", 1)[1] for _, r, m in await api.events("team-a")
               if r == "Reissued"}
    assert reasons["Re-issued kube-proxy"] == "its Secret was missing"
    assert reasons["Re-issued kube-scheduler"] == "its Secret cannot be used (tls.crt is missing)"
    assert reasons["Re-issued apiserver"] == "its Secret cannot be used (tls.crt is not a PEM certificate)"
    assert reasons["Re-issued front-proxy-client"] == "its private key does not match the certificate"
    await api.ready("team-a", "alpha")


async def test_a_missing_ca_is_never_regenerated(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    await api.delete("secrets", "alpha-etcd-ca", "team-a")
    obj = await api.ready("team-a", "alpha", status="False", timeout=10)
    condition = obj["status"]["conditions"][0]
    assert condition["reason"] == "CAMissing"
    assert condition["message"].startswith("CA Secret alpha-etcd-ca is missing; a CA is never regenerated silently")
    assert emulator.get("secrets", "alpha-etcd-ca", "team-a") is None
    await api.wait_for(lambda: _has_event(api, "CAMissing", condition["message"]), what="the CAMissing Event")

    # Recovery only through an explicit rotation: a new etcd CA, and every leaf it issues re-issued.
    before = serials(emulator, "team-a", "alpha")
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {
        "pki.clusterpki.dev/rotate-ca": "etcd-ca"}}}, "team-a")
    obj = await api.ready("team-a", "alpha", timeout=10)
    assert obj["status"]["caRotation"]["trigger"] == "recovery"
    after = serials(emulator, "team-a", "alpha")
    etcd_family = {"apiserver-etcd-client", "etcd-server-etcd-0", "etcd-peer-etcd-0", "etcd-healthcheck-client"}
    assert {c for c in before if before[c] != after[c]} == etcd_family
    etcd_ca = cert_of(emulator.get("secrets", "alpha-etcd-ca", "team-a"))
    for leaf in etcd_family:
        cert_of(emulator.get("secrets", f"alpha-{leaf}", "team-a")).verify_directly_issued_by(etcd_ca)


async def test_the_operator_s_own_writes_do_not_trigger_reconciles(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    await asyncio.sleep(1.5)
    lists = [r for r in emulator.requests if r.method == "GET" and r.path == "/api/v1/namespaces/team-a/secrets"]
    assert len(lists) == 1, "one LIST at creation, none after the operator's own writes"


async def _has_event(api, reason: str, message: str = "") -> bool:
    return any(r == reason and m.startswith(message) for _, r, m in await api.events("team-a"))


async def test_a_restored_ca_secret_is_noticed(operator, api, emulator):
    await api.apply_pki(pki("alpha"))
    await api.ready("team-a", "alpha")
    saved = emulator.get("secrets", "alpha-etcd-ca", "team-a")
    await api.delete("secrets", "alpha-etcd-ca", "team-a")
    await api.ready("team-a", "alpha", status="False", timeout=10)
    restored = {k: v for k, v in saved.items() if k != "metadata"}
    restored["metadata"] = {"name": "alpha-etcd-ca", "labels": saved["metadata"]["labels"]}
    await api.create("secrets", restored, "team-a")
    await api.ready("team-a", "alpha", timeout=10)


async def test_a_ca_of_another_clusterpki_is_never_taken(operator, api, emulator):
    await api.apply_pki(pki("x"))
    await api.ready("team-a", "x")
    before = emulator.get("secrets", "x-etcd-ca", "team-a")
    await api.apply_pki(pki("x-etcd"))  # its "ca" Secret would be named x-etcd-ca, which is x's
    obj = await api.ready("team-a", "x-etcd", status="False", timeout=10)
    assert obj["status"]["conditions"][0]["reason"] == "SecretConflict"
    assert emulator.get("secrets", "x-etcd-ca", "team-a") == before
    await api.ready("team-a", "x")
