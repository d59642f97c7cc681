"""Storing what ``clusterpki import`` read: the Secrets first and the ClusterPKI last, all or nothing.

The order matters. The operator sees the ClusterPKI only once its CAs and service-account key are
stored, so it never makes CAs of its own for a cluster that has them.
"""

from __future__ import annotations

from typing import Any

from clusterpki.errors import UserError
from clusterpki.kube import resource
from clusterpki.kube.api import ApiError
from clusterpki.kube.store import SecretStore


async def check(store: SecretStore, namespace: str, name: str, secret_names: list[str]) -> None:
    """Raise UserError if the import cannot start: no such namespace, or the ClusterPKI or one of its
    Secrets exists already (an import never overwrites)."""
    try:
        if await store.get_or_none(f"namespace {namespace}", f"/api/v1/namespaces/{namespace}") is None:
            raise UserError(f"namespace {namespace} does not exist; create it first")
        taken = [f"ClusterPKI {namespace}/{name}"] if await store.get_or_none(
            f"ClusterPKI {namespace}/{name}", resource.path(namespace, name)) is not None else []
        for secret in secret_names:  # GETs, not a LIST: an importer needs no right to read every Secret
            if await store.get(namespace, secret) is not None:
                taken.append(f"Secret {namespace}/{secret}")
    except ApiError as exc:
        raise UserError(f"cannot import into {namespace}/{name}: {exc}") from None
    if taken:
        raise UserError(f"cannot import into {namespace}/{name}: {', '.join(taken)} "
                        f"exist{'s' if len(taken) == 1 else ''} already; nothing was written")


async def create(store: SecretStore, secrets: list[dict[str, Any]], body: dict[str, Any]) -> None:
    """Create ``secrets``, then the ClusterPKI ``body``. If any create fails, delete the Secrets made so
    far and raise UserError: the namespace is left as it was."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    created: list[str] = []
    try:
        for secret in secrets:
            await store.create(secret)
            created.append(secret["metadata"]["name"])
        await store.request("create", f"ClusterPKI {namespace}/{name}", "POST", resource.path(namespace), body)
    except ApiError as exc:
        if len(created) == len(secrets) and not 400 <= exc.status < 500 and await _maybe_created(store, namespace, name):
            # The create may have been stored before the answer was lost: deleting the CAs now would
            # leave the operator to make new ones for a running cluster.
            raise UserError(f"cannot tell whether ClusterPKI {namespace}/{name} was created ({exc}); its Secrets "
                            f"are left in place: check with kubectl -n {namespace} get clusterpki {name}") from None
        left = []
        for secret_name in reversed(created):
            try:
                await store.delete(namespace, secret_name)
            except ApiError:
                left.append(secret_name)
        undone = (f"the Secrets {', '.join(sorted(left))} could not be deleted again; delete them" if left
                  else "nothing was left behind")
        raise UserError(f"cannot import into {namespace}/{name}: {exc}; {undone}") from None


async def _maybe_created(store: SecretStore, namespace: str, name: str) -> bool:
    """Whether the ClusterPKI exists, or cannot be told not to."""
    try:
        return await store.get_or_none(f"ClusterPKI {namespace}/{name}", resource.path(namespace, name)) is not None
    except ApiError:
        return True
