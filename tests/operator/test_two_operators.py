"""Two operator processes against one API at once (a rolling update, or two replicas): no CA is ever
issued twice, and every stored leaf verifies against the one stored CA."""

from __future__ import annotations

import asyncio
import base64

from cryptography import x509

from tests.operator.conftest import Operator
from tests.operator.test_issuance import CAS, ISSUER, LEAVES, pki


async def test_two_operators_never_issue_a_ca_twice(kubeconfig, api, emulator):
    first, second = Operator(), Operator()
    await asyncio.gather(first.start(), second.start())
    try:
        names = [f"p{i}" for i in range(6)]
        await asyncio.gather(*(api.apply_pki(pki(n)) for n in names))
        for name in names:
            await api.ready("team-a", name, timeout=30)
        await asyncio.sleep(1)  # let any late retry land
    finally:
        await asyncio.gather(first.stop(), second.stop())

    created = [r for r in emulator.requests if r.method == "POST" and r.path == "/api/v1/namespaces/team-a/secrets"
               and r.by_operator]
    for name in names:
        for ca in CAS:
            secret = f"{name}-{ca}"
            adds = [e for e in emulator._history if e.type == "ADDED" and e.obj["metadata"]["name"] == secret]
            assert len(adds) == 1, f"{secret} was created {len(adds)} times"
            assert not [e for e in emulator._history if e.type in ("MODIFIED", "DELETED")
                        and e.obj["metadata"]["name"] == secret
                        and e.obj["data"].get("tls.key") != adds[0].obj["data"]["tls.key"]], f"{secret} changed key"
        stored = {s["metadata"]["name"]: s for s in emulator.list("secrets", "team-a")}
        for leaf in LEAVES:
            cert = x509.load_pem_x509_certificate(base64.b64decode(stored[f"{name}-{leaf}"]["data"]["tls.crt"]))
            ca = x509.load_pem_x509_certificate(
                base64.b64decode(stored[f"{name}-{ISSUER.get(leaf, 'ca')}"]["data"]["tls.crt"]))
            cert.verify_directly_issued_by(ca)
    print(f"{len(created)} creates for {len(names) * 15} Secrets")
    assert len(created) >= len(names) * 15, "both operators worked"
