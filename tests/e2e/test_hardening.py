"""What an adversarial run on a real control plane found, each as a test: a rotation step that comes
late, durations no certificate can carry, names two ClusterPKIs (or a stranger) both want, Secrets
that impersonate ours, and floods of Events. Every bad input gets InvalidSpec or SecretConflict
naming the field or the Secret, nothing is written, and a repeated condition is one Event series."""

from __future__ import annotations

import asyncio
import base64
import time

from tests.e2e.conftest import pki
from tests.e2e.test_rotation import (
    bundle_serials,
    rotate,
    serial,
    snapshot_when,
    wait_phase,
)
from tests.kube import Api


async def condition(api: Api, namespace: str, name: str) -> dict:
    obj = await api.get("clusterpkis", name, namespace)
    return next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")


async def events_of(api: Api, namespace: str, name: str, reason: str) -> list[dict]:
    return [e for e in await api.list("events", namespace, fieldSelector=f"involvedObject.name={name}")
            if e["reason"] == reason]


async def refused(api: Api, namespace: str, name: str, reason: str, **spec) -> dict:
    """Apply a ClusterPKI that must be refused with ``reason``: its Ready condition, once reported, with
    its Warning Event posted, no Secret written, and nothing retried."""
    await api.apply_pki(pki(name, namespace, **spec))
    obj = await api.ready(namespace, name, status="False")
    ready = obj["status"]["conditions"][0]
    assert ready["reason"] == reason, ready
    await api.wait_for(lambda: api.has_event(namespace, reason, ready["message"], kind="Warning"), what="the Event")
    assert not await api.secrets_of(namespace, name)
    await asyncio.sleep(2)
    assert (await api.get("clusterpkis", name, namespace))["metadata"]["resourceVersion"] == \
        obj["metadata"]["resourceVersion"], "a permanent error is not retried"
    return ready


async def test_a_late_rotation_step_still_gets_its_whole_grace_period(operator, api, namespace):
    """The move of the new CA (Rotating's work) is held up beyond the grace period; once it happens,
    consumers still get the whole grace period with the re-issued leaves before the old CA leaves the
    bundles. (The phase clock used to start when Rotating was decided, so Completing followed the move
    at once.)"""
    await api.apply_pki(pki("alpha", namespace))
    await api.ready(namespace, "alpha")
    old_ca = serial(await api.secrets_of(namespace, "alpha"), "ca")
    await rotate(api, namespace, "ca", "4s")
    await wait_phase(api, namespace, "Preparing")
    # A stranger takes the name the old CA moves to: Rotating's work cannot be done.
    await api.create("secrets", {"metadata": {"name": "alpha-ca-previous"}, "type": "Opaque",
                                 "data": {"x": base64.b64encode(b"y").decode()}}, namespace)
    await wait_phase(api, namespace, "Rotating")
    blocked = await api.ready(namespace, "alpha", status="False")
    assert blocked["status"]["conditions"][0]["reason"] == "SecretConflict"
    assert "alpha-ca-previous" in blocked["status"]["conditions"][0]["message"]
    await asyncio.sleep(6)  # longer than the grace period, with nothing moved
    assert serial(await api.secrets_of(namespace, "alpha"), "ca") == old_ca

    await api.delete("secrets", "alpha-ca-previous", namespace)
    await api.patch("clusterpkis", "alpha", {"metadata": {"annotations": {"touched": "1"}}}, namespace)
    found = await snapshot_when(api, namespace, lambda f: serial(f, "ca") != old_ca, "the new CA moved in")
    moved = time.monotonic()
    new_ca = serial(found, "ca")
    await snapshot_when(api, namespace, lambda f: bundle_serials(f, "ca") == {(new_ca,)}, "the old CA gone")
    assert time.monotonic() - moved >= 3.5, "Rotating lasted its grace period from the move on"


async def test_durations_no_certificate_can_carry_are_invalid(operator, api, namespace):
    ready = await refused(api, namespace, "forever", "InvalidSpec",
                          validity={"ca": "876000000h", "certificate": "876000000h"})
    assert ready["message"] == ("The spec is invalid: spec.validity.ca: '876000000h' is longer than 100 years "
                                "(876000h0m0s); spec.validity.certificate: '876000000h' is longer than 100 years "
                                "(876000h0m0s)")
    ready = await refused(api, namespace, "instant", "InvalidSpec", validity={"ca": "1s", "certificate": "1s"})
    assert ready["message"].startswith("The spec is invalid: spec.validity.ca: 1s leaves 0s (its last third) to "
                                       "rotate the CAs")


async def test_ip_like_names_are_not_taken_for_dns_names(operator, api, namespace):
    ready = await refused(api, namespace, "typo", "InvalidSpec", apiServer={"certSANs": ["300.1.1.1", "1.2.3"]})
    assert ready["message"] == ("The spec is invalid: spec.apiServer.certSANs[0]: '300.1.1.1' is neither an IP "
                                "address nor a DNS name; spec.apiServer.certSANs[1]: '1.2.3' is neither an IP "
                                "address nor a DNS name")


async def test_a_nonsense_grace_period_is_invalid_not_ignored(operator, api, namespace):
    body = pki("graceless", namespace)
    body["metadata"]["annotations"] = {"pki.clusterpki.dev/rotate-ca-grace": "a while"}
    await api.apply_pki(body)
    ready = (await api.ready(namespace, "graceless", status="False"))["status"]["conditions"][0]
    assert ready["message"] == ("The spec is invalid: metadata.annotations[pki.clusterpki.dev/rotate-ca-grace]: "
                                "'a while' is not a duration such as '90s', '30m' or '8760h'")


async def test_a_leaf_name_two_clusterpkis_want_goes_to_its_owner(operator, api, namespace):
    """x's member "admin" has the Secret x-etcd-server-admin; ClusterPKI x-etcd-server wants that
    name for its "admin" leaf. (It used to retry twice a second, with an Event each time, after
    writing 14 other Secrets.)"""
    members = [{"name": "admin", "ips": ["10.0.0.1"]}]
    await api.apply_pki(pki("x", namespace, etcd={"members": members}))
    await api.ready(namespace, "x")
    before = await api.secrets_of(namespace, "x")
    ready = await refused(api, namespace, "x-etcd-server", "SecretConflict")
    assert ready["message"] == ("Secret x-etcd-server-admin belongs to ClusterPKI x (etcd-server-admin): nothing "
                                "was written; rename this ClusterPKI, or remove what is in the way (looked at again "
                                "every 30s)")
    await asyncio.sleep(3)
    assert len(await events_of(api, namespace, "x-etcd-server", "SecretConflict")) == 1, "no flood"
    assert await api.secrets_of(namespace, "x") == before


async def test_the_older_clusterpki_wins_a_name_neither_has_written(operator, api, namespace):
    """Both are applied at once: the older (by creation, then name) gets the Secret, the other is told
    before it writes anything."""
    members = [{"name": "admin", "ips": ["10.0.0.1"]}]
    await api.apply_pki(pki("y", namespace, etcd={"members": members}))
    await api.apply_pki(pki("y-etcd-server", namespace))
    await api.ready(namespace, "y")
    ready = (await api.ready(namespace, "y-etcd-server", status="False"))["status"]["conditions"][0]
    assert ready["reason"] == "SecretConflict" and "Secret y-etcd-server-admin " in ready["message"]
    assert not await api.secrets_of(namespace, "y-etcd-server")


async def test_a_stranger_s_secret_in_the_way_means_nothing_is_written(operator, api, namespace):
    await api.create("secrets", {"metadata": {"name": "z-kube-proxy"}, "type": "Opaque",
                                 "data": {"config": base64.b64encode(b"mine").decode()}}, namespace)
    ready = await refused(api, namespace, "z", "SecretConflict")
    assert ready["message"].startswith("Secret z-kube-proxy exists and is not managed by clusterpki: nothing was "
                                       "written")
    assert [s["metadata"]["name"] for s in await api.list("secrets", namespace)] == ["z-kube-proxy"]
    await api.delete("secrets", "z-kube-proxy", namespace)
    await api.ready(namespace, "z", timeout=60)  # by itself: nobody touches the ClusterPKI


async def test_a_secret_impersonating_ours_is_ignored_and_named(operator, api, namespace):
    """A stranger's Secret labelled as x's CA used to be read as x's CA."""
    await api.apply_pki(pki("x", namespace))
    await api.ready(namespace, "x")
    before = await api.secrets_of(namespace, "x")
    impostor = {k: v for k, v in before["etcd-ca"].items() if k in ("type", "data")}
    impostor["metadata"] = {"name": "zzz-evil", "labels": before["ca"]["metadata"]["labels"]}
    await api.create("secrets", impostor, namespace)
    await api.wait_for(lambda: api.has_event(namespace, "ForeignSecretIgnored", "Secret zzz-evil carries the labels "
                                             "of this ClusterPKI's Secrets but not the name of one", "Warning"),
                       what="the Event naming it")
    await api.ready(namespace, "x")
    assert await versions(api, namespace, "x-") == {s["metadata"]["name"]: s["metadata"]["resourceVersion"]
                                                    for s in before.values()}, "x's own Secrets are untouched"


async def versions(api: Api, namespace: str, prefix: str) -> dict[str, str]:
    return {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in await api.list("secrets", namespace)
            if s["metadata"]["name"].startswith(prefix)}


async def test_a_repeated_condition_is_one_event_series(operator, api, namespace):
    """Each touch is a reconcile with the same outcome, and one more count on the same Event. The test waits
    for each count before the next touch: touches that come while a reconcile runs are one look, not one
    each (the operator coalesces them, as it should)."""
    await refused(api, namespace, "bad", "InvalidSpec", serviceCIDR="10.0.0.0/33")
    for count, value in enumerate(("1", "2", "3"), start=2):
        await api.patch("clusterpkis", "bad", {"metadata": {"annotations": {"touched": value}}}, namespace)

        async def counted(count=count):
            found = await events_of(api, namespace, "bad", "InvalidSpec")
            return found if found and found[0].get("count") == count else None
        series = await api.wait_for(counted, what=f"one InvalidSpec Event counted {count} times")
        assert len(series) == 1 and series[0]["lastTimestamp"] >= series[0]["firstTimestamp"]


async def test_log_lines_name_their_clusterpki(operator, api, namespace, caplog):
    await api.apply_pki(pki("named", namespace))
    await api.ready(namespace, "named")
    await api.wait_for(lambda: f"{namespace}/named: Issued: Issued 15: " in caplog.text, what="the log line")
