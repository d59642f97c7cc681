"""The operator under test: in a thread of the test process, or as a ``clusterpki run`` process."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from pathlib import Path

import kopf


STOP_WITHIN = 45  # seconds; on two busy cores a stop in the middle of a reconcile has taken over 20


class Operator:
    """The real operator (Kopf with clusterpki's handlers) in its own thread and event loop, with the
    credentials of ``KUBECONFIG`` (in e2e tests: the operator's ServiceAccount token).

    Kopf cancels every task that appeared in its loop while it ran, so it cannot share the test's
    loop; its own thread is also how Kopf documents embedding. Without ``namespaces`` it serves all."""

    def __init__(self, csr_policy: tuple[str, str] | None = None, namespaces: tuple[str, ...] = ()) -> None:
        self.csr_policy = csr_policy
        self.namespaces = namespaces
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        from clusterpki.runtime import build_registry

        registry = build_registry(csr_policy=self.csr_policy is not None)
        ready = threading.Event()
        self.stop_flag = threading.Event()
        self.error = None

        async def operator() -> None:
            self.loop = asyncio.get_running_loop()
            await kopf.operator(registry=registry, clusterwide=not self.namespaces,
                                namespaces=list(self.namespaces), standalone=True,
                                stop_flag=self.stop_flag, ready_flag=ready,
                                memo=kopf.Memo(csr_policy=self.csr_policy, namespaces=list(self.namespaces)))

        def main() -> None:
            try:
                asyncio.run(operator())
            except BaseException as exc:  # reported by stop()
                self.error = exc

        self.thread = threading.Thread(target=main, name="operator", daemon=True)
        self.thread.start()
        if not await asyncio.to_thread(ready.wait, 10):
            await self.stop()
            raise AssertionError(f"the operator did not start: {self.error!r}")

    async def stop(self) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, STOP_WITHIN)
        thread, self.thread = self.thread, None
        assert not thread.is_alive(), f"the operator did not stop within {STOP_WITHIN} s:\n{self._stacks(thread)}"
        assert self.error is None, f"the operator failed: {self.error!r}"

    def _stacks(self, thread: threading.Thread) -> str:
        """Where the operator's thread and its tasks are (read from another thread: a diagnosis only)."""
        out = io.StringIO()
        frame = sys._current_frames().get(thread.ident or 0)
        if frame is not None:
            out.write("thread:\n" + "".join(traceback.format_stack(frame)))
        for task in list(asyncio.all_tasks(self.loop)) if self.loop else []:
            task.print_stack(file=out)
        return out.getvalue()

    async def restart(self) -> None:
        await self.stop()
        await self.start()


async def cli(*args: str, kubeconfig: Path) -> tuple[int, str, str]:
    """Run the ``clusterpki`` command as a user does, with ``kubeconfig``: its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clusterpki", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)})
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


def free_port() -> int:
    """A free loopback port to listen on, outside the ephemeral range (see free_port_block)."""
    from tests.controlplane import free_port_block

    return free_port_block(1)


class OperatorProcess:
    """``clusterpki run`` as a process of its own, as the Deployment runs it."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str) -> None:
        self.kubeconfig, self.log_path, self.args = kubeconfig, log, args
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        port = free_port()
        with open(self.log_path, "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "clusterpki", "run", "--standalone",
                 "--liveness", f"http://127.0.0.1:{port}/healthz", *self.args],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})
        deadline = time.monotonic() + 30
        while not self._healthy(port):
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator's liveness endpoint did not answer: {self.log()[-3000:]}")
            time.sleep(0.1)

    def _healthy(self, port: int) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the operator exited: {self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it as the kubelet stops a pod: SIGTERM (SIGINT may be ignored in a pytest-xdist worker's child)."""
        if self.process is None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""
