"""``clusterpki import``'s writes when the apiserver fails: the rollback, and the one case where rolling
back would be worse than stopping. A stand-in store is the better tool here: a timeout after the
apiserver stored the ClusterPKI cannot be made to happen on purpose on a real one."""

from __future__ import annotations

import pytest

from clusterpki.errors import UserError
from clusterpki.kube import takeover
from clusterpki.kube.api import ApiError

SECRETS = [{"metadata": {"name": f"x-{c}", "namespace": "ns"}} for c in ("ca", "sa")]
BODY = {"metadata": {"name": "x", "namespace": "ns"}}


class Store:
    def __init__(self, fail_status: int, stored: bool) -> None:
        self.fail_status, self.stored = fail_status, stored
        self.deleted: list[str] = []

    async def create(self, secret: dict) -> dict:
        return secret

    async def create_clusterpki(self, body: dict) -> dict:
        raise ApiError("create", "ClusterPKI ns/x", self.fail_status, "boom")

    async def clusterpki(self, namespace: str, name: str) -> dict | None:
        return BODY if self.stored else None

    async def delete(self, namespace: str, name: str) -> None:
        self.deleted.append(name)


async def test_a_refused_create_is_rolled_back():
    store = Store(403, stored=False)
    with pytest.raises(UserError, match="nothing was left behind"):
        await takeover.create(store, SECRETS, BODY)
    assert store.deleted == ["x-sa", "x-ca"]


async def test_a_create_that_may_have_been_stored_keeps_the_cas():
    store = Store(0, stored=True)
    with pytest.raises(UserError, match="cannot tell whether ClusterPKI ns/x was created .*Secrets are left in place"):
        await takeover.create(store, SECRETS, BODY)
    assert store.deleted == []


async def test_a_lost_answer_for_a_create_that_was_not_stored_is_rolled_back():
    store = Store(504, stored=False)
    with pytest.raises(UserError, match="nothing was left behind"):
        await takeover.create(store, SECRETS, BODY)
    assert store.deleted == ["x-sa", "x-ca"]
