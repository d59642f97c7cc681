"""One restart at a time on a node: the control-plane agent's restarts of static pods and the node
agent's restarts of the kubelet take an exclusive lock on one file of the node's kubeadm directory.

Both move in the same step of a ``ca`` rotation (Rotating re-issues the apiserver's kubelet client and
the kubelet's client certificate). A kubelet restarted while a static pod's manifest changes handled
that pod badly in the kubeadm proof: the manifest went unseen for 90 s, the old container was killed
with a 1 s grace period, and kube-apiserver stayed unready for two minutes. The lock is held through
the restart and the health check that follows it, so the other agent waits for a healthy node.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

LOCK_FILE = "pki/.clusterpki-restart.lock"  # below the kubeadm directory both agents of a node write
POLL = 0.5  # seconds between attempts while the other agent holds the lock
LOGGER = logging.getLogger("clusterpki.agent")


@asynccontextmanager
async def one_restart_at_a_time(directory: Path, who: str) -> AsyncIterator[None]:
    """Hold the node's restart lock (``directory`` is the kubeadm directory) for the block."""
    path = directory / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    LOGGER.info(f"{who}: another restart on this node is under way; waiting for it to end")
                    said = True
                await asyncio.sleep(POLL)
        yield
    finally:
        os.close(fd)  # closing releases the lock
