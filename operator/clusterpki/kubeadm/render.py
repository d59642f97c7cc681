"""``clusterpki render``: a ClusterPKI file in, kubeadm's ``/etc/kubernetes`` layout out, no cluster needed."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from clusterpki.errors import UserError
from clusterpki.kubeadm import layout, writer
from clusterpki.pki import catalog, documents, engine, placement, spec
from clusterpki.pki.certificates import Why


class Outcome(NamedTuple):
    """What a render did: each component with what happened to it and why, and the files written."""

    member: str
    actions: list[tuple[str, str, str]]  # (component, action, detail)
    written: list[str]


def load_spec_file(path: Path) -> spec.Spec:
    """The ClusterPKI in a YAML file (the same document ``kubectl apply`` takes), validated."""
    return _validated(path, _load_resource(path))


def load_spec_and_namespace(path: Path) -> tuple[spec.Spec, str | None]:
    """The ClusterPKI in a YAML file, validated, and the namespace its metadata names (None if none)."""
    resource = _load_resource(path)
    namespace = (resource.get("metadata") or {}).get("namespace")
    return _validated(path, resource), namespace if isinstance(namespace, str) and namespace else None


STDIN = Path("-")  # -f -: the document comes on standard input, as kubectl's


def _load_resource(path: Path) -> dict:
    try:
        text = sys.stdin.read() if path == STDIN else path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {_named(path)}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        found = [d for d in documents.load_all(text) if d is not None]
    except documents.Error as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{_named(path)} is not valid YAML{where}") from None
    found = [d for d in found if isinstance(d, dict) and d.get("kind") == spec.KIND]
    if len(found) != 1:
        raise UserError(f"{_named(path)} must hold exactly one {spec.KIND} document, it holds {len(found)}")
    return found[0]


def _validated(path: Path, resource: dict) -> spec.Spec:
    try:
        return spec.from_resource(resource)
    except spec.SpecError as exc:
        raise UserError(f"{_named(path)} is not a valid {spec.KIND}: {exc}") from None


def _named(path: Path) -> str:
    return "standard input" if path == STDIN else str(path)


def render(pki_spec: spec.Spec, out: Path, member: str | None, force: bool, now: datetime) -> Outcome:
    """Complete the PKI in ``out``: keep the CAs, the service-account key and every valid leaf already
    there (all leaves are re-issued with ``force``), issue the rest, and write all at once."""
    try:
        chosen = pki_spec.member(member).name
    except LookupError as exc:
        raise UserError(str(exc)) from None
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    writer.recover(out)  # a render cut short (kill -9) is finished first: it is read before it is written
    existing, unreadable = layout.load(out, chosen, now)
    nodes_own = layout.nodes_own(out, chosen)
    planned = [leaf for leaf in catalog.plan(pki_spec, [chosen], rendering=True) if leaf.component not in nodes_own]
    forced = {leaf.component: engine.FORCED for leaf in planned} if force else {}
    pki = engine.build(pki_spec, existing, now, leaves=planned, force=forced)

    keep = {f"{ca.file}.{ext}" for ca in catalog.CERTIFICATE_AUTHORITIES if ca.component in existing.cas
            for ext in ("crt", "key")}
    if existing.service_account is not None:
        keep.add(catalog.SERVICE_ACCOUNT_FILES[0])
    written = writer.write(out, layout.to_write(out, layout.files_for(pki, chosen)), keep)

    kept = ("kept", "")
    actions = [(c.component, *(kept if c.component not in pki.issued else ("created", "")))
               for c in catalog.CERTIFICATE_AUTHORITIES]
    for component in pki.planned:
        issue = pki.issued.get(component)
        reason = unreadable.get(component) or (issue.message if issue else None)
        if reason is None:
            actions.append((component, *kept))
        elif component not in unreadable and issue is not None and issue.why is Why.NEW:
            actions.append((component, "created", ""))
        else:
            actions.append((component, "re-issued", reason))
    actions += [(component, "kept", f"{path} is the node's own") for component, path in nodes_own.items()]
    sa = catalog.SERVICE_ACCOUNT
    actions.append((sa, *(kept if sa not in pki.issued else ("created", ""))))
    return Outcome(member=chosen, actions=actions, written=written)



def shared_files() -> tuple[str, ...]:
    """What every member of one control plane must hold the same: each CA's pair and the service-account
    key (tokens one apiserver signs, every other verifies)."""
    authorities = {*catalog.CA_BY_COMPONENT, catalog.SERVICE_ACCOUNT}
    return tuple(p.path for p in placement.placements("") if p.component in authorities)


def render_members(pki_spec: spec.Spec, out: Path, force: bool, now: datetime) -> list[Outcome]:
    """Every etcd member's directory, ``out/<member>``, in one run: the first member's is rendered, its
    CAs and service-account key are shared into the others' (a member directory that already holds
    different ones is an error: its cluster is another), and each of those is rendered in turn."""
    names = [member.name for member in pki_spec.etcd_members]
    first = out / names[0]
    outcomes = [render(pki_spec, first, names[0], force, now)]
    authorities = {*catalog.CA_BY_COMPONENT, catalog.SERVICE_ACCOUNT}
    for name in names[1:]:
        shared = _share(first, out / name)
        outcome = render(pki_spec, out / name, name, force, now)
        copied = ("copied", f"from {names[0]}")
        actions = [(c, *copied) if c in authorities and shared else (c, action, detail)
                   for c, action, detail in outcome.actions]
        outcomes.append(outcome._replace(actions=actions, written=[*shared, *outcome.written]))
    return outcomes


def _share(source: Path, target: Path) -> list[str]:
    """Copy the shared files of ``source`` that ``target`` lacks; the paths written."""
    files = {}
    for relative in shared_files():
        data = (source / relative).read_bytes()
        present = target / relative
        if present.exists() and not layout.same_material(relative, present.read_bytes(), data):
            raise UserError(f"{present} is not {source / relative}: the members of one control plane share their "
                            "CAs and service-account key; remove it, or render that member apart")
        if not present.exists():
            files[relative] = writer.FileContent(data, (source / relative).stat().st_mode & 0o777)
    if not files:
        return []
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} exists and is not a directory")
    return writer.write(target, files, set())
