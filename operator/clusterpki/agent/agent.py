"""The agent's loop: watch one ClusterPKI's Secrets, write its member's files, restart what needs
it, report what runs.

Each round is idempotent: files equal to the Secrets are not rewritten, so a restart of the agent
restarts nothing. A component is reported at a revision only once its files are written and read
back and, when it needs one, its restart succeeded; a failed restart is retried the next round and
holds the component's report back, which holds a rotation's next phase back.

Restarts roll across members: an agent restarts a component only while it holds the ClusterPKI's
restart Lease (:mod:`clusterpki.kube.turns`), only when every other member's instance of it is
healthy, and gives the Lease back only once its own instance has been healthy for a while. A failed restart keeps
the Lease, so the roll stops there, and is reported, so the ClusterPKI's ``RestartsHealthy``
condition says so.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

from cryptography import x509

from clusterpki.agent import consumers, health
from clusterpki.agent.restarters import Restarter, RestartFailed
from clusterpki.errors import UserError
from clusterpki.kube import reports, secrets
from clusterpki.kube.api import Api, ApiError
from clusterpki.kube.turns import POLL, Turns
from clusterpki.kubeadm import layout
from clusterpki.pki import keys

LOGGER = logging.getLogger("clusterpki.agent")
SETTLE = 0.5  # seconds to gather a burst of Secret events (one rotation step writes many) into one round
RETRY = 5.0  # seconds before a failed round is tried again
WATCH_TIMEOUT = 300
HEALTHY_WITHIN = 120.0  # seconds a restarted instance has to answer its health check
# Seconds a restarted instance must stay healthy before the next member may restart: a load balancer
# takes its health-check interval times its "rise" count to send traffic to it again.
HEALTHY_FOR = 10.0


class NotYourTurn(Exception):
    """Another member restarts the component now, or one of its instances is not healthy: wait."""


class Agent:
    def __init__(self, api: Api, namespace: str, pki_name: str, out: Path, member: str, name: str,
                 components: list[str], restarter: Restarter, health_urls: dict[str, str] | None = None,
                 healthy_for: float = HEALTHY_FOR) -> None:
        self.api, self.namespace, self.pki_name = api, namespace, pki_name
        self.out, self.member, self.name = out, member, name
        self.components = [c for c in consumers.BY_COMPONENT if c in components]
        self.restarter = restarter
        self.health_urls = {c: url for c, url in (health_urls or {}).items() if c in self.components}
        self.healthy_for = healthy_for
        self.turns = Turns(api, namespace, pki_name, name)
        self.secrets: dict[str, dict[str, Any]] = {}  # component -> Secret
        self.owed: set[str] = set()  # components whose restart is owed (not made, or failed)
        self.loaded: reports.Loaded = {}
        self.restarts: dict[str, dict[str, str]] = {}  # component -> {state, message}: restarts not done
        self.reported: dict[str, Any] | None = None
        self.resumed = False  # whether the report of a previous run of this agent has been read
        self.changed = asyncio.Event()

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch())
        try:
            while True:
                await self.changed.wait()
                await asyncio.sleep(SETTLE)
                self.changed.clear()
                try:
                    await self.round()
                except NotYourTurn as exc:
                    LOGGER.info(f"{self.namespace}/{self.pki_name}: {exc}; looking again in {POLL:g}s")
                    asyncio.get_running_loop().call_later(POLL, self.changed.set)
                except (ApiError, UserError, RestartFailed) as exc:
                    LOGGER.warning(f"{self.namespace}/{self.pki_name}: {exc}; trying again in {RETRY:g}s")
                    asyncio.get_running_loop().call_later(RETRY, self.changed.set)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await self.turns.give_back()

    async def round(self) -> None:
        """Write the files, restart what needs it, report."""
        stored = {component: {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
                  for component, secret in self.secrets.items()}
        files = layout.files_from_stored(stored, self.member)
        written = await asyncio.to_thread(layout.write, self.out, files, set())
        await asyncio.to_thread(_read_back, self.out, written)
        if written:
            LOGGER.info(f"{self.namespace}/{self.pki_name}: wrote {', '.join(sorted(written))}")
        self.owed |= set(consumers.to_restart(self.components, set(written)))
        sources = layout.sources(self.member)
        if not self.resumed:
            await self._resume(files, sources)
        failed: Exception | None = None
        for component in self.components:
            if component in self.owed and failed is None:
                try:
                    await self._restart_in_turn(component)  # discards it from owed once done
                except (NotYourTurn, RestartFailed) as exc:
                    failed = exc  # the others wait: one component at a time, in order
            if component not in self.owed:
                self.loaded[component] = self._revisions(component, files, sources)
        await self._report()
        if failed is not None:
            raise failed

    def _revisions(self, component: str, files: dict[str, Any], sources: dict[str, str]) -> dict[str, str]:
        """The revision of each Secret whose files ``component`` reads, as they are written now."""
        used = {sources[path] for path in consumers.BY_COMPONENT[component].files if path in files}
        return {s: reports.revision(self.secrets[s].get("data") or {}) for s in sorted(used)}

    async def _resume(self, files: dict[str, Any], sources: dict[str, str]) -> None:
        """After a restart of the agent itself: a component whose last report is behind the files now on
        disk, or whose restart was not done, is still owed one (the files may have been written by the
        previous run, which stopped before it restarted the component)."""
        name = reports.name(self.pki_name, self.name)
        previous = await self.api.get_or_none(f"ConfigMap {self.namespace}/{name}", reports.path(self.namespace, name))
        self.resumed = True
        if previous is None:
            return
        _, loaded = reports.read(previous)
        pending = reports.restarts(previous)
        for component in self.components:
            if component in pending or loaded.get(component, {}) != self._revisions(component, files, sources):
                self.owed.add(component)

    async def _restart_in_turn(self, component: str) -> None:
        """Restart ``component`` once it is this member's turn and the other members' instances are
        healthy; raise NotYourTurn while they are not, RestartFailed (keeping the turn) if it fails."""
        unhealthy = await self._unhealthy_peers(component)
        if unhealthy:  # not even a look at the Lease: a member that is down holds every roll up
            await self._wait(component, f"the {component} of {unhealthy}")
        holder = await self.turns.take()
        if holder is not None:
            await self._wait(component, f"it is the turn of {holder} to restart")
        unhealthy = await self._unhealthy_peers(component)  # again, now that nobody else may restart
        if unhealthy:
            await self.turns.give_back()
            await self._wait(component, f"the {component} of {unhealthy}")
        LOGGER.info(f"{self.namespace}/{self.pki_name}: restarting {component}")
        self.restarts.pop(component, None)
        try:
            await self.restarter.restart(component)
            await self._healthy_again(component)
        except RestartFailed as exc:
            self.restarts[component] = {"state": reports.FAILED, "message": str(exc)}
            raise
        self.restarts.pop(component, None)
        self.owed.discard(component)
        await self.turns.give_back()

    async def _wait(self, component: str, why: str) -> None:
        self.restarts[component] = {"state": reports.WAITING, "message": why}
        await self._report()
        raise NotYourTurn(f"the restart of {component} waits: {why}")

    async def _unhealthy_peers(self, component: str) -> str | None:
        """The first other member whose instance of ``component`` fails its health check, with why."""
        found = await self.api.request("list", f"the consumer reports of {self.namespace}/{self.pki_name}", "GET",
                                       reports.path(self.namespace),
                                       params={"labelSelector": reports.selector(self.pki_name)})
        for report in sorted(found.get("items") or [], key=reports.agent_of):
            url = reports.health(report).get(component)
            if reports.agent_of(report) == self.name or url is None:
                continue
            problem = await health.problem(component, url, self.out)
            if problem:
                return f"{reports.agent_of(report)} is not healthy: {problem}"
        return None

    async def _healthy_again(self, component: str) -> None:
        url = self.health_urls.get(component)
        if url is None:
            return
        clock = asyncio.get_running_loop().time
        deadline, healthy_since = clock() + HEALTHY_WITHIN, None
        if getattr(self.restarter, "detached", False):  # it returns before the restart happens: see it go
            while await health.problem(component, url, self.out) is None:
                if clock() > deadline:
                    raise RestartFailed(f"{component} did not go down within {HEALTHY_WITHIN:g}s of its restart")
                await asyncio.sleep(0.5)
        while healthy_since is None or clock() - healthy_since < self.healthy_for:
            problem = await health.problem(component, url, self.out)
            if problem is None:
                healthy_since = healthy_since or clock()
            else:
                healthy_since = None
                if clock() > deadline:
                    raise RestartFailed(f"{component} is not healthy {HEALTHY_WITHIN:g}s after its restart: {problem}")
            await asyncio.sleep(0.5)

    async def _report(self) -> None:
        state = {"loaded": self.loaded, "health": self.health_urls, "restarts": self.restarts}
        if state == self.reported:
            return
        body = reports.config_map(self.pki_name, self.namespace, self.name, self.loaded, self.health_urls,
                                  self.restarts)
        name = body["metadata"]["name"]
        what = f"ConfigMap {self.namespace}/{name}"
        try:
            await self.api.request("report", what, "PUT", reports.path(self.namespace, name), body)
        except ApiError as exc:
            if exc.status != 404:
                raise
            await self.api.request("report", what, "POST", reports.path(self.namespace), body)
        self.reported = json.loads(json.dumps(state))  # a copy: the next round changes the originals

    async def _watch(self) -> None:
        """List the ClusterPKI's Secrets, then follow them; a broken watch lists again."""
        path = f"/api/v1/namespaces/{self.namespace}/secrets"
        selector = secrets.selector(self.pki_name)
        while True:
            try:
                listed = await self.api.request("list", f"the Secrets of {self.namespace}/{self.pki_name}", "GET",
                                                path, params={"labelSelector": selector})
                self._take(listed.get("items") or [])
                version = listed["metadata"]["resourceVersion"]
                while True:
                    params = {"watch": "1", "labelSelector": selector, "resourceVersion": version,
                              "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_TIMEOUT)}
                    async for event in self.api.stream(f"the Secrets of {self.pki_name}", path, params,
                                                       WATCH_TIMEOUT + 30):
                        if event.get("type") == "ERROR":
                            raise ApiError("watch", "Secrets", event["object"].get("code", 0), "expired")
                        version = event["object"]["metadata"].get("resourceVersion", version)
                        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                            self._apply(event["type"], event["object"])
            except ApiError as exc:
                LOGGER.debug(f"watch ended ({exc}); listing again")
                await asyncio.sleep(1)

    def _take(self, items: list[dict[str, Any]]) -> None:
        owned, _ = secrets.owned(items, self.pki_name)
        fresh = {c: s for c, s in owned.items() if not secrets.is_rotation(c)}
        if fresh != self.secrets:
            self.secrets = fresh
            self.changed.set()

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        items = [s for c, s in self.secrets.items() if s["metadata"]["name"] != obj["metadata"]["name"]]
        self._take(items if kind == "DELETED" else [*items, obj])


def _read_back(out: Path, written: list[str]) -> None:
    """Every written certificate and key parses: what a component will read is whole."""
    for path in written:
        data = (out / path).read_bytes()
        try:
            if path.endswith(".crt"):
                x509.load_pem_x509_certificates(data)
            elif path.endswith(".key"):
                keys.load_private_pem(data)
        except ValueError as exc:
            raise UserError(f"{out / path} does not read back: {exc}") from None
