"""observe: read a ClusterPKI and its Secrets once, into one typed, immutable view.

:func:`observe` makes the reads (one LIST of the ClusterPKI's Secrets; only when some it writes are
missing, one metadata-only LIST of the namespace's other Secrets and a GET for each one that may be
its own; before a first write, a GET of each ClusterPKI that could be an older twin, rare: see
:func:`twins`); :func:`view` turns what was read into an :class:`Observed`, with no I/O. What to do
about it is :mod:`clusterpki.controller.decide`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

from clusterpki.controller.requests import TARGETS, Requests, imported
from clusterpki.controller.rotation import Rotation
from clusterpki.kube import secrets
from clusterpki.kube.reports import Report
from clusterpki.kube.secret_client import SecretMeta
from clusterpki.kube.secrets import StoredSecret
from clusterpki.pki import catalog, spec, times
from clusterpki.pki.record import Claim, Record


class Meta(NamedTuple):
    namespace: str
    name: str
    uid: str
    api_version: str
    kind: str
    generation: int | None
    created: datetime | None
    resource_version: str
    deleting: bool

    def owner(self) -> dict[str, Any]:
        """An ownerReference to the ClusterPKI (with ``secretRetention: Delete``)."""
        return secrets.owner_reference({"apiVersion": self.api_version, "kind": self.kind,
                                        "metadata": {"name": self.name, "uid": self.uid}})

    def involved(self) -> dict[str, Any]:
        """The ClusterPKI as an Event's involved object."""
        return {"apiVersion": self.api_version, "kind": self.kind,
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


class Stranger(NamedTuple):
    """A Secret at one of the ClusterPKI's names that its labels do not give to it."""

    name: str
    owner: str | None  # the ClusterPKI its labels give it to; None: not clusterpki's
    component: str | None


@dataclass(frozen=True)
class Observed:
    meta: Meta
    spec: spec.Spec | None
    spec_error: str | None
    requests: Requests  # the annotations' values
    handled: Requests  # the values handled already (status.requests)
    conditions: tuple[Mapping[str, Any], ...]
    record: Record
    claim: Claim | None
    rotation: Rotation | None
    secrets: Mapping[str, StoredSecret]  # its own, by component (rotation halves included)
    strangers: Mapping[str, Stranger] = field(default_factory=dict)  # by the component whose name they hold
    older_claims: Mapping[str, str] = field(default_factory=dict)  # Secret name -> older ClusterPKI that wants it
    impostors: tuple[str, ...] = ()
    imported: Mapping[str, str] = field(default_factory=dict)  # component -> data digest `import` stored
    legacy: Mapping[str, str] = field(default_factory=dict)  # component -> serial, from a status without record
    reports: tuple[Report, ...] = ()
    # node -> the revision its kubelet runs (node reports); None: not known yet (the Node watch has not listed)
    nodes: Mapping[str, str] | None = field(default_factory=dict)
    holder: str = ""  # this operator's identity, for claims
    status: Mapping[str, Any] = field(default_factory=dict)  # as read, to tell whether it changes
    wanted: frozenset[str] = frozenset()  # the components it wants a Secret for, and every rotation half
    # Whether the names of its missing rotation halves were looked for (strangers there): only once a
    # rotation would write one (see :func:`observe`)
    halves_read: bool = True

    @property
    def first_write(self) -> bool:
        """Whether nothing of it is stored, on record or claimed yet: its first write is to come."""
        return not (self.secrets or self.record.secrets or self.claim)


class Reads(Protocol):
    """The reads observe makes (:class:`clusterpki.kube.secret_client.SecretClient`, with the names of the
    operator's own Secrets from its watch)."""

    async def list(self, namespace: str, pki_name: str) -> list[dict[str, Any]]: ...

    async def names(self, namespace: str) -> dict[str, SecretMeta]: ...

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def clusterpki(self, namespace: str, name: str) -> dict[str, Any] | None: ...


async def observe(reads: Reads, body: Mapping[str, Any], neighbours: Sequence[Mapping[str, Any]],
                  reports: Sequence[Report], holder: str, none_stored: bool = False,
                  nodes: Mapping[str, str] | None = MappingProxyType({}), halves: bool = False) -> Observed:
    """Read what ``body`` needs and view it. ``neighbours``: the namespace's other ClusterPKIs, from the
    watch, which reports in the server's order, so every one made before ``body`` is among them (an
    older one's Secret names are not ``body``'s to take). ``none_stored`` (the watch has seen none of its Secrets)
    spares the LIST of a new ClusterPKI's Secrets; a stale watch only means a 409 later, never a
    second write. The names of its missing rotation halves are looked for only with ``halves`` (a
    rotation is to write one: :attr:`Plan.read_halves`) or when one is on record: a ClusterPKI at rest
    reads nothing but its own Secrets."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    items = [] if none_stored else await reads.list(namespace, name)
    base = view(body, items, neighbours, reports, holder, nodes=nodes)
    if base.spec is None or base.meta.deleting:
        return base
    missing = {c: secrets.secret_name(name, c) for c in sorted(base.wanted) if c not in base.secrets}
    if not halves and all(secrets.is_rotation(c) and not _recorded(base, c) for c in missing):
        return replace(base, halves_read=not missing)
    if base.first_write:  # who else may want its names
        neighbours = await _twins_afresh(reads, body, neighbours, base.wanted)
    present = await reads.names(namespace)
    fetch = [c for c, n in missing.items() if n in present and _may_be_its_own(c, present[n], name, base)]
    found = await asyncio.gather(*(reads.get(namespace, missing[c]) for c in fetch))
    fetched = [item for item in found if item is not None]
    strangers = {c: _stranger(missing[c], present[missing[c]]) for c in missing
                 if missing[c] in present and c not in fetch}
    return view(body, items, neighbours, reports, holder, fetched, strangers, nodes)


def view(body: Mapping[str, Any], items: Sequence[dict[str, Any]], neighbours: Sequence[Mapping[str, Any]] = (),
         reports: Sequence[Report] = (), holder: str = "", fetched: Sequence[dict[str, Any]] = (),
         strangers: Mapping[str, Stranger] | None = None,
         nodes: Mapping[str, str] | None = MappingProxyType({})) -> Observed:
    """The typed view of a ClusterPKI (``body``), its labelled Secrets (``items``), the Secrets at its names
    fetched without its labels, and the rest of what was read."""
    meta = _meta(body)
    status = body.get("status") or {}
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    pki_spec, problem = _spec(body)
    own, impostors = secrets.owned(list(items), meta.name)
    for item in fetched:  # at one of its names, without its labels: judged by the record, or by age
        stored = StoredSecret.from_object(item)
        own[stored.name.removeprefix(f"{meta.name}-")] = stored
    record = Record.from_status(status.get("record"))
    return Observed(
        meta=meta, spec=pki_spec, spec_error=problem, requests=Requests.from_annotations(annotations),
        handled=Requests.from_status(status), conditions=tuple(status.get("conditions") or ()), record=record,
        claim=Claim.from_status(status.get("claim")), rotation=Rotation.from_status(status.get("caRotation")),
        secrets=own, strangers=strangers or {}, older_claims=_claims_of_older(body, neighbours) if pki_spec else {},
        impostors=tuple(impostors), imported=imported(annotations),
        legacy={} if record else _legacy(status), reports=tuple(reports),
        nodes=dict(nodes) if nodes is not None else None, holder=holder, status=status,
        wanted=frozenset(_wanted(pki_spec)) if pki_spec else frozenset())


def _meta(body: Mapping[str, Any]) -> Meta:
    meta = body["metadata"]
    created = meta.get("creationTimestamp")
    return Meta(namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""),
                api_version=body.get("apiVersion", ""), kind=body.get("kind", ""), generation=meta.get("generation"),
                created=times.parse_time(created) if created else None,
                resource_version=meta.get("resourceVersion", ""), deleting=bool(meta.get("deletionTimestamp")))


def _spec(body: Mapping[str, Any]) -> tuple[spec.Spec | None, str | None]:
    try:
        return spec.from_resource(body), None
    except spec.SpecError as exc:
        return None, str(exc)


def _wanted(pki_spec: spec.Spec) -> list[str]:
    """The components whose Secrets the ClusterPKI wants, and every rotation half it may write (a
    stranger at one of those names is in the way only of the rotation that writes it)."""
    halves = [f"{target}{suffix}" for target in TARGETS for suffix in (secrets.NEXT, secrets.PREVIOUS)]
    return [*secrets.components(pki_spec), *halves]


def _recorded(seen: Observed, component: str) -> bool:
    """Whether the record, or a claim in flight, names ``component``."""
    return component in seen.record.secrets or (seen.claim is not None and component in seen.claim.record.secrets)


def _may_be_its_own(component: str, found: SecretMeta, name: str, seen: Observed) -> bool:
    """Whether a Secret at one of its names, without its labels, is worth reading: it may be its own (on
    record, its labels removed), a CA or key brought in, or what ``clusterpki import`` stored."""
    if component in seen.record.secrets:
        return True  # its data decides, whatever its labels say now
    if secrets.owner_of(found.labels) not in (None, name):
        return False  # another ClusterPKI's
    if secrets.is_rotation(component):
        return False  # an unrecorded half is nobody's: never read
    brought_in = component in catalog.CA_BY_COMPONENT or component == catalog.SERVICE_ACCOUNT
    return brought_in or component in seen.record.secrets or component in seen.imported


def _stranger(secret_name: str, found: SecretMeta) -> Stranger:
    return Stranger(secret_name, secrets.owner_of(found.labels), found.labels.get(secrets.LABEL_COMPONENT))


def _legacy(status: Mapping[str, Any]) -> dict[str, str]:
    """The serials a status written before the record existed lists, by component."""
    return {str(e["name"]): str(e["serialNumber"]) for e in status.get("certificates") or []
            if isinstance(e, Mapping) and e.get("name") and e.get("serialNumber")}


def twins(name: str, wanted: frozenset[str]) -> list[str]:
    """The names an older ClusterPKI made later the same second could have and want one of ``name``'s Secret
    names with: each dash-prefix ``p`` of ``name`` (``name`` is ``p-rest``) for which some ``rest-component``
    is a component of the catalog (``x`` of ``x-etcd-server``, whose member ``admin`` has
    ``x-etcd-server-admin``; none for ``pki-7``). Only a dash-prefix sorts before ``name`` and can clash."""
    cuts = [i for i, ch in enumerate(name) if ch == "-"]
    return [name[:i] for i in cuts if any(catalog.is_component(f"{name[i + 1:]}-{c}") for c in wanted)]


async def _twins_afresh(reads: Reads, body: Mapping[str, Any], neighbours: Sequence[Mapping[str, Any]],
                        wanted: frozenset[str]) -> list[Mapping[str, Any]]:
    """``neighbours``, and the twins (:func:`twins`) the watch has not brought, read afresh: the watch
    brings every ClusterPKI made before this one, but a twin is older when made later the same second,
    and a watch may be behind (see :func:`clusterpki.controller.gates.settling`)."""
    meta = body["metadata"]
    known = {other["metadata"]["name"] for other in neighbours}
    unknown = [name for name in twins(meta["name"], wanted) if name not in known]
    found = await asyncio.gather(*(reads.clusterpki(meta["namespace"], name) for name in unknown))
    return [*neighbours, *(other for other in found if other is not None)]


def _related(one: str, other: str) -> bool:
    """Only a name that is a prefix of the other's, up to a '-', can lead to the same Secret name."""
    return one.startswith(f"{other}-") or other.startswith(f"{one}-")


def _claims_of_older(body: Mapping[str, Any], neighbours: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The Secret names wanted by older ClusterPKIs of the namespace (name -> ClusterPKI). Only a name
    that is a prefix of the other's, up to a '-', can lead to the same Secret name."""
    me = body["metadata"]
    mine = (me.get("creationTimestamp") or "", me["name"])
    claims: dict[str, str] = {}
    for other in neighbours:
        meta = other["metadata"]
        if not _related(me["name"], meta["name"]) or (meta.get("creationTimestamp") or "", meta["name"]) >= mine:
            continue
        try:
            their = spec.from_resource(other)
        except spec.SpecError:  # an invalid ClusterPKI wants nothing
            continue
        claims.update({secret_name: meta["name"] for secret_name in secrets.names(their).values()})
    return claims
