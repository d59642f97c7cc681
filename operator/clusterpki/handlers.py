"""The Kopf handlers: thin triggers over :mod:`clusterpki.issuance`.

Importing this module registers the handlers on Kopf's default registry.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from clusterpki import certificates, issuance, settings
from clusterpki.store import SecretStore, connection_info, load_configuration

CLUSTERPKI = {"group": settings.GROUP, "version": settings.VERSION, "plural": settings.PLURAL}


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    memo.store = SecretStore(load_configuration())


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.store.close()


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf logs in with exactly the credentials the Secrets store uses."""
    return kopf.ConnectionInfo(**connection_info(load_configuration()))


@kopf.on.resume(**CLUSTERPKI)
@kopf.on.create(**CLUSTERPKI)
@kopf.on.update(**CLUSTERPKI, field="spec")
async def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger,
                    **_: Any) -> None:
    result = await issuance.reconcile(body, memo.store, certificates.utcnow())
    patch.status.update(result.status)
    for kind, reason, message in result.events:
        kopf.event(body, type=kind, reason=reason, message=message)
        (logger.warning if kind == issuance.WARNING else logger.info)(f"{reason}: {message}")
    if result.retry:
        raise kopf.TemporaryError(result.retry, delay=settings.RETRY_DELAY)


def configure(operator_settings: kopf.OperatorSettings) -> None:
    """Kopf settings for this operator: keep Kopf's bookkeeping in our own annotations."""
    operator_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=settings.GROUP)
    operator_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=settings.GROUP, key="last-handled-configuration")
    operator_settings.persistence.finalizer = f"{settings.GROUP}/finalizer"
    operator_settings.posting.level = logging.INFO
