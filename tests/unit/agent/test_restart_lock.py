"""One restart at a time on a node: the control-plane agent's and the node agent's restarts exclude
each other through a lock file in the node's kubeadm directory, across processes."""

import asyncio
import subprocess
import sys
import time

from clusterpki.agent import restart_lock
from clusterpki.agent.restart_lock import one_restart_at_a_time


async def test_a_second_restart_waits_for_the_first_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(restart_lock, "POLL", 0.01)
    events = []

    async def restart(name: str, hold: float) -> None:
        async with one_restart_at_a_time(tmp_path, name):
            events.append(f"{name} starts")
            await asyncio.sleep(hold)
            events.append(f"{name} ends")

    first = asyncio.create_task(restart("kube-apiserver", 0.2))
    await asyncio.sleep(0.05)
    await restart("kubelet", 0)
    await first
    assert events == ["kube-apiserver starts", "kube-apiserver ends", "kubelet starts", "kubelet ends"]


async def test_the_lock_holds_against_another_process_and_is_released_when_it_dies(tmp_path, monkeypatch):
    """The node agent runs in another process (in the node's own mount namespace): the lock is the
    file's, and a process that dies holding it leaves it free."""
    monkeypatch.setattr(restart_lock, "POLL", 0.01)
    (tmp_path / "pki").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, time
fd = os.open({str(tmp_path / restart_lock.LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(0.5)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    async with one_restart_at_a_time(tmp_path, "kubelet"):
        waited = time.monotonic() - started
    holder.wait()
    assert waited >= 0.3, "it waited for the other process"
