"""``writer.write`` and ``writer.recover``: all or nothing across a kill -9 at any step (of the write and
of the recovery), a full disk, a read-only disk, short writes and two writers at once."""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

import pytest
from clusterpki.errors import UserError
from clusterpki.kubeadm import writer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.helpers import REPO

Files = dict[str, writer.FileContent]
PAIRS = ("pki/ca", "pki/apiserver", "pki/front-proxy-ca")
STAGED = f"{writer.STAGING}/"

# The writer, in a process of its own: os.<patched> kills it (SIGKILL) on its nth call, or each call
# first touches a marker and sleeps. It prints how many calls it made when it was not killed.
CHILD = """
import json, os, signal, sys, time
from pathlib import Path
operator, action, out, files, patched, nth, delay, marker = sys.argv[1:]
sys.path.insert(0, operator)
from clusterpki.kubeadm import writer
real, calls = getattr(os, patched), []

def instead(*args, **kwargs):
    calls.append(args)
    if len(calls) == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
    if marker:
        Path(marker).touch()
    time.sleep(float(delay))
    return real(*args, **kwargs)

setattr(os, patched, instead)
if action == "write":
    stored = json.loads(Path(files).read_text())
    writer.write(Path(out), {p: writer.FileContent(bytes.fromhex(d), m) for p, (d, m) in stored.items()}, set())
else:
    writer.recover(Path(out))
print(len(calls))
"""


def pair(name: str) -> tuple[bytes, bytes]:
    """A self-signed ECDSA P-256 certificate and its private key, in PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def pairs(stems: tuple[str, ...]) -> Files:
    files = {}
    for stem in stems:
        crt, key = pair(stem)
        files[f"{stem}.crt"] = writer.FileContent(crt, 0o644)
        files[f"{stem}.key"] = writer.FileContent(key, 0o600)
    return files


OLD = pairs(PAIRS)
NEW = pairs((*PAIRS, "pki/etcd/ca"))  # the etcd CA's directory is new too


def put(out: Path, files: Files) -> Path:
    """Files as an earlier write left them, written without the code under test."""
    for path, content in files.items():
        (out / path).parent.mkdir(parents=True, exist_ok=True)
        (out / path).write_bytes(content.data)
        (out / path).chmod(content.mode)
    return out


def save(path: Path, files: Files) -> Path:
    path.write_text(json.dumps({p: [c.data.hex(), c.mode] for p, c in files.items()}))
    return path


def child(action: str, out: Path, files: Path, patched: str = "replace", nth: int = 0, delay: float = 0,
          marker: str = "") -> list[str]:
    return [sys.executable, "-c", CHILD, str(REPO / "operator"), action, str(out), str(files), patched, str(nth),
            str(delay), marker]


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)


def contents(out: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}


def expected(files: Files) -> dict[str, tuple[bytes, int]]:
    return {path: (content.data, content.mode) for path, content in files.items()}


def directories(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_dir()}


def parents(files: Files) -> set[str]:
    return {str(parent) for path in files for parent in PurePosixPath(path).parents if str(parent) != "."}


def assert_pairs_match(out: Path) -> None:
    for crt in out.rglob("*.crt"):
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        key = serialization.load_pem_private_key(crt.with_suffix(".key").read_bytes(), None)
        raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        assert cert.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw), f"{crt} mismatched"


def assert_old_or_new_in_place(out: Path) -> None:
    """Right after a kill: each file in place is its old or its new version, never a truncated one, and
    private keys are nowhere else than in place or in the staging directory (0700)."""
    for path, value in contents(out).items():
        if not path.startswith(STAGED):
            assert value in (expected(OLD).get(path), expected(NEW).get(path)), path
    if (out / writer.STAGING).exists():
        assert (out / writer.STAGING).stat().st_mode & 0o777 == 0o700


def settled(out: Path) -> str:
    """What ``out`` holds once recovered: exactly the old files or exactly the new ones (so no staging
    directory, no key outside the targets, no directory of the other write), every pair matching."""
    assert not (out / writer.STAGING).exists()
    assert_pairs_match(out)
    for name, files in (("old", OLD), ("new", NEW)):
        if contents(out) == expected(files) and directories(out) == parents(files):
            return name
    raise AssertionError(f"neither all old nor all new: {sorted(contents(out))}, {sorted(directories(out))}")


@pytest.mark.parametrize("patched", ["write", "fsync", "link", "replace", "unlink"])
def test_a_kill_at_any_step_is_rolled_back_or_forward(tmp_path, patched):
    new = save(tmp_path / "new.json", NEW)
    outcomes = []
    for nth in itertools.count(1):
        out = put(tmp_path / f"out-{nth}", OLD)
        result = run(child("write", out, new, patched, nth))
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGKILL, result.stderr
        assert_old_or_new_in_place(out)
        recovered = writer.recover(out)
        outcomes.append(settled(out))
        if patched == "replace":  # the first rename commits the journal; then one file is renamed per call
            assert (outcomes[-1], recovered) == (("old", []) if nth == 1 else ("new", list(NEW)[nth - 2:]))
    assert outcomes == sorted(outcomes, key=["old", "new"].index), "once committed, never rolled back"
    assert len(outcomes) == int(result.stdout) > 0  # killed at each call in turn
    assert settled(out) == "new"


@pytest.mark.parametrize("patched", ["replace", "fsync", "unlink"])
def test_a_kill_during_recovery_is_recovered_too(tmp_path, patched):
    new = save(tmp_path / "new.json", NEW)
    crashed = put(tmp_path / "crashed", OLD)
    assert run(child("write", crashed, new, "replace", 4)).returncode == -signal.SIGKILL  # 2 of 8 renamed
    for nth in itertools.count(1):
        out = tmp_path / f"out-{nth}"
        shutil.copytree(crashed, out)
        result = run(child("recover", out, new, patched, nth))
        if result.returncode == 0:
            break
        assert result.returncode == -signal.SIGKILL, result.stderr
        assert_old_or_new_in_place(out)
        writer.recover(out)
        assert settled(out) == "new"
    assert nth > 1
    assert settled(out) == "new"


def test_a_recovery_killed_again_and_again_converges(tmp_path):
    new = save(tmp_path / "new.json", NEW)
    out = put(tmp_path / "out", OLD)
    assert run(child("write", out, new, "replace", 2)).returncode == -signal.SIGKILL  # committed, none renamed
    kills = 0
    while (result := run(child("recover", out, new, "replace", 2))).returncode:  # one rename, killed at the next
        assert result.returncode == -signal.SIGKILL, result.stderr
        assert_old_or_new_in_place(out)
        kills += 1
        assert kills < len(NEW), "each recovery renames one more file"
    assert kills == len(NEW) - 1
    assert settled(out) == "new"


def test_recover_removes_what_the_old_scheme_left(tmp_path):
    out = put(tmp_path / "out", OLD)
    left = out / ".clusterpki-render-123-0badcafe"
    left.mkdir(mode=0o700)
    (left / "0").write_bytes(NEW["pki/ca.key"].data)
    os.link(out / "pki/ca.key", left / "1.previous")
    assert writer.recover(out) == []
    assert settled(out) == "old"
    assert writer.recover(tmp_path / "absent") == [] and not (tmp_path / "absent").exists()


def test_a_failed_rename_is_undone_and_new_directories_removed(tmp_path, monkeypatch):
    out = put(tmp_path / "out", OLD)
    monkeypatch.setattr(writer.os, "replace", failing(os.replace, errno.EIO, lambda n: n == 9))  # the last
    with pytest.raises(UserError) as raised:
        writer.write(out, NEW, set())
    monkeypatch.undo()
    assert str(raised.value) == f"cannot write the PKI to {out}: Input/output error; nothing was changed"
    assert settled(out) == "old"


def test_a_failed_undo_leaves_the_journal_for_recover(tmp_path, monkeypatch):
    out = put(tmp_path / "out", OLD)
    monkeypatch.setattr(writer.os, "replace", failing(os.replace, errno.EIO, lambda n: n == 3))
    monkeypatch.setattr(writer.os, "link", failing(os.link, errno.EIO, lambda n: n >= 3))  # the undo's
    with pytest.raises(UserError) as raised:
        writer.write(out, NEW, set())
    monkeypatch.undo()
    assert str(raised.value) == f"cannot write the PKI to {out}: Input/output error; the write stopped half-way " \
                                "and it is completed the next time"
    assert_old_or_new_in_place(out)
    assert writer.recover(out) == list(NEW)[1:]
    assert settled(out) == "new"


def failing(real, code: int, when):
    """``real``, raising OSError(code) on the calls whose number ``when`` accepts."""
    calls = []

    def instead(*args):
        calls.append(args)
        if when(len(calls)):
            raise OSError(code, os.strerror(code))
        return real(*args)
    return instead


@contextlib.contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    directory.mkdir()
    why = "no mount command" if shutil.which("mount") is None else None
    if why is None:
        result = run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)])
        why = result.stderr.strip() if result.returncode else None
    if why:
        pytest.skip(f"cannot mount a tmpfs here ({why}): the full and read-only disk tests need root")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def test_a_full_disk_is_an_error_and_changes_nothing(tmp_path):
    sa_key = writer.FileContent(os.urandom(8192), 0o600)  # the file written short today
    with tmpfs(tmp_path / "disk", "512k") as disk:
        out = put(disk / "out", OLD)
        room = os.statvfs(disk)
        pages = len(NEW) + 1  # room for the staged files and half of sa.key, none for the journal
        (disk / "filler").write_bytes(b"\0" * (room.f_bavail * room.f_frsize - pages * room.f_frsize))
        with pytest.raises(UserError) as raised:
            writer.write(out, {**NEW, "pki/sa.key": sa_key}, set())
        assert str(raised.value) == f"cannot write the PKI to {out}: No space left on device; nothing was changed"
        assert settled(out) == "old"
        (disk / "filler").unlink()
        writer.write(out, {**NEW, "pki/sa.key": sa_key}, set())
        assert contents(out) == expected({**NEW, "pki/sa.key": sa_key})


def test_a_read_only_disk_is_one_sentence_and_changes_nothing(tmp_path):
    with tmpfs(tmp_path / "disk", "512k") as disk:
        out = put(disk / "out", OLD)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for target in (out, disk / "new/out"):
            with pytest.raises(UserError) as raised:
                writer.write(target, NEW, set())
            assert str(raised.value) == f"cannot write the PKI to {target}: Read-only file system; nothing was changed"
        assert settled(out) == "old" and not (disk / "new").exists()
        assert writer.write(out, OLD, set()) == []  # with nothing to change, it is no error


def test_short_writes_are_continued(tmp_path, monkeypatch):
    real = os.write
    monkeypatch.setattr(writer.os, "write", lambda fd, data: real(fd, data[:max(1, len(data) // 2)]))
    out = put(tmp_path / "out", OLD)
    assert writer.write(out, NEW, set()) == list(NEW)
    monkeypatch.undo()
    assert settled(out) == "new"


def test_a_write_that_makes_no_progress_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(writer.os, "write", lambda fd, data: 0)
    out = put(tmp_path / "out", OLD)
    for target in (out, tmp_path / "new/out"):
        with pytest.raises(UserError) as raised:
            writer.write(target, NEW, set())
        assert str(raised.value) == f"cannot write the PKI to {target}: a write made no progress; nothing was changed"
    monkeypatch.undo()
    assert settled(out) == "old" and not (tmp_path / "new").exists()


def test_two_writers_never_interleave(tmp_path):
    out = put(tmp_path / "out", OLD)
    slow, fast = save(tmp_path / "slow.json", pairs((*PAIRS, "pki/etcd/ca"))), save(tmp_path / "fast.json", NEW)
    marker = tmp_path / "renaming"
    first = subprocess.Popen(child("write", out, slow, delay=0.2, marker=str(marker)), stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists() and first.poll() is None, "the first writer did not start renaming"
    second = run(child("write", out, fast))  # while the first renames, slowly
    assert first.wait(timeout=60) == 0 and second.returncode == 0, second.stderr
    assert settled(out) == "new"  # the second waited for the first, then replaced all of it
