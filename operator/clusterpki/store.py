"""A small Secrets store over the official Kubernetes client.

The client is synchronous, so every call runs in a dedicated thread pool and the Kopf event loop
never blocks. Responses are read as raw JSON (``_preload_content=False``): the operator works with
plain dicts, and skipping the client's model deserialization keeps large fleets cheap.
Errors are re-raised as :class:`ApiError` carrying only the status and the server's reason, so no
request body (which may hold private keys) can reach a log line or an exception message.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from clusterpki import secrets, settings

Secret = dict[str, Any]
API_WORKERS = 16
HOST = socket.gethostname()[:128]


class ApiError(Exception):
    """An API call that failed; ``str()`` is safe to log and to show in an Event."""

    def __init__(self, verb: str, what: str, status: int, reason: str) -> None:
        super().__init__(f"{verb} {what} failed: HTTP {status} {reason}".rstrip())
        self.status = status
        self.reason = reason
        self.what = what

    @property
    def namespace_terminating(self) -> bool:
        """The namespace is being deleted: the apiserver refuses anything new in it, for good."""
        return self.status == 403 and "because it is being terminated" in self.reason


def load_configuration() -> client.Configuration:
    """``KUBECONFIG`` when it is set, else the in-cluster configuration in a pod, else
    ``~/.kube/config``: client-go's order. ``KUBECONFIG`` is read now, not when the client library
    was imported."""
    configuration = client.Configuration()
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = API_WORKERS
    return configuration


def connection_info(configuration: client.Configuration) -> dict[str, Any]:
    """The same credentials for Kopf's own API client (arguments of ``kopf.ConnectionInfo``)."""
    authorization = configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or ""
    scheme, _, token = authorization.partition(" ")
    return {"server": configuration.host, "ca_path": configuration.ssl_ca_cert,
            "insecure": not configuration.verify_ssl, "scheme": scheme or None, "token": token or None,
            "certificate_path": configuration.cert_file, "private_key_path": configuration.key_file}


class SecretStore:
    """Secrets, and the two writes the operator makes to ClusterPKIs themselves."""

    def __init__(self, configuration: client.Configuration) -> None:
        api_client = client.ApiClient(configuration)
        self._api = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._certificates = client.CertificatesV1Api(api_client)
        self._pool = ThreadPoolExecutor(max_workers=API_WORKERS, thread_name_prefix="k8s-api")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._api.api_client.close()

    async def list(self, namespace: str, pki_name: str) -> dict[str, Secret]:
        """The Secrets of one ClusterPKI, by component: one LIST by label."""
        body = await self._call("list", f"Secrets of {namespace}/{pki_name}", self._api.list_namespaced_secret,
                                namespace, label_selector=secrets.selector(pki_name))
        found = {}
        for item in body.get("items", []):
            component = secrets.component_of(item)
            if component:
                found[component] = item
        return found

    async def get(self, namespace: str, name: str) -> Secret | None:
        try:
            return await self._call("get", f"Secret {namespace}/{name}", self._api.read_namespaced_secret,
                                    name, namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, secret: Secret) -> Secret:
        """Create; HTTP 409 AlreadyExists when it exists, e.g. made meanwhile by another replica."""
        meta = secret["metadata"]
        return await self._call("create", f"Secret {meta['namespace']}/{meta['name']}",
                                self._api.create_namespaced_secret, meta["namespace"], secret)

    async def replace(self, secret: Secret) -> Secret:
        """Replace with optimistic concurrency: a Secret changed since it was read gives HTTP 409."""
        meta = secret["metadata"]
        return await self._call("replace", f"Secret {meta['namespace']}/{meta['name']}",
                                self._api.replace_namespaced_secret, meta["name"], meta["namespace"], secret)

    async def delete(self, namespace: str, name: str) -> None:
        await self._call("delete", f"Secret {namespace}/{name}", self._api.delete_namespaced_secret, name, namespace)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch a ClusterPKI's status subresource."""
        await self._call("patch", f"the status of ClusterPKI {namespace}/{name}",
                         self._custom.patch_namespaced_custom_object_status, settings.GROUP, settings.VERSION,
                         namespace, settings.PLURAL, name, {"status": status},
                         _content_type="application/merge-patch+json")

    async def annotate(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Merge-patch annotations onto a ClusterPKI (``clusterpki renew`` and ``rotate-ca``)."""
        await self._call("annotate", f"ClusterPKI {namespace}/{name}", self._custom.patch_namespaced_custom_object,
                         settings.GROUP, settings.VERSION, namespace, settings.PLURAL, name,
                         {"metadata": {"annotations": annotations}}, _content_type="application/merge-patch+json")

    async def decide_csr(self, csr: dict[str, Any]) -> None:
        """PUT a CSR with its Approved or Denied condition to the ``approval`` subresource."""
        name = csr["metadata"]["name"]
        await self._call("decide", f"CSR {name}", self._certificates.replace_certificate_signing_request_approval,
                         name, _minimal_csr(csr))

    async def set_certificate(self, csr: dict[str, Any]) -> None:
        """PUT a CSR with ``status.certificate`` to the ``status`` subresource."""
        name = csr["metadata"]["name"]
        await self._call("sign", f"CSR {name}", self._certificates.replace_certificate_signing_request_status,
                         name, _minimal_csr(csr))

    async def post_event(self, involved: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event about a ClusterPKI, as ``kubectl describe`` shows them."""
        meta = involved["metadata"]
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": kind, "reason": reason, "message": message[:1024], "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "clusterpki", "host": HOST},
        }
        await self._call("post", f"an Event on {meta['namespace']}/{meta['name']}",
                         self._api.create_namespaced_event, meta["namespace"], event)

    async def _call(self, verb: str, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call in the pool. The body is read and parsed there too: reading it on the
        event loop would block the loop and keep the connection out of the pool meanwhile."""
        def call() -> Any:
            raw = method(*args, _preload_content=False, **kwargs).data
            return json.loads(raw) if raw else {}

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except ApiException as exc:
            status, reason = exc.status, _reason(exc)
        except (OSError, urllib3.exceptions.HTTPError) as exc:  # unreachable, reset, timed out
            status, reason = 0, type(exc).__name__
        except Exception as exc:  # e.g. the client's body validation, whose message quotes the body
            status, reason = 0, type(exc).__name__
        # Raised here, outside the handlers, so that not even __context__ keeps the original (a JSON
        # error's .doc is the whole body, a Secret's keys included).
        raise ApiError(verb, what, status, reason)


def _minimal_csr(csr: dict[str, Any]) -> dict[str, Any]:
    """Only what a subresource PUT needs: the client's models reject fields newer than themselves."""
    spec_keys = ("request", "signerName", "usages", "username", "groups", "uid", "expirationSeconds")
    status = csr.get("status") or {}
    return {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": csr["metadata"]["name"], "resourceVersion": csr["metadata"].get("resourceVersion")},
            "spec": {k: v for k, v in (csr.get("spec") or {}).items() if k in spec_keys},
            "status": {k: v for k, v in status.items() if k in ("conditions", "certificate")}}


def _reason(exc: ApiException) -> str:
    """The server's reason and message from a Status body; for Secrets these never echo data."""
    try:
        status = json.loads(exc.body)
        return f"{status.get('reason', '')}: {status.get('message', '')}".strip(": ")
    except (TypeError, ValueError):
        return str(exc.reason or "")
