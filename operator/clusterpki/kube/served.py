"""Before the operator starts: its credentials work, and ClusterPKIs are served. Kopf is started with no
scan of CRDs (that would need rights the operator has no use for), so an operator started before the CRD
would never serve a ClusterPKI; and Kopf answers a refused token with a long traceback."""

from __future__ import annotations

import asyncio
import logging

from clusterpki.errors import UserError
from clusterpki.kube import api as kube_api
from clusterpki.kube import resource
from clusterpki.kube.api import Api, ApiError

LOGGER = logging.getLogger("clusterpki.kube.served")
PAUSE = 5.0  # seconds between looks while the CRD is missing or the apiserver does not answer
CRD = f"{resource.PLURAL}.{resource.GROUP}"


async def until_served(api: Api, namespaces: list[str], server: str, pause: float = PAUSE) -> None:
    """Return once ClusterPKIs can be listed in every namespace served (all when empty). A refusal of the
    credentials or of the right to list is the user's to fix (UserError); a CRD not installed yet, or an
    apiserver that does not answer, is waited for, said once each time it changes."""
    told = None
    while True:
        try:
            for namespace in namespaces or [None]:
                await api.request("list", f"ClusterPKIs of {namespace or 'all namespaces'}", "GET",
                                  resource.path(namespace), params={"limit": "1"})
            if told is not None:
                LOGGER.info("ClusterPKIs are served: starting")
            return
        except ApiError as exc:
            if exc.status == 401:
                raise UserError(f"{server} refuses the credentials from {kube_api.source().describe()}: "
                                f"HTTP 401 {exc.reason}") from None
            if exc.status == 403:
                raise UserError(f"the credentials from {kube_api.source().describe()} may not list ClusterPKIs on "
                                f"{server}: {exc} (apply manifests/, whose RBAC grants it)") from None
            problem = f"the CRD {CRD} is not installed on {server} (kubectl apply -f crds/)" if exc.status == 404 \
                else str(exc)
        if problem != told:
            LOGGER.warning(f"{problem}: the operator starts once ClusterPKIs are served; looking again every "
                           f"{pause:g}s")
            told = problem
        await asyncio.sleep(pause)
