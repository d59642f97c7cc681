"""A ClusterPKI, or its whole namespace, going away while the operator works on it.

The apiserver refuses anything new in a namespace being deleted (403 "is being terminated"), and the
namespace controller deletes the Secrets before it can delete a ClusterPKI that someone's finalizer
holds. Neither may make the operator re-create Secrets, flood its log or retry forever.
"""

from __future__ import annotations

import asyncio
import logging

from tests.e2e.conftest import pki

HOLD = "e2e.clusterpki.dev/hold"


async def _gone(api, plural: str, name: str) -> bool:
    return await api.get(plural, name) is None


async def test_a_clusterpki_held_in_a_terminating_namespace_is_left_alone(operator, api, namespace, caplog):
    body = pki("held", namespace)
    body["metadata"]["finalizers"] = [HOLD]
    await api.apply_pki(body)
    await api.ready(namespace, "held")
    await api.wait_for(lambda: api.has_event(namespace, "Issued"), what="the Issued Event (logged before it is posted)")
    caplog.clear()
    await api.delete("namespaces", namespace)

    async def secrets_deleted():
        return not await api.secrets_of(namespace, "held")
    await api.wait_for(secrets_deleted, 60, "the namespace controller to delete the Secrets")
    await asyncio.sleep(12)  # longer than any retry delay
    assert not await api.secrets_of(namespace, "held"), "no Secret is re-created"
    obj = await api.get("clusterpkis", "held", namespace)
    assert obj["metadata"].get("deletionTimestamp") and obj["status"]["conditions"][0]["status"] == "True"
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("clusterpki")]
    quiet = (f"{namespace}/held: It is being deleted: nothing is issued or repaired",
             f"{namespace}/held: Namespace {namespace} is being deleted: nothing more is written for its ClusterPKIs")
    assert ours and all(m in quiet for m in ours), ours
    assert len(ours) <= 3, ours
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "OS signals" not in r.getMessage()]

    await api.patch("clusterpkis", "held", {"metadata": {"finalizers": None}}, namespace)
    await api.wait_for(lambda: _gone(api, "namespaces", namespace), 60, "the namespace to go")


async def test_deleting_the_namespace_mid_issuance_stops_quietly(operator, api, namespace, caplog):
    names = [f"p{i}" for i in range(12)]
    await asyncio.gather(*(api.apply_pki(pki(n, namespace, keyAlgorithm="RSA-3072")) for n in names))
    await api.wait_for(lambda: api.secrets_of(namespace, "p0"), 30, "issuance to be under way")
    await api.delete("namespaces", namespace)
    await api.wait_for(lambda: _gone(api, "namespaces", namespace), 90, "the namespace to go")
    settled = len(caplog.records)
    await asyncio.sleep(12)  # longer than any retry delay: nothing is retried
    assert _ours(caplog.records[settled:]) == []
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                and "OS signals" not in r.getMessage()]
    stopped = [m for m in _ours(caplog.records) if "is being deleted" in m]
    assert stopped and len(stopped) <= len(names), stopped


def _ours(records: list[logging.LogRecord]) -> list[str]:
    """The operator's own lines, without Kopf's bookkeeping of handlers that ran."""
    return [r.getMessage() for r in records if not r.getMessage().startswith("Handler '")
            and not r.getMessage().endswith("failed.") and r.name != "kopf._core.reactor.running"]
