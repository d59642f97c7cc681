"""Storing what ``clusterpki import`` read: the Secrets first and the ClusterPKI last, all or nothing.

The order matters. The operator sees the ClusterPKI only once its CAs and service-account key are
stored, so it never makes CAs of its own for a cluster that has them; and the ClusterPKI carries the
digest of every Secret stored (the ``imported`` annotation), so the operator takes exactly those as its
own, and nothing anyone else put there.
"""

from __future__ import annotations

from typing import Any, Protocol

from clusterpki.errors import UserError
from clusterpki.kube.api import Api, ApiError
from clusterpki.kube.resource import ClusterPKIClient
from clusterpki.kube.secret_client import SecretClient


class Clients(Protocol):
    """The reads and writes an import makes."""

    async def namespace(self, namespace: str) -> dict[str, Any] | None: ...

    async def clusterpki(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create_clusterpki(self, body: dict[str, Any]) -> dict[str, Any]: ...

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create(self, secret: dict[str, Any]) -> dict[str, Any]: ...

    async def delete(self, namespace: str, name: str) -> None: ...


async def check(clients: Clients, namespace: str, name: str, secret_names: list[str]) -> None:
    """Raise UserError if the import cannot start: no such namespace, or the ClusterPKI or one of its
    Secrets exists already (an import never overwrites)."""
    try:
        if await clients.namespace(namespace) is None:
            raise UserError(f"namespace {namespace} does not exist; create it first")
        taken = [f"ClusterPKI {namespace}/{name}"] if await clients.clusterpki(namespace, name) is not None else []
        for secret in secret_names:  # GETs, not a LIST: an importer needs no right to read every Secret
            if await clients.get(namespace, secret) is not None:
                taken.append(f"Secret {namespace}/{secret}")
    except ApiError as exc:
        raise UserError(f"cannot import into {namespace}/{name}: {exc}") from None
    if taken:
        raise UserError(f"cannot import into {namespace}/{name}: {', '.join(taken)} "
                        f"exist{'s' if len(taken) == 1 else ''} already; nothing was written")


async def create(clients: Clients, secrets: list[dict[str, Any]], body: dict[str, Any]) -> None:
    """Create ``secrets``, then the ClusterPKI ``body``. If any create fails, delete the Secrets made so
    far and raise UserError: the namespace is left as it was."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    created: list[str] = []
    try:
        for secret in secrets:
            await clients.create(secret)
            created.append(secret["metadata"]["name"])
        await clients.create_clusterpki(body)
    except ApiError as exc:
        if len(created) == len(secrets) and not 400 <= exc.status < 500 and await _maybe_created(clients, namespace,
                                                                                                 name):
            # The create may have been stored before the answer was lost: deleting the CAs now would
            # leave the operator to make new ones for a running cluster.
            raise UserError(f"cannot tell whether ClusterPKI {namespace}/{name} was created ({exc}); its Secrets "
                            f"are left in place: check with kubectl -n {namespace} get clusterpki {name}") from None
        left = []
        for secret_name in reversed(created):
            try:
                await clients.delete(namespace, secret_name)
            except ApiError:
                left.append(secret_name)
        undone = (f"the Secrets {', '.join(sorted(left))} could not be deleted again; delete them" if left
                  else "nothing was left behind")
        raise UserError(f"cannot import into {namespace}/{name}: {exc}; {undone}") from None


async def _maybe_created(clients: Clients, namespace: str, name: str) -> bool:
    """Whether the ClusterPKI exists, or cannot be told not to."""
    try:
        return await clients.clusterpki(namespace, name) is not None
    except ApiError:
        return True


class ApiClients:
    """:class:`Clients` over the API."""

    def __init__(self, api: Api) -> None:
        self.api, self.secrets, self.clusterpkis = api, SecretClient(api), ClusterPKIClient(api)

    async def namespace(self, namespace: str) -> dict[str, Any] | None:
        return await self.api.get_or_none(f"namespace {namespace}", f"/api/v1/namespaces/{namespace}")

    async def clusterpki(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.clusterpkis.get(namespace, name)

    async def create_clusterpki(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self.clusterpkis.create(body)

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.secrets.get(namespace, name)

    async def create(self, secret: dict[str, Any]) -> dict[str, Any]:
        return await self.secrets.create(secret)

    async def delete(self, namespace: str, name: str) -> None:
        await self.secrets.delete(namespace, name)
