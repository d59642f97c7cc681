"""How the agent restarts a component that does not reload a changed file. Each restarter returns
once the restart is made, and raises :class:`RestartFailed` when it could not be."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from clusterpki.kube.reports import RestartReason
from clusterpki.pki import documents, times
from clusterpki.pki.spec import API_GROUP

RESTARTED_AT = f"{API_GROUP}/restarted-at"
COMMAND_TIMEOUT = 300  # seconds a restart command may take, health check included


class RestartFailed(Exception):
    def __init__(self, message: str, reason: RestartReason = RestartReason.COMMAND_FAILED) -> None:
        super().__init__(message)
        self.reason = reason


class Restarter(Protocol):
    async def restart(self, component: str) -> None: ...


class StaticPods:
    """kubeadm's static pods: a new ``restarted-at`` annotation in ``MANIFESTS/<component>.yaml``
    (written atomically) makes the kubelet recreate the pod. ``detached``: it returns before the kubelet
    has acted, so the agent waits to see the instance go down before it waits for it to be healthy."""

    detached = True

    def __init__(self, manifests: Path) -> None:
        self.manifests = manifests

    async def restart(self, component: str) -> None:
        path = self.manifests / f"{component}.yaml"
        try:
            pod = documents.load(path.read_text())
            meta = pod.setdefault("metadata", {})
            meta["annotations"] = {**(meta.get("annotations") or {}), RESTARTED_AT: times.format_micro(times.now())}
            staged = path.with_name(f".{path.name}.clusterpki")
            staged.write_text(documents.dump(pod))
            os.chmod(staged, path.stat().st_mode & 0o777)
            os.replace(staged, path)
        except (OSError, documents.Error, AttributeError, TypeError) as exc:
            raise RestartFailed(f"cannot annotate the static pod manifest {path}: {exc}") from None


class Systemd:
    """``systemctl restart UNIT``; the unit of each component is named ``UNITS[component]`` or the
    component itself (``etcd``, ``kube-apiserver``, ...)."""

    def __init__(self, units: Mapping[str, str]) -> None:
        self.units = dict(units)

    async def restart(self, component: str) -> None:
        await _run(["systemctl", "restart", self.units.get(component, component)], {}, component)


class Command:
    """A command of the user's, run with ``sh -c`` and ``CLUSTERPKI_COMPONENT`` set; exit 0 means the
    component runs again (the command waits for its health itself)."""

    def __init__(self, command: str) -> None:
        self.command = command

    async def restart(self, component: str) -> None:
        await _run(["sh", "-c", self.command], {"CLUSTERPKI_COMPONENT": component}, component)


async def _run(argv: list[str], env: Mapping[str, str], component: str) -> None:
    try:
        process = await asyncio.create_subprocess_exec(*argv, env={**os.environ, **env},
                                                       stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        async with asyncio.timeout(COMMAND_TIMEOUT):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        raise RestartFailed(f"restarting {component} took longer than {COMMAND_TIMEOUT}s") from None
    except OSError as exc:
        raise RestartFailed(f"cannot restart {component}: {exc}") from None
    if process.returncode != 0:
        tail = output.decode(errors="replace").strip().splitlines()[-3:]
        raise RestartFailed(f"restarting {component} exited {process.returncode}: {' | '.join(tail)}")
