"""What an agent checks when it starts, before it writes anything: that its ClusterPKI exists and may be
read, that its member is one of the spec's, that its health URLs are on its member's own addresses,
that its report Lease exists and may be read, that its directory can be written, and that the
directory does not hold a PKI the ClusterPKI never issued. Each failure is one sentence."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from clusterpki.errors import UserError
from clusterpki.kube import reports, secrets
from clusterpki.kube.api import Api, ApiError
from clusterpki.kube.resource import ClusterPKIClient
from clusterpki.pki import keys, placement, record, spec
from clusterpki.pki.placement import SecretKey
from clusterpki.pki.record import Record

MANIFESTS_HINT = "apply the manifests `clusterpki agent-manifests` prints for it"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


@dataclass(frozen=True)
class Start:
    body: dict[str, Any]
    spec: spec.Spec


async def check(api: Api, namespace: str, name: str, member: str, health: Mapping[str, str], out: Path,
                replace: bool) -> Start:
    """Everything an agent needs before its first round; UserError with one sentence otherwise."""
    body = await _clusterpki(api, namespace, name)
    try:
        pki_spec = spec.from_resource(body)
    except spec.SpecError as exc:
        raise UserError(f"ClusterPKI {namespace}/{name} is not valid: {exc}") from None
    try:
        chosen = pki_spec.member(member)
    except LookupError as exc:
        raise UserError(str(exc)) from None
    for component, url in health.items():
        problem = health_url_problem(url, chosen)
        if problem:
            raise UserError(f"--health {component}={url}: {problem}")
    await _report_lease(api, namespace, name, member)
    await _allowed(api, namespace, name, member)
    _writable(out)
    current = Record.from_status((body.get("status") or {}).get("record"))
    if current and not replace:
        foreign = foreign_authority(out, current)
        if foreign:
            raise UserError(f"{out} holds a PKI that ClusterPKI {namespace}/{name} never issued: {foreign}; take the "
                            "node over with `clusterpki import`, or pass --replace to overwrite a fresh node's files")
    return Start(body, pki_spec)


def member_hosts(member: spec.EtcdMember) -> set[str]:
    """The addresses a member's instances may be reached at: the names and IPs the spec gives it (not the
    ``localhost`` and ``127.0.0.1`` every etcd certificate carries: to another member's agent those are
    its own node)."""
    return {n.lower() for n in member.dns_names} | {str(ip) for ip in member.ips}


def health_url_problem(url: str, member: spec.EtcdMember) -> str | None:
    """Why ``url`` may not be probed as ``member``'s health endpoint: it must be http(s) on one of the
    member's own addresses, so that no report can make an agent fetch anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL"
    host = parts.hostname.lower()
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        pass
    allowed = member_hosts(member)
    if host not in allowed:
        return f"{host} is not an address of member {member.name} ({', '.join(sorted(allowed))})"
    return None


def foreign_authority(out: Path, current: Record) -> str | None:
    """A CA or service-account key in ``out`` that the record does not vouch for, in words; None when
    every one found is on record (or none is there: a fresh node)."""
    for found in placement.authority_files():
        path = out / found.path
        if not path.is_file():
            continue
        try:
            fp = _fingerprint(path, found.key)
        except ValueError:
            return f"{found.path} cannot be read"
        if not current.known_authority(found.row, fp):
            return f"{found.path} holds {found.row} {fp[:16]}…, which is not on record"
    return None


def _fingerprint(path: Path, key: SecretKey) -> str:
    data = path.read_bytes()
    if key is SecretKey.SA_KEY:
        return record.key_fingerprint(keys.load_private_pem(data))
    return record.certificate_fingerprint(x509.load_pem_x509_certificates(data)[0])


async def _clusterpki(api: Api, namespace: str, name: str) -> dict[str, Any]:
    try:
        body = await ClusterPKIClient(api).get(namespace, name)
    except ApiError as exc:
        hint = f"; {MANIFESTS_HINT}" if exc.status == 403 else ""
        raise UserError(f"cannot read ClusterPKI {namespace}/{name}: {exc}{hint}") from None
    if body is None:
        raise UserError(f"ClusterPKI {namespace}/{name} does not exist")
    return body


async def _report_lease(api: Api, namespace: str, name: str, member: str) -> None:
    lease = reports.lease_name(name, member)
    try:
        found = await api.get_or_none(f"Lease {namespace}/{lease}", reports.lease_path(namespace, lease))
    except ApiError as exc:
        raise UserError(f"cannot read this agent's report Lease {namespace}/{lease}: {exc}; {MANIFESTS_HINT}") from None
    if found is None:
        raise UserError(f"this agent's report Lease {namespace}/{lease} does not exist; {MANIFESTS_HINT}")


async def _allowed(api: Api, namespace: str, name: str, member: str) -> None:
    """The agent's credentials may do what its member's agent does (asked of the apiserver, which
    answers for RBAC and every other authorizer): read the member's own etcd pair, and renew its report."""
    needs = [("get", "", "secrets", secrets.secret_name(name, f"etcd-server-{member}")),
             ("update", "coordination.k8s.io", "leases", reports.lease_name(name, member))]
    for verb, group, plural, object_name in needs:
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {
            "resourceAttributes": {"namespace": namespace, "verb": verb, "group": group, "resource": plural,
                                   "name": object_name}}}
        try:
            answer = await api.request("ask", "a SelfSubjectAccessReview", "POST", ACCESS_REVIEWS, review)
        except ApiError as exc:
            raise UserError(f"cannot ask the apiserver what this agent may do: {exc}") from None
        if not (answer.get("status") or {}).get("allowed"):
            raise UserError(f"this agent may not {verb} {plural} {namespace}/{object_name}: its credentials are not "
                            f"those of member {member}'s agent; {MANIFESTS_HINT}")


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".clusterpki-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to {out}: {exc.strerror or exc}") from None
