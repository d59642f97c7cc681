"""kubeadm's offline layout (``DIR/pki/...`` and ``DIR/*.conf``): the files of a PKI, and the PKI in
the files, both by the one placement table (:mod:`clusterpki.pki.placement`). Writing them is
:mod:`clusterpki.kubeadm.writer`'s."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from clusterpki.errors import UserError
from clusterpki.kubeadm.writer import FileContent
from clusterpki.pki import catalog, engine, keys, kubeconfig, placement, spec
from clusterpki.pki.certificates import KeyPair
from clusterpki.pki.keys import PrivateKey
from clusterpki.pki.placement import Placement, SecretKey

__all__ = ["FileContent", "files_for", "load", "nodes_own", "pair_files", "read_cert", "read_pair", "to_write",
           "where_present"]
T = TypeVar("T")


def files_for(pki: engine.PKI, member: str) -> dict[str, FileContent]:
    """Every file of one member's layout, by path below DIR, with the content and mode it should have.
    A CA's ``.crt`` is its trust bundle and ``sa.pub`` every key that verifies tokens: during a rotation,
    consumers trust the old and the new. A single-file CA's ``.crt`` (``ca``) is instead the one CA that
    signs on disk, with its ``.key``: leaves of the new CA carry its cross-signed certificate meanwhile."""
    mine = {leaf.component for leaf in catalog.plan(pki.spec, [member], rendering=True)}.intersection(pki.planned)
    return {p.path: FileContent(_content(pki, p, member), p.mode) for p in placement.placements(member, mine)}


def where_present(out: Path, files: dict[str, FileContent]) -> dict[str, FileContent]:
    """``files`` less those kubeadm writes on its init node alone (``super-admin.conf``) that ``out`` does
    not hold: an agent keeps such a file current where it is, and never puts one back once it is moved
    away (as kubeadm advises), as ``kubeadm certs renew`` does."""
    optional = {p.path for p in placement.placements("") if p.where is catalog.Where.FIRST_MEMBER}
    return {path: content for path, content in files.items() if path not in optional or (out / path).exists()}


def _content(pki: engine.PKI, found: Placement, member: str) -> bytes:
    if found.key is SecretKey.SA_KEY:
        return keys.private_pem(pki.service_account)
    if found.key is SecretKey.SA_PUB:
        return b"".join(keys.public_pem(k) for k in pki.service_account_keys())
    profile = catalog.CA_BY_COMPONENT.get(found.component)
    if found.key is SecretKey.BUNDLE:
        single = profile is not None and profile.single_file
        return kubeconfig.pem_bundle([pki.disk_pair(found.row).cert] if single else pki.bundle(found.row))
    pair = pki.disk_pair(found.component) if profile is not None else pki.leaves[found.component]
    if found.key is SecretKey.KEY:
        return keys.private_pem(pair.key)
    if found.key is SecretKey.CERTIFICATE:
        return kubeconfig.pem_bundle(pair.certificates)
    leaf = pki.planned[found.component]
    return kubeconfig.render(server_of(pki.spec, leaf.profile, member), leaf.identity.common_name, pair,
                             pki.bundle(leaf.issuer))


def nodes_own(out: Path, member: str) -> dict[str, str]:
    """The files no Secret holds that ``out`` holds and render did not write (the kubelet's ``kubelet.conf``,
    once it points at the client certificate the kubelet rotates itself), by component: they are left as
    they are."""
    found = {}
    for p in placement.placements(member):
        if p.where is catalog.Where.RENDER_ONLY and p.key is SecretKey.KUBECONFIG and (out / p.path).is_file():
            if not kubeconfig.is_plain((out / p.path).read_bytes()):
                found[p.component] = p.path
    return found


def server_of(pki_spec: spec.Spec, profile: catalog.LeafProfile, member: str) -> str:
    """Where a member's kubeconfig points: its own apiserver for kube-controller-manager and kube-scheduler
    when the member has an advertiseAddress (kubeadm's localAPIEndpoint), else controlPlaneEndpoint."""
    local = pki_spec.member(member).local_url if profile.local and member else None
    return local or pki_spec.server_url


def pair_files(member: str) -> dict[str, tuple[Placement, ...]]:
    """The files of each component of one member's layout that hold its certificate and key."""
    found: dict[str, list[Placement]] = defaultdict(list)
    for p in placement.placements(member):
        if p.key not in (SecretKey.SA_PUB,):
            found[p.component].append(p)
    return {c: tuple(files) for c, files in found.items()}


def load(out: Path, member: str, now: datetime) -> tuple[engine.Existing, dict[str, str]]:
    """What ``out`` already holds, for :func:`engine.build`, and why unreadable leaves are unusable.

    A CA or service-account key that is present but unusable is an error: it is never replaced.
    """
    cas: dict[str, KeyPair] = {}
    leaves: dict[str, KeyPair] = {}
    unreadable: dict[str, str] = {}
    for component, files in pair_files(member).items():
        if component in catalog.CA_BY_COMPONENT:
            pair = _load_ca(out, component, files, now)
            if pair is not None:
                cas[component] = pair
        elif component != catalog.SERVICE_ACCOUNT:
            try:
                pair = read_pair(out, files)
            except ValueError as exc:
                unreadable[component] = f"it cannot be read ({exc})"
                continue
            if pair is not None:
                leaves[component] = pair
    return engine.Existing(cas=cas, leaves=leaves, service_account=_read_sa_key(out)), unreadable


def _load_ca(out: Path, component: str, files: tuple[Placement, ...], now: datetime) -> KeyPair | None:
    crt, key = (out / p.path for p in sorted(files, key=lambda p: p.key is SecretKey.KEY))
    if not crt.exists() and not key.exists():
        return None
    if not (crt.exists() and key.exists()):
        present, absent = (crt, key) if crt.exists() else (key, crt)
        raise UserError(f"{_rel(present, out)} exists without {_rel(absent, out)}: a CA needs both its "
                        "certificate and its key (remove the one file to have a new CA made)")
    pair = KeyPair(_read(out, crt, component, read_cert), _read(out, key, component, _read_key))
    problem = engine.check_ca(pair, now)
    if problem:
        raise UserError(f"the {component} CA in {_rel(crt, out)} cannot be used: {problem}; "
                        "it is never replaced automatically (remove both files to have a new CA made)")
    return pair


def _read(out: Path, path: Path, component: str, reader: Callable[[Path], T]) -> T:
    try:
        return reader(path)
    except (ValueError, OSError) as exc:
        raise UserError(f"the {component} CA in {_rel(path, out)} cannot be read: {exc}") from None


def _read_key(path: Path) -> PrivateKey:
    return keys.load_private_pem(path.read_bytes())


def read_pair(out: Path, files: tuple[Placement, ...]) -> KeyPair | None:
    """The pair a component's files hold (a certificate and key, or a kubeconfig); None when absent;
    ValueError when unreadable or half there."""
    login = next((p for p in files if p.key is SecretKey.KUBECONFIG), None)
    if login is not None:
        path = out / login.path
        if not path.exists():
            return None
        _, pair, _ = kubeconfig.read(path.read_bytes())
        return pair
    crt = next(out / p.path for p in files if p.key is not SecretKey.KEY)
    key = next(out / p.path for p in files if p.key is SecretKey.KEY)
    if not crt.exists() and not key.exists():
        return None
    if not (crt.exists() and key.exists()):
        raise ValueError("its certificate or key is missing")
    try:
        cert, *chain = x509.load_pem_x509_certificates(crt.read_bytes())
    except ValueError:
        raise ValueError(f"{crt.name} is not a PEM certificate") from None
    return KeyPair(cert, keys.load_private_pem(key.read_bytes()), tuple(chain))


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
    """The first certificate of a file (a CA's ``.crt`` holds its bundle, the CA first)."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0]
    except ValueError:
        raise ValueError(f"{path.name} is not a PEM certificate") from None


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def signing_cas(out: Path) -> dict[str, KeyPair]:
    """The pair each single-file CA's files hold in ``out`` (``pki/ca.crt`` and ``pki/ca.key``), where
    they are whole: what an agent keeps writing if a rotation's old CA is no longer stored anywhere."""
    found = {}
    files = pair_files("")
    for ca in (ca for ca in catalog.CERTIFICATE_AUTHORITIES if ca.single_file):
        try:
            pair = read_pair(out, files[ca.component])
        except (OSError, ValueError):
            continue
        if pair is not None and keys.same_public_key(pair.cert.public_key(), pair.key):
            found[ca.component] = pair._replace(chain=())
    return found


def to_write(out: Path, files: dict[str, FileContent]) -> dict[str, FileContent]:
    """The files whose material differs from what ``out`` holds, or whose mode does. A file that holds the
    same material in other bytes stays byte for byte as it is, so nothing that reads it is restarted for
    it: a key in PKCS#8 (as openssl and kubeadm's own import write it) and in the traditional form, a
    kubeconfig laid out another way, a trust bundle's CAs in another order."""
    found = {}
    for path, content in files.items():
        try:
            current = (out / path).read_bytes()
            mode = (out / path).stat().st_mode & 0o777
        except FileNotFoundError:
            found[path] = content
            continue
        if mode != content.mode or not same_material(path, current, content.data):
            found[path] = content
    return found


def same_material(path: str, a: bytes, b: bytes) -> bool:
    """Whether two contents of the file at ``path`` give its readers the same thing."""
    if a == b:
        return True
    try:
        return _material(path, a) == _material(path, b)
    except (ValueError, KeyError):
        return False


def _material(path: str, data: bytes) -> object:
    kind = _KINDS.get(path)
    if kind in (SecretKey.KEY, SecretKey.SA_KEY):
        return keys.private_pem(keys.load_private_pem(data))
    if kind is SecretKey.CERTIFICATE:
        return tuple(_der(c) for c in x509.load_pem_x509_certificates(data))
    if kind is SecretKey.BUNDLE:
        found = [_der(c) for c in x509.load_pem_x509_certificates(data)]
        return tuple(found) if path in _SINGLE_FILES else frozenset(found)
    if kind is SecretKey.SA_PUB:
        return tuple(keys.public_pem(k) for k in keys.load_public_pems(data))
    if kind is SecretKey.KUBECONFIG:
        if not kubeconfig.is_plain(data):  # a token, an exec plugin, another context...: not ours
            raise ValueError("not a plain kubeconfig")
        server, pair, trust = kubeconfig.read(data)
        return server, tuple(_der(c) for c in pair.certificates), keys.private_pem(pair.key), \
            frozenset(_der(c) for c in trust)
    raise ValueError("no material to compare")


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


_KINDS = {p.path: p.key for p in placement.placements("")}
_SINGLE_FILES = frozenset(f"{ca.file}.crt" for ca in catalog.CERTIFICATE_AUTHORITIES if ca.single_file)
