"""Writing kubeadm's layout so that a failure leaves the directory exactly as it was, and a crash (kill -9,
power loss) leaves it as it was or, once :func:`recover` ran, completely written.

A write is staged and journalled in ``DIR/.clusterpki-staging`` before any file in place is replaced:
every new file is written and fsynced there, then the journal naming each one's target is committed
(written, fsynced, renamed), then each file is renamed into place (the one it replaces kept as a hard
link until the end), and the staging directory is removed. Before the commit nothing in place has
changed; after it, :func:`recover` finishes the renames. An exclusive lock on ``DIR`` keeps two
writers from interleaving. Used by ``render`` and the agent alike.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple, NoReturn

from clusterpki.errors import UserError

STAGING = ".clusterpki-staging"  # in ``out``: the staged files of a write and its journal
JOURNAL = "journal"  # in STAGING: {"renames": [[staged file name, path below out], ...]}
OLD_STAGING = ".clusterpki-render-*"  # staging directories of the scheme before the journal


class FileContent(NamedTuple):
    data: bytes
    mode: int


def write(out: Path, files: dict[str, FileContent], keep: set[str]) -> list[str]:
    """Write ``files`` below ``out``, all or nothing, even across a kill -9 or a power loss. Paths in
    ``keep`` that exist are never touched (CAs and the service-account key that were brought in).
    Returns the paths written, including those of an interrupted write that this call completed (they
    changed on disk, so what reads them needs restarting).

    A write is staged and journalled in ``out/.clusterpki-staging`` (see :func:`_stage`) before any
    file in place is replaced; a write interrupted earlier is first completed or discarded by
    :func:`recover`. An exclusive lock on ``out`` keeps two writers from interleaving.
    """
    try:
        lock, made = _lock(out)
    except OSError as exc:
        raise _unchanged(out, exc) from None
    try:
        completed = _recover_locked(out)
        try:
            changed = {path: content for path, content in files.items()
                       if not (path in keep and (out / path).exists()) and _differs(out / path, content)}
        except OSError as exc:
            raise _unchanged(out, exc) from None
        if changed:
            _write_locked(out, changed, made)
    finally:
        os.close(lock)
    return list(changed) + [path for path in completed if path not in changed]


def recover(out: Path) -> list[str]:
    """Complete or discard a write to ``out`` that was interrupted (a kill -9, a power loss): roll it
    forward when its journal was committed, else throw its staged files away. Either way no staging
    directory, and so no private key, is left. Returns the paths it renamed into place."""
    try:
        lock = _open_locked(out)
    except OSError as exc:
        raise _unrecovered(out, exc) from None
    if lock is None:
        return []
    try:
        return _recover_locked(out)
    finally:
        os.close(lock)


def _lock(out: Path) -> tuple[int, list[Path]]:
    """Create ``out`` (and missing parents) and hold the lock on it; returns the lock's descriptor and
    the directories made, outermost first. Tries again when a writer that failed meanwhile removed
    the ``out`` it had made."""
    while True:
        made = _make_parents(out, Path(out.anchor))
        lock = _open_locked(out)
        if lock is not None:
            return lock, made


def _open_locked(out: Path) -> int | None:
    """An exclusive ``flock`` on the directory ``out`` itself, None when it does not exist (any more).

    The directory, not a lock file in it, is locked: a failed first write removes ``out`` altogether
    and a failed later one leaves it exactly as it was, so there is no lock file to leave or to
    remove under a waiting writer. A waiter that got the lock of a directory removed meanwhile sees
    that ``out`` is no longer the directory it locked.
    """
    try:
        lock = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    locked = False
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        locked = _is_at(lock, out)
    finally:
        if not locked:
            os.close(lock)
    return lock if locked else None


def _is_at(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _recover_locked(out: Path) -> list[str]:
    """:func:`recover`, the lock held. Staging directories of the scheme before the journal
    (``.clusterpki-render-*``) cannot be completed, only removed."""
    staging = out / STAGING
    try:
        for old in out.glob(OLD_STAGING):
            _remove_flat(old)
        if not staging.exists():
            return []
        renames = _read_journal(out, staging)
        completed = [] if renames is None else _roll_forward(out, staging, renames)
        _remove_staging(staging)
    except OSError as exc:
        raise _unrecovered(out, exc) from None
    return completed


def _read_journal(out: Path, staging: Path) -> list[tuple[str, str]] | None:
    """The renames (staged name, path below ``out``) of a committed write; None when the write did not
    reach its commit point, which leaves nothing in place to undo."""
    journal = staging / JOURNAL
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return None
    try:
        renames = [_journal_entry(entry) for entry in json.loads(data)["renames"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"cannot complete the interrupted write of the PKI in {out}: {journal} is not a "
                        f"journal clusterpki wrote (remove {staging} to discard that write)") from None
    return renames


def _journal_entry(entry: Any) -> tuple[str, str]:
    """One rename of a journal, checked: a staged file's name and a path inside ``out``; ValueError
    (or TypeError) for anything else, so that a damaged journal cannot move a file elsewhere."""
    name, path = entry
    parts = PurePosixPath(path).parts
    if not (isinstance(name, str) and name.isdigit() and parts and parts[0] != "/" and ".." not in parts):
        raise ValueError(f"not a rename of a journal: {entry!r}")
    return name, path


def _roll_forward(out: Path, staging: Path, renames: list[tuple[str, str]]) -> list[str]:
    """Finish a committed write: rename each staged file still there into place. One that is gone was
    renamed already, so this converges however often it is itself interrupted."""
    completed: list[str] = []
    made: list[Path] = []
    for name, path in renames:
        staged, target = staging / name, out / path
        if os.path.lexists(staged):
            made += _make_parents(target.parent, out)
            os.replace(staged, target)
            completed.append(path)
    _sync_parents([out / path for _, path in renames], made)
    return completed


def _write_locked(out: Path, changed: dict[str, FileContent], made: list[Path]) -> None:
    """Stage and commit ``changed``, then put it in place; the lock held, no staging directory there.
    A failure before the commit point removes what was staged and the directories made."""
    staging = out / STAGING
    try:
        renames = _stage(staging, changed)
    except OSError as exc:
        with contextlib.suppress(OSError):  # left over, it holds no journal: the next write discards it
            _remove_staging(staging)
        _remove_dirs(made)
        raise _unchanged(out, exc) from None
    _apply(out, staging, renames, made)
    # The PKI is in place: failing now would hide from the caller (the agent) what must be restarted.
    # What is left holds the replaced files only, and the next write or recover() removes it.
    with contextlib.suppress(OSError):
        _remove_staging(staging)


def _stage(staging: Path, changed: dict[str, FileContent]) -> list[tuple[str, str]]:
    """Write every new file in ``staging``, then the journal naming each with its path below ``out``.

    The journal's rename to its final name is the commit point: a write interrupted before it is
    discarded by :func:`recover`, after it completed. Everything is fsynced first, and ``out`` too
    (it holds the staging directory), so that after a power loss the journal names files that exist.
    """
    os.mkdir(staging, 0o700)
    renames = []
    for index, (path, content) in enumerate(changed.items()):
        _write_synced(staging / str(index), content)
        renames.append((str(index), path))
    journal = json.dumps({"renames": renames}, indent=1).encode()
    _write_synced(staging / f"{JOURNAL}.tmp", FileContent(journal, 0o600))
    _sync_dir(staging)
    os.replace(staging / f"{JOURNAL}.tmp", staging / JOURNAL)
    _sync_dir(staging)
    _sync_dir(staging.parent)
    return renames


def _apply(out: Path, staging: Path, renames: list[tuple[str, str]], made: list[Path]) -> None:
    """Rename each staged file into place, keeping a hard link to the file it replaces in staging, and
    fsync the directories changed. On a failure the renames done are undone (:func:`_undo`)."""
    try:
        for name, path in renames:
            staged, target = staging / name, out / path
            made += _make_parents(target.parent, out)
            if os.path.lexists(target):
                os.link(target, staging / f"{name}.previous")
            os.replace(staged, target)
        _sync_parents([out / path for _, path in renames], made)
    except OSError as exc:
        _undo(out, staging, renames, made, exc)


def _undo(out: Path, staging: Path, renames: list[tuple[str, str]], made: list[Path], exc: OSError) -> NoReturn:
    """Undo the renames done, newest first, and raise. A rename was done when its staged file is gone
    (what the disk says, as for :func:`recover`). Each step is the inverse of a rename, so the journal
    stays true throughout: if the undo fails as well, it is left, and :func:`recover` completes the write."""
    reason = exc.strerror or str(exc)
    try:
        for name, path in reversed(renames):
            staged, target, backup = staging / name, out / path, staging / f"{name}.previous"
            if os.path.lexists(staged):
                continue
            if os.path.lexists(backup):
                os.link(target, staged)
                os.replace(backup, target)
            else:
                os.replace(target, staged)
        _sync_parents([out / path for _, path in renames], [])
        _remove_staging(staging)
    except OSError:
        raise UserError(f"cannot write the PKI to {out}: {reason}; the write stopped half-way "
                        "and it is completed the next time") from None
    _remove_dirs(made)
    raise _unchanged(out, exc) from None


def _unchanged(out: Path, exc: OSError) -> UserError:
    return UserError(f"cannot write the PKI to {out}: {exc.strerror or exc}; nothing was changed")


def _unrecovered(out: Path, exc: OSError) -> UserError:
    return UserError(f"cannot complete the interrupted write of the PKI in {out}: {exc.strerror or exc}; "
                     "it is tried again the next time")


def _differs(path: Path, content: FileContent) -> bool:
    try:
        return path.read_bytes() != content.data or (path.stat().st_mode & 0o777) != content.mode
    except FileNotFoundError:
        return True


def _write_synced(path: Path, content: FileContent) -> None:
    """Create ``path`` with exactly ``content``, fsynced. ``os.write`` may write less than asked (a full
    disk does): it is called until all is written, and a call that writes nothing is an error, so
    that a truncated file is never taken for a written one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, content.mode)
    try:
        os.fchmod(fd, content.mode)  # the umask must not widen or narrow it
        rest = memoryview(content.data)
        while rest:
            count = os.write(fd, rest)
            if count <= 0:
                raise OSError(errno.EIO, "a write made no progress")
            rest = rest[count:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_parents(directory: Path, root: Path) -> list[Path]:
    """Create ``directory`` and missing parents up to ``root``; return those created, outermost first."""
    missing = []
    while directory != root and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o755)
    return list(reversed(missing))


def _remove_dirs(made: list[Path]) -> None:
    """Remove the directories a failed write made, innermost first. One that is not empty any more was
    filled by another writer meanwhile and is its own now, and so are those around it."""
    for directory in reversed(made):
        try:
            directory.rmdir()
        except OSError:
            return


def _remove_staging(staging: Path) -> None:
    """Remove a staging directory, its journal first: without a journal what is left of it is
    discarded, whereas a journal whose staged files were partly removed would be half rolled forward."""
    if not staging.exists():
        return
    journal = staging / JOURNAL
    if journal.exists():
        journal.unlink()
        _sync_dir(staging)
    _remove_flat(staging)
    _sync_dir(staging.parent)


def _remove_flat(directory: Path) -> None:
    """Remove a staging directory, which holds files only."""
    for entry in directory.iterdir():
        entry.unlink()
    directory.rmdir()


def _sync_parents(targets: list[Path], made: list[Path]) -> None:
    """fsync every directory whose entries changed: the targets' and those holding the directories
    made, so that no rename is lost to a power loss once the journal that records it is removed."""
    for directory in sorted({target.parent for target in targets} | {path.parent for path in made}):
        _sync_dir(directory)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
