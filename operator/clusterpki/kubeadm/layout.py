"""kubeadm's offline layout (``DIR/pki/...`` and ``DIR/*.conf``): reading what is there, and writing a
PKI so that a failure leaves the directory exactly as it was."""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from cryptography import x509

from clusterpki.errors import UserError
from clusterpki.pki import catalog, engine, keys, kubeconfig
from clusterpki.pki.certificates import KeyPair
from clusterpki.pki.keys import PrivateKey

PRIVATE = 0o600
PUBLIC = 0o644


class FileContent(NamedTuple):
    data: bytes
    mode: int


def kubeadm_name(profile: catalog.LeafProfile) -> str:
    """The name kubeadm prints for a leaf: ``etcd-server``, ``apiserver``, ``admin.conf``..."""
    if profile.kubeconfig:
        return profile.kubeconfig
    assert profile.file is not None
    return profile.file.removeprefix("pki/").replace("/", "-")


def leaf_for_file(profile: catalog.LeafProfile, member: str) -> str:
    """The component a kubeadm file holds: per-member files hold the chosen member's certificate."""
    return f"{profile.component}-{member}" if profile.per_member else profile.component


def load(out: Path, member: str, now: datetime) -> tuple[engine.Existing, dict[str, str]]:
    """What ``out`` already holds, for :func:`engine.build`, and why unreadable leaves are unusable.

    A CA or service-account key that is present but unusable is an error: it is never replaced.
    """
    cas: dict[str, KeyPair] = {}
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        crt, key = out / f"{ca.file}.crt", out / f"{ca.file}.key"
        if not crt.exists() and not key.exists():
            continue
        if not (crt.exists() and key.exists()):
            present, absent = (crt, key) if crt.exists() else (key, crt)
            raise UserError(f"{_rel(present, out)} exists without {_rel(absent, out)}: a CA needs both its "
                            "certificate and its key (remove the one file to have a new CA made)")
        try:
            pair = KeyPair(read_cert(crt), keys.load_private_pem(key.read_bytes()))
        except (ValueError, OSError) as exc:
            raise UserError(f"the {ca.component} CA in {_rel(crt, out)} cannot be read: {exc}") from None
        problem = engine.check_ca(pair, now)
        if problem:
            raise UserError(f"the {ca.component} CA in {_rel(crt, out)} cannot be used: {problem}; "
                            "it is never replaced automatically (remove both files to have a new CA made)")
        cas[ca.component] = pair

    leaves: dict[str, KeyPair] = {}
    unreadable: dict[str, str] = {}
    for profile in catalog.LEAVES:
        component = leaf_for_file(profile, member)
        try:
            pair = read_leaf(out, profile)
        except ValueError as exc:
            unreadable[component] = f"it cannot be read ({exc})"
            continue
        if pair is not None:
            leaves[component] = pair

    return engine.Existing(cas=cas, leaves=leaves, service_account=_read_sa_key(out)), unreadable


def files_for(pki: engine.PKI, member: str) -> dict[str, FileContent]:
    """Every file of the layout, by path below DIR, with the content and mode it should have."""
    files: dict[str, FileContent] = {}
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        pair = pki.cas[ca.component]
        files[f"{ca.file}.crt"] = FileContent(kubeconfig.pem_bundle([pair.cert]), PUBLIC)
        files[f"{ca.file}.key"] = FileContent(keys.private_pem(pair.key), PRIVATE)
    for profile in catalog.LEAVES:
        pair = pki.leaves[leaf_for_file(profile, member)]
        if profile.file:
            files[f"{profile.file}.crt"] = FileContent(kubeconfig.pem_bundle([pair.cert]), PUBLIC)
            files[f"{profile.file}.key"] = FileContent(keys.private_pem(pair.key), PRIVATE)
        if profile.kubeconfig:
            data = kubeconfig.render(pki.spec.server_url, profile.common_name, pair, pki.bundle(profile.issuer))
            files[profile.kubeconfig] = FileContent(data, PRIVATE)
    sa_key, sa_pub = catalog.SERVICE_ACCOUNT_FILES
    files[sa_key] = FileContent(keys.private_pem(pki.service_account), PRIVATE)
    files[sa_pub] = FileContent(keys.public_pem(pki.service_account), PUBLIC)
    return files


def files_from_stored(stored: Mapping[str, Mapping[str, bytes]], member: str) -> dict[str, FileContent]:
    """The layout for one etcd member from what a ClusterPKI's Secrets hold (component -> the
    Secret's data, decoded): the agent's files. Each CA's ``.crt`` is its trust bundle (``ca.crt``
    of the CA's Secret, its signing certificate first, so that a key pair still loads from it), and
    ``sa.pub`` every public key that verifies tokens, so that during a rotation consumers trust the
    old and the new. Components with no Secret yet are left out."""
    files: dict[str, FileContent] = {}
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        data = stored.get(ca.component)
        if data is not None:
            files[f"{ca.file}.crt"] = FileContent(data.get("ca.crt") or data["tls.crt"], PUBLIC)
            files[f"{ca.file}.key"] = FileContent(data["tls.key"], PRIVATE)
    for profile in catalog.LEAVES:
        data = stored.get(leaf_for_file(profile, member))
        if data is None:
            continue
        if profile.file:
            files[f"{profile.file}.crt"] = FileContent(data["tls.crt"], PUBLIC)
            files[f"{profile.file}.key"] = FileContent(data["tls.key"], PRIVATE)
        if profile.kubeconfig:
            files[profile.kubeconfig] = FileContent(data["kubeconfig"], PRIVATE)
    data = stored.get(catalog.SERVICE_ACCOUNT)
    if data is not None:
        sa_key, sa_pub = catalog.SERVICE_ACCOUNT_FILES
        files[sa_key] = FileContent(data["sa.key"], PRIVATE)
        files[sa_pub] = FileContent(data["sa.pub"], PUBLIC)
    return files


def sources(member: str) -> dict[str, str]:
    """The component (the Secret) each file of one member's layout comes from."""
    found = {}
    for ca in catalog.CERTIFICATE_AUTHORITIES:
        found[f"{ca.file}.crt"] = found[f"{ca.file}.key"] = ca.component
    for profile in catalog.LEAVES:
        component = leaf_for_file(profile, member)
        if profile.file:
            found[f"{profile.file}.crt"] = found[f"{profile.file}.key"] = component
        if profile.kubeconfig:
            found[profile.kubeconfig] = component
    for path in catalog.SERVICE_ACCOUNT_FILES:
        found[path] = catalog.SERVICE_ACCOUNT
    return found


def write(out: Path, files: dict[str, FileContent], keep: set[str]) -> list[str]:
    """Write ``files`` below ``out``, all or nothing. Paths in ``keep`` that exist are never touched
    (CAs and the service-account key that were brought in). Returns the paths written.

    Every new file is first written and fsynced in a staging directory inside ``out``; then each is
    renamed into place, the previous version kept as a hard link until the end. If anything fails,
    the renames are undone, so ``out`` holds exactly what it held before.
    """
    changed = {path: content for path, content in files.items()
               if not (path in keep and (out / path).exists()) and _differs(out / path, content)}
    made_dirs: list[Path] = _make_parents(out, Path(out.anchor))
    staging = out / f".clusterpki-render-{os.getpid()}-{os.urandom(4).hex()}"
    staging.mkdir(mode=0o700)
    done: list[tuple[Path, Path | None]] = []
    try:
        staged = {}
        for index, (path, content) in enumerate(changed.items()):
            staged[path] = _write_synced(staging / str(index), content)
        for index, path in enumerate(changed):
            target = out / path
            made_dirs += _make_parents(target.parent, out)
            backup = None
            if target.exists():
                backup = staging / f"{index}.previous"
                os.link(target, backup)
            os.replace(staged[path], target)
            done.append((target, backup))
        _sync_dir(out)
    except OSError as exc:
        for target, backup in reversed(done):
            if backup is not None:
                os.replace(backup, target)
            else:
                target.unlink()
        _remove_flat(staging)
        for directory in reversed(made_dirs):
            directory.rmdir()
        raise UserError(f"cannot write the PKI to {out}: {exc.strerror or exc}; nothing was changed") from None
    finally:
        _remove_flat(staging)
    return list(changed)


def read_leaf(out: Path, profile: catalog.LeafProfile) -> KeyPair | None:
    """The pair of a leaf's kubeadm file(s), None when absent; ValueError when unreadable or half there."""
    if profile.file:
        crt, key = out / f"{profile.file}.crt", out / f"{profile.file}.key"
        if not crt.exists() and not key.exists():
            return None
        if not (crt.exists() and key.exists()):
            raise ValueError("its certificate or key is missing")
        return KeyPair(read_cert(crt), keys.load_private_pem(key.read_bytes()))
    assert profile.kubeconfig is not None
    path = out / profile.kubeconfig
    if not path.exists():
        return None
    _, pair, _ = kubeconfig.read(path.read_bytes())
    return pair


def _read_sa_key(out: Path) -> PrivateKey | None:
    path = out / catalog.SERVICE_ACCOUNT_FILES[0]
    if not path.exists():
        return None
    try:
        return keys.load_private_pem(path.read_bytes())
    except ValueError as exc:
        raise UserError(f"{_rel(path, out)} cannot be read: {exc}; the service-account key is never "
                        "replaced automatically (remove it to have a new one made)") from None


def read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ValueError(f"{path.name} is not a PEM certificate") from None


def _differs(path: Path, content: FileContent) -> bool:
    try:
        return path.read_bytes() != content.data or (path.stat().st_mode & 0o777) != content.mode
    except FileNotFoundError:
        return True


def _write_synced(path: Path, content: FileContent) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, content.mode)
    try:
        os.fchmod(fd, content.mode)  # the umask must not widen or narrow it
        os.write(fd, content.data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _make_parents(directory: Path, root: Path) -> list[Path]:
    """Create ``directory`` and missing parents up to ``root``; return those created, outermost first."""
    missing = []
    while directory != root and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o755)
    return list(reversed(missing))


def _remove_flat(directory: Path) -> None:
    """Remove the staging directory, which holds files only."""
    if not directory.exists():
        return
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))
