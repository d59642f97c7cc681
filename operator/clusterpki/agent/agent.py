"""The agent's loop: follow one ClusterPKI's record, write its member's files from the Secrets the
record vouches for, restart what needs it in turn, and report what runs.

The agent follows the ClusterPKI (its status holds the record, which only the operator writes), not
the Secrets: a Secret someone else changed never even starts a round. Each round fetches the member's
Secrets by name, verifies them against the record (:mod:`clusterpki.agent.verify`) and writes the
files from the verified material alone, all or nothing; material that fails is reported and nothing is
written. Each round is idempotent: files equal to the record are not rewritten, so a restart of the
agent restarts nothing. A component is reported at a revision only once its files are written and
read back and, when it needs one, its restart succeeded.

Restarts roll across members: an agent restarts a component only while it holds the ClusterPKI's
restart Lease (:mod:`clusterpki.kube.turns`), only when every other member's instance of it is healthy
(at a URL on that member's own address), and gives the Lease back only once its own instance has been
healthy for a while. A failed restart keeps the Lease, so the roll stops there, and is reported.
The report is a Lease of the member's own (:mod:`clusterpki.kube.reports`), renewed every resync.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from clusterpki.agent import consumers, health
from clusterpki.agent.restart_lock import one_restart_at_a_time
from clusterpki.agent.restarters import Restarter, RestartFailed
from clusterpki.agent.startup import Start, health_url_problem
from clusterpki.agent.verify import Verification, sources, verify
from clusterpki.errors import UserError
from clusterpki.kube import reports, resource, secrets
from clusterpki.kube.api import Api, ApiError
from clusterpki.kube.reports import Report, Restart, RestartReason, RestartState
from clusterpki.kube.secret_client import SecretClient
from clusterpki.kube.secrets import StoredSecret
from clusterpki.kube.turns import POLL, Turns
from clusterpki.kubeadm import layout, writer
from clusterpki.pki import keys, placement, spec, times
from clusterpki.pki.record import Claim, Record

LOGGER = logging.getLogger("clusterpki.agent")
SETTLE = 0.5  # seconds to gather a burst of changes into one round
RETRY = 5.0  # seconds before a failed round is tried again
WATCH_TIMEOUT = 300
HEALTHY_WITHIN = 120.0  # seconds a restarted instance has to answer its health check
# Seconds a restarted instance must stay healthy before the next member may restart: a load balancer
# takes its health-check interval times its "rise" count to send traffic to it again.
HEALTHY_FOR = 10.0
RESYNC = 30.0  # seconds between rounds with nothing new: files checked again, the report renewed
# Seconds between two restarts of one component: whoever can change a Secret makes the operator re-issue
# it, and so a restart; this bounds how often that can be.
RESTART_INTERVAL = 30.0
STALE_AFTER = 3  # resyncs without a renewal after which the operator stops counting the report


class NotYourTurn(Exception):
    """Another member restarts now, or one of its instances is not healthy: wait."""


class Agent:
    def __init__(self, api: Api, namespace: str, pki_name: str, out: Path, member: str, components: list[str],
                 restarter: Restarter, start: Start, health_urls: Mapping[str, str] | None = None,
                 healthy_for: float = HEALTHY_FOR, resync: float = RESYNC,
                 restart_interval: float = RESTART_INTERVAL) -> None:
        self.api, self.namespace, self.pki_name, self.out, self.member = api, namespace, pki_name, out, member
        self.body, self.spec = start.body, start.spec
        self.components = [c for c in consumers.BY_COMPONENT if c in components]
        self.restarter, self.healthy_for, self.resync = restarter, healthy_for, resync
        self.restart_interval = restart_interval
        self.restarted_at: dict[str, float] = {}  # component -> when its last restart ended (monotonic)
        self.health_urls = {c: url for c, url in (health_urls or {}).items() if c in self.components}
        self.turns = Turns(api, namespace, pki_name, member)
        self.secrets = SecretClient(api)
        self.owed: set[str] = set()  # components whose restart is owed (not made, or failed)
        self.loaded: dict[str, dict[str, str]] = {}
        self.restarts: dict[str, Restart] = {}  # restarts not done
        self.rejected: dict[str, str] = {}  # Secret component -> why its material was refused
        self.reported: str | None = None  # the last report, as JSON
        self.renewed_at = float("-inf")  # when the report Lease was last renewed (monotonic)
        self.resumed = False  # whether the report of a previous run of this agent has been read
        self.changed = asyncio.Event()
        self.watching: asyncio.Task | None = None  # the watch of the ClusterPKI, while run() runs
        self.changed.set()

    @property
    def what(self) -> str:
        return f"{self.namespace}/{self.pki_name}"

    async def run(self) -> None:
        self.watching = asyncio.create_task(self._watch())
        ticking = asyncio.create_task(self._tick())
        try:
            while True:
                await self.changed.wait()
                await asyncio.sleep(SETTLE)
                self.changed.clear()
                await self._round_or_retry()
        finally:
            for task in (self.watching, ticking):
                task.cancel()
            await asyncio.gather(self.watching, ticking, return_exceptions=True)
            await self.turns.give_back()

    async def _round_or_retry(self) -> None:
        try:
            await self.round()
        except NotYourTurn as exc:
            LOGGER.info(f"{self.what}: {exc}; looking again in {POLL:g}s")
            asyncio.get_running_loop().call_later(POLL, self.changed.set)
        except (ApiError, UserError, RestartFailed) as exc:
            LOGGER.warning(f"{self.what}: {exc}; trying again in {RETRY:g}s")
            asyncio.get_running_loop().call_later(RETRY, self.changed.set)

    async def round(self) -> None:
        """Verify, write the files, restart what needs it, report."""
        verification = await self._verified()
        if verification.rejected and await self._refreshed():
            verification = await self._verified()  # the watch was behind the operator's last commit
        if verification.pki is None:
            await self._not_written(verification)
            return
        current, _ = self._record()
        self.rejected = {}
        recovered = await asyncio.to_thread(writer.recover, self.out)  # what is compared below is whole
        files = await asyncio.to_thread(layout.to_write, self.out,
                                        layout.where_present(self.out, layout.files_for(verification.pki, self.member)))
        written = [*recovered, *await asyncio.to_thread(writer.write, self.out, files, set())]
        await asyncio.to_thread(_read_back, self.out, written)
        if written:
            LOGGER.info(f"{self.what}: wrote {', '.join(sorted(written))}")
        self.owed |= set(consumers.to_restart(self.components, set(written)))
        if not self.resumed:
            await self._resume(current)
        failed = await self._restart_owed(current)
        await self._report()
        if failed is not None:
            raise failed

    async def _verified(self) -> Verification:
        current, claim = self._record()
        disk = await asyncio.to_thread(layout.signing_cas, self.out)
        return verify(await self._fetch(), current, claim, self.spec, self.member, disk)

    async def _refreshed(self) -> bool:
        """The ClusterPKI read afresh (before refusing Secrets that did not verify against the record the
        watch gave, and every resync): whether its record, claim or spec were other than the watch's."""
        body = await self.api.request("get", f"ClusterPKI {self.what}", "GET",
                                      resource.path(self.namespace, self.pki_name))
        return self._take(body)

    def _record(self) -> tuple[Record, Claim | None]:
        found = self.body.get("status") or {}
        return Record.from_status(found.get("record")), Claim.from_status(found.get("claim"))

    async def _fetch(self) -> dict[str, StoredSecret | None]:
        """The member's Secrets, each by name (the agent's Role names them, and no others)."""
        names = [*sources(self.spec, self.member), *placement.old_signers()]
        found = await asyncio.gather(*(self.secrets.get(self.namespace, secrets.secret_name(self.pki_name, c))
                                       for c in names))
        return {c: StoredSecret.from_object(s) if s else None for c, s in zip(names, found, strict=True)}

    async def _not_written(self, verification: Verification) -> None:
        if verification.rejected:
            self.rejected = dict(verification.rejected)
            refused = "; ".join(f"{secrets.secret_name(self.pki_name, c)}: {why}" for c, why in self.rejected.items())
            LOGGER.warning(f"{self.what}: refused, nothing written: {refused}")
        else:
            LOGGER.info(f"{self.what}: nothing to write yet: {verification.waiting}")
        await self._report()

    async def _restart_owed(self, current: Record) -> Exception | None:
        """Restart the owed components in order; the first that cannot go now stops the others."""
        failed: Exception | None = None
        for component in self.components:
            if component in self.owed and failed is None:
                try:
                    await self._restart_in_turn(component)  # discards it from owed once done
                except (NotYourTurn, RestartFailed) as exc:
                    failed = exc
            if component not in self.owed:
                self.loaded[component] = self._revisions(component, current)
        return failed

    def _revisions(self, component: str, current: Record) -> dict[str, str]:
        """The record's revision of each Secret whose files ``component`` reads."""
        read = consumers.BY_COMPONENT[component].files
        used = {p.component for p in placement.placements(self.member) if p.path in read}
        return {s: current.revision([s]) for s in sorted(used)}

    async def _resume(self, current: Record) -> None:
        """After a restart of the agent itself: a component whose last report is behind the record, or
        whose restart was not done, is still owed one (the previous run may have written the files and
        stopped before it restarted the component)."""
        previous = Report.from_lease(await self._lease())
        self.resumed = True
        if previous.renewed is None:  # never reported: nothing was left half done
            return
        for component in self.components:
            if component in previous.restarts or previous.loaded.get(component) != self._revisions(component, current):
                self.owed.add(component)

    async def _restart_in_turn(self, component: str) -> None:
        """Restart ``component`` once it is this member's turn and the other members' instances are
        healthy; raise NotYourTurn while they are not, RestartFailed (keeping the turn) if it fails.
        An instance that is down already is started at once (:meth:`_start_down`)."""
        url = self.health_urls.get(component)
        if url is not None and await health.down(url):
            await self._not_too_soon(component)
            await self._start_down(component)
            return
        await self._not_too_soon(component)
        await self._peers_healthy(component)  # not even a look at the Lease while a member is down
        holder = await self.turns.take()
        if holder is not None:
            await self._wait(component, RestartReason.TURN_TAKEN, f"it is the turn of {holder} to restart")
        try:
            await self._peers_healthy(component)  # again, now that nobody else may restart
        except NotYourTurn:
            await self.turns.give_back()
            raise
        await self._restart_and_wait(component, f"restarting {component}")
        await self.turns.give_back()

    async def _start_down(self, component: str) -> None:
        """Start an instance that does not run: it takes nothing out of service, so neither the turn nor
        the other members' health gates it. So a new etcd cluster comes up from its agents alone: no
        member is healthy before a quorum of them runs."""
        await self._restart_and_wait(component, f"starting {component}, which does not run", went_down=True)

    async def _restart_and_wait(self, component: str, saying: str, went_down: bool = False) -> None:
        """Restart ``component`` and wait for it to be healthy, holding the node's restart lock (the node
        agent restarts the kubelet under it); a failure is recorded and raised."""
        self.restarts.pop(component, None)
        try:
            async with one_restart_at_a_time(self.out, self.what):
                LOGGER.info(f"{self.what}: {saying}")
                await self.restarter.restart(component)
                await self._healthy_again(component, went_down=went_down)
        except RestartFailed as exc:
            self.restarts[component] = Restart(RestartState.FAILED, exc.reason, str(exc))
            raise
        self.owed.discard(component)
        self.restarted_at[component] = asyncio.get_running_loop().time()

    async def _not_too_soon(self, component: str) -> None:
        last = self.restarted_at.get(component)
        since = asyncio.get_running_loop().time() - last if last is not None else None
        if since is not None and since < self.restart_interval:
            await self._wait(component, RestartReason.TOO_SOON, f"{component} was restarted {since:.0f}s ago; the "
                             f"next restart comes {self.restart_interval:g}s after the last")

    async def _wait(self, component: str, reason: RestartReason, why: str) -> None:
        self.restarts[component] = Restart(RestartState.WAITING, reason, why)
        await self._report()
        raise NotYourTurn(f"the restart of {component} waits: {why}")

    async def _peers_healthy(self, component: str) -> None:
        """Raise NotYourTurn when another member's instance of ``component`` is not healthy, or gives a
        health URL that is not on its own address."""
        for member in sorted(self.spec.etcd_members, key=lambda m: m.name):
            if member.name == self.member:
                continue
            lease = await self._lease(member.name)
            url = Report.from_lease(lease).health.get(component) if lease else None
            if url is None:
                continue
            problem = health_url_problem(url, member) or await health.problem(component, url, self.out)
            if problem:
                await self._wait(component, RestartReason.PEER_UNHEALTHY,
                                 f"the {component} of {member.name} is not healthy: {problem}")

    async def _healthy_again(self, component: str, went_down: bool = False) -> None:
        url = self.health_urls.get(component)
        if url is None:
            return
        clock = asyncio.get_running_loop().time
        deadline = clock() + HEALTHY_WITHIN
        if getattr(self.restarter, "detached", False) and not went_down:  # it returns before the restart: see it go
            while await health.problem(component, url, self.out) is None:
                if clock() > deadline:
                    raise RestartFailed(f"{component} did not go down within {HEALTHY_WITHIN:g}s of its restart",
                                        RestartReason.UNHEALTHY)
                await asyncio.sleep(0.5)
        await health.stays_healthy(component, url, self.out, self.healthy_for, deadline, HEALTHY_WITHIN)
        LOGGER.info(f"{self.what}: {component} is healthy again, {clock() - deadline + HEALTHY_WITHIN:.1f}s after "
                    f"its restart (healthy for {self.healthy_for:g}s)")

    async def _report(self) -> None:
        """Renew the report Lease when what it says changed, or when a resync has passed (the heartbeat)."""
        report = Report(self.member, times.now(), timedelta(seconds=STALE_AFTER * self.resync), self.loaded,
                        self.health_urls, dict(self.restarts), dict(self.rejected))
        said = json.dumps(report.annotations(), sort_keys=True)
        clock = asyncio.get_running_loop().time
        if said == self.reported and clock() - self.renewed_at < self.resync * 0.9:
            return
        for attempt in range(2):
            lease = await self._lease()
            try:
                await self.api.request("report", self._lease_what(), "PUT", reports.lease_path(
                    self.namespace, reports.lease_name(self.pki_name, self.member)),
                    reports.renewed(lease, report, report.renewed))
                break
            except ApiError as exc:
                if exc.status != 409 or attempt:
                    raise
        self.reported, self.renewed_at = said, clock()

    async def _lease(self, member: str | None = None) -> dict[str, Any]:
        """A member's report Lease (this agent's own by default); an empty one when a peer's is missing."""
        name = reports.lease_name(self.pki_name, member or self.member)
        found = await self.api.get_or_none(f"Lease {self.namespace}/{name}", reports.lease_path(self.namespace, name))
        if found is None and member is None:
            raise UserError(f"this agent's report {self._lease_what()} is gone; apply its manifests again")
        return found or {}

    def _lease_what(self) -> str:
        return f"Lease {self.namespace}/{reports.lease_name(self.pki_name, self.member)}"

    async def _tick(self) -> None:
        """Every resync, a round; the ClusterPKI read afresh first, as a watch can go quiet without breaking
        (through a load balancer, across an apiserver's restart): a phase is never missed for longer."""
        while True:
            await asyncio.sleep(self.resync)
            try:
                if await self._refreshed():
                    LOGGER.info(f"{self.what}: the watch was behind a fresh read of the ClusterPKI: watching again")
                    self._watch_again()
            except ApiError as exc:
                LOGGER.debug(f"reading the ClusterPKI afresh failed ({exc}); the watch's version stays")
            self.changed.set()

    def _watch_again(self) -> None:
        """A watch that stays open and brings nothing (an apiserver whose cache stopped following etcd,
        behind a load balancer) is replaced: the new one may reach another apiserver."""
        if self.watching is not None:
            self.watching.cancel()
            self.watching = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        """Follow the ClusterPKI (its spec, and its status with the record); a broken watch lists again."""
        params = {"fieldSelector": f"metadata.name={self.pki_name}"}
        path = resource.path(self.namespace)
        while True:
            try:
                listed = await self.api.request("list", f"ClusterPKI {self.what}", "GET", path, params=params)
                for item in listed.get("items") or []:
                    self._take(item)
                version = listed["metadata"]["resourceVersion"]
                watch = {**params, "watch": "1", "resourceVersion": version, "timeoutSeconds": str(WATCH_TIMEOUT)}
                async for event in self.api.stream(f"ClusterPKI {self.what}", path, watch, WATCH_TIMEOUT + 30):
                    if event.get("type") == "ERROR":
                        raise ApiError("watch", f"ClusterPKI {self.what}", event["object"].get("code", 0), "expired")
                    if event.get("type") in ("ADDED", "MODIFIED"):
                        self._take(event["object"])
                    elif event.get("type") == "DELETED":
                        LOGGER.warning(f"{self.what}: the ClusterPKI was deleted; the files stay as they are")
            except ApiError as exc:
                LOGGER.debug(f"watch ended ({exc}); listing again")
                await asyncio.sleep(1)

    def _take(self, body: dict[str, Any]) -> bool:
        """A new version of the ClusterPKI: a round when its record, claim or spec changed (returned)."""
        before, after = self.body.get("status") or {}, body.get("status") or {}
        same = all(before.get(k) == after.get(k) for k in ("record", "claim")) and \
            self.body.get("spec") == body.get("spec")
        self.body = body
        if same:
            return False
        try:
            self.spec = spec.from_resource(body)
        except spec.SpecError as exc:
            LOGGER.warning(f"{self.what}: the spec is invalid, the files stay as they are: {exc}")
            return False
        self.changed.set()
        return True


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
