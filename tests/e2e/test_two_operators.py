"""Two operators on one real apiserver at once (a forced rollout, or two replicas): optimistic
concurrency with real resourceVersions and AlreadyExists; no CA is ever issued twice."""

from __future__ import annotations

import asyncio

from tests.e2e.conftest import pki
from tests.helpers import CAS, ISSUER, LEAVES
from tests.kube import Recorder, cert_of
from tests.runners import Operator


async def test_two_operators_never_issue_a_ca_twice(as_operator, api, namespace):
    first, second = Operator(namespaces=(namespace,)), Operator(namespaces=(namespace,))
    names = [f"p{i}" for i in range(6)]
    async with Recorder(api, "secrets", namespace) as recorder:
        await asyncio.gather(first.start(), second.start())
        try:
            await asyncio.gather(*(api.apply_pki(pki(n, namespace)) for n in names))
            for name in names:
                await api.ready(namespace, name, timeout=30)
            await asyncio.sleep(1)  # let any late retry land
        finally:
            await asyncio.gather(first.stop(), second.stop())

    for name in names:
        for ca in CAS:
            versions = recorder.of(f"{name}-{ca}")
            assert [kind for kind, o in recorder.events if o["metadata"]["name"] == f"{name}-{ca}"][0] == "ADDED"
            assert len({v["data"]["tls.key"] for v in versions}) == 1, f"{name}-{ca} changed its key"
        stored = await api.secrets_of(namespace, name)
        for leaf in LEAVES:
            cert_of(stored[leaf]).verify_directly_issued_by(cert_of(stored[ISSUER[leaf]]))
