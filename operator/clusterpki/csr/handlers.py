"""The kubelet CSR approver: a watch of Nodes (an index of their names and addresses), a watch of
CSRs, and one decision (one API write) per CSR.

Registered only with ``clusterpki run --csr-policy NS/NAME``: that ClusterPKI's ``spec.kubelet``
and ``validity.certificate`` govern the decisions, and its ``ca`` signs when ``signCSRs`` is on.
Nodes and CSRs are followed by watches of the approver's own (:class:`clusterpki.kube.informer.Watch`),
not Kopf's: a CSR is two watch events and one write, and Kopf's handling of an event cost twice the
decision itself. Nothing is ever written onto a CSR but its decision (or its certificate). The
state here is the approver's own, shared with nothing: a watch of the policy ClusterPKI alone keeps
its latest version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, NamedTuple

import kopf

from clusterpki.csr import rules as csr
from clusterpki.csr.api import CSRS, CsrApi
from clusterpki.csr.metrics import CSR_DECISIONS, CSR_SIGNING_REFUSED
from clusterpki.csr.names import Bounds, NodeIndex, bounds_of, node_of
from clusterpki.kube import resource, secrets
from clusterpki.kube.api import ApiError, load_configuration
from clusterpki.kube.events import EventRecorder
from clusterpki.kube.informer import Watch
from clusterpki.kube.scheduling import Scheduler
from clusterpki.pki import spec, times
from clusterpki.pki.certificates import KeyPair
from clusterpki.pki.record import Record

SIGNING_REFUSED = "SigningRefused"
NODE_RECHECK = 2.0  # seconds between looks at a serving CSR whose Node is not seen yet
UNSYNCED_RECHECK = 0.5  # seconds before a CSR seen before the first list of Nodes is looked at again
RETRY_DELAY = 10  # seconds before a failed recheck is tried again
API_RETRY = 2.0  # seconds before a decision or signature the API did not take is written again
CSR_RELIST = 60.0  # seconds between fresh lists of the CSRs (see relist)
LOGGER = logging.getLogger("clusterpki.csr")
Key = tuple[str, str]  # (namespace, name) of a ClusterPKI


class Policy(NamedTuple):
    """The policy ClusterPKI, read once per version of it."""

    spec: spec.Spec
    bounds: Bounds


def _metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """All the watches' indexes keep of a Node or a CSR: the NodeIndex holds what a Node says."""
    return {"metadata": obj["metadata"]}


class CsrState:
    """The policy ClusterPKI's latest version (and its parsed spec), the watches of Nodes and CSRs, a
    Node index, the CSRs waiting for their Node or for the policy, and a scheduler to look at those
    again."""

    def __init__(self, api: CsrApi, policy: Key) -> None:
        self.api = api
        self.events = EventRecorder(api)
        self.policy = policy
        self.policy_body: dict[str, Any] | None = None
        self.policy_cache: tuple[str | None, Policy | None] | None = None  # (resourceVersion, read)
        self.ca_cache: tuple[str, KeyPair] | None = None  # (the record's data digest of the CA Secret, its pair)
        self.nodes = NodeIndex()
        self.waiting: dict[str, dict[str, Any]] = {}
        self.first_seen: dict[str, Any] = {}  # CSR name -> when this operator first saw it
        self.deciding: set[str] = set()
        self.signing: set[str] = set()  # CSRs (by uid) signed, or being signed, by this operator: never twice
        self.scheduler = Scheduler(self.recheck, retry_after=RETRY_DELAY)
        self.node_watch = Watch(api, [], "", lambda kind, obj, _: track_node(self, kind, obj), plural="nodes",
                                metadata_only=False, report_first=True, keep=_metadata)
        self.csr_watch = Watch(api, [], "", lambda kind, obj, _: track_csr(self, kind, obj),
                               plural="certificatesigningrequests", group=CSRS.rsplit("/", 1)[0],
                               metadata_only=False, report_first=True, keep=_metadata)
        self.policy_watch = Watch(api, [policy[0]], "", lambda kind, obj, _: track_policy(self, kind, obj),
                                  plural=resource.PLURAL, group=resource.GROUP_PATH, metadata_only=False,
                                  report_first=True, keep=_metadata, fields=f"metadata.name={policy[1]}")
        self.tasks: set[asyncio.Task] = set()  # decisions and signatures in flight
        self.running: asyncio.Future | None = None  # the scheduler and the watches

    @property
    def nodes_listed(self) -> bool:
        """Whether the first list of Nodes is in the index: before it, no Node is known not to exist."""
        return self.node_watch.is_synced("")

    async def recheck(self, name: str) -> None:
        body = self.waiting.get(name)
        if body is None:
            return
        await (sign(self, body) if csr.needs_signature(body) else decide(self, body))

    def wait(self, body: dict[str, Any], delay: float = NODE_RECHECK) -> None:
        """Look at this CSR again after ``delay``: its Node is not seen yet."""
        name = body["metadata"]["name"]
        self.waiting[name] = body
        self.scheduler.after(name, delay)

    def done(self, name: str) -> None:
        self.waiting.pop(name, None)
        self.first_seen.pop(name, None)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.on.startup(registry=registry)(start)
    kopf.on.cleanup(registry=registry)(stop)


async def start(memo: kopf.Memo, **_: Any) -> None:
    state = memo.csr = CsrState(CsrApi(load_configuration(), reload=load_configuration), memo.csr_policy)
    state.running = asyncio.gather(state.scheduler.run(), state.policy_watch.run(), state.node_watch.run(),
                                   state.csr_watch.run(), relist(state))


async def relist(state: CsrState, every: float | None = None) -> None:
    """List the CSRs again every ``CSR_RELIST`` seconds: a watch that stays open and brings nothing (an
    apiserver behind a load balancer whose cache stopped following etcd) must not leave a node agent's CSR
    unseen for longer; its node agent waits five minutes."""
    while True:
        await asyncio.sleep(every or CSR_RELIST)
        state.csr_watch.restart("", why="")


async def stop(memo: kopf.Memo, **_: Any) -> None:
    state: CsrState = memo.csr
    assert state.running is not None
    state.running.cancel()
    for task in list(state.tasks):
        task.cancel()
    await asyncio.gather(state.running, *state.tasks, return_exceptions=True)
    await state.api.close()


def track_policy(state: CsrState, kind: str, obj: dict[str, Any]) -> None:
    """Keep the policy ClusterPKI's latest version; once it is known, look again at every CSR that
    waited for it."""
    if (obj["metadata"]["namespace"], obj["metadata"]["name"]) != state.policy:
        return
    if kind == "DELETED":
        state.policy_body = None
        return
    arrived = state.policy_body is None
    state.policy_body = obj
    if arrived:
        for name in state.waiting:
            state.scheduler.after(name, 0)


def track_node(state: CsrState, kind: str, obj: dict[str, Any]) -> None:
    name = obj["metadata"]["name"]
    if kind == "DELETED":
        state.nodes.remove(name)
        return
    state.nodes.put(node_of(obj))
    for pending, body in state.waiting.items():  # its serving CSRs need not wait any longer
        if body["spec"].get("username") == f"{csr.NODE_PREFIX}{name}":
            state.scheduler.after(pending, 0)


def track_csr(state: CsrState, kind: str, body: dict[str, Any]) -> None:
    name = body["metadata"]["name"]
    if kind == "DELETED" or not (body.get("spec") or {}).get("signerName") in csr.SIGNERS:
        state.done(name)
        state.signing.discard(_uid(body))
    elif csr.concerns(body):
        state.spawn(decide(state, body))
    elif csr.needs_signature(body):
        state.spawn(sign(state, body))
    else:
        state.done(name)


async def decide(state: CsrState, body: dict[str, Any]) -> None:
    name = body["metadata"]["name"]
    now = times.now()
    state.first_seen.setdefault(name, now)
    policy = _policy(state)
    if policy is None:  # looked at again when the policy ClusterPKI arrives
        state.waiting[name] = body
        return
    if not state.nodes_listed:  # a bootstrap token's CSR for a Node not listed yet must not pass
        state.wait(body, UNSYNCED_RECHECK)
        return
    if name in state.deciding:
        return
    decision = csr.decide(body, state.nodes, policy.spec.kubelet, policy.bounds)
    if decision is None:
        return
    if decision.verdict == csr.PENDING:
        decision = csr.node_not_found(body, now, state.first_seen[name])
        if decision is None:
            state.wait(body)
            return
    state.done(name)
    state.deciding.add(name)
    try:
        decided = await state.api.decide(csr.with_decision(body, decision, now))
    except ApiError as exc:  # 409: the CSR changed meanwhile, and its next event brings it back
        LOGGER.warning(f"CSR {name}: could not record {decision.verdict} ({decision.reason}): {exc}")
        _again_unless_settled(state, body, exc)
        return
    finally:
        state.deciding.discard(name)
    signer = body["spec"]["signerName"]
    CSR_DECISIONS.labels(signer=signer, decision=decision.verdict.value, reason=decision.reason.value).inc()
    LOGGER.info(f"CSR {name} ({signer}, {body['spec'].get('username')}): {decision.verdict.value}, "
                f"{decision.reason.value}: {decision.message}")
    if isinstance(decided, dict) and csr.needs_signature(decided):  # not left to the watch, which may be quiet
        await sign(state, decided)


async def sign(state: CsrState, body: dict[str, Any]) -> None:
    """Sign an approved CSR with the policy's CA, if the policy signs and the CSR passes every rule now,
    whoever approved it; one that does not is marked Failed, told in a Warning Event, and counted."""
    name, uid = body["metadata"]["name"], _uid(body)
    if uid in state.signing:  # the approval's answer and the watch both bring an approved CSR
        return
    now = times.now()
    state.first_seen.setdefault(name, now)
    policy = _policy(state)
    if policy is None:  # looked at again when the policy ClusterPKI arrives
        state.waiting[name] = body
        return
    if not policy.spec.kubelet.sign_csrs and body["spec"]["signerName"] not in csr.OWN_SIGNERS:
        state.done(name)
        return
    if not state.nodes_listed:
        state.wait(body, UNSYNCED_RECHECK)
        return
    refused = csr.refusal(body, state.nodes, policy.bounds)
    if refused is not None and refused.verdict is csr.PENDING:
        refused = csr.node_not_found(body, now, state.first_seen[name])
        if refused is None:  # its Node is not seen yet: looked at again
            state.wait(body)
            return
    state.done(name)
    if refused is not None:
        await _refuse(state, body, refused)
        return
    state.signing.add(uid)
    signed = False
    try:
        ca = await _recorded_ca(state)
        if ca is None:  # not issued yet, or tampered with: looked at again
            state.wait(body, RETRY_DELAY)
            return
        certificate = csr.sign(body, ca, policy.spec.cert_validity, times.now())
        await state.api.set_certificate({**body, "status": {**(body.get("status") or {}), "certificate": certificate}})
        signed = True
    except (ApiError, ValueError) as exc:
        LOGGER.warning(f"CSR {name}: could not sign it: {exc}")
        if isinstance(exc, ApiError):
            _again_unless_settled(state, body, exc)
        return
    finally:
        if not signed:
            state.signing.discard(uid)
    LOGGER.info(f"CSR {name}: signed with the CA of ClusterPKI {'/'.join(state.policy)}")


def _uid(body: dict[str, Any]) -> str:
    """A CSR's identity across its lives: a kubelet may create one again under the same name."""
    meta = body["metadata"]
    return meta.get("uid") or meta["name"]


async def _recorded_ca(state: CsrState) -> KeyPair | None:
    """The policy's CA, if its Secret holds what the record says was issued. Read once per recorded
    version: a pair read while its data was the record's is the recorded one for as long as the record
    says so, whatever is written to the Secret since (so a burst of CSRs costs one GET, not one each)."""
    namespace, pki_name = state.policy
    issued = Record.from_status(((state.policy_body or {}).get("status") or {}).get("record"))
    entry = issued.secrets.get("ca")
    if entry is not None and state.ca_cache is not None and state.ca_cache[0] == entry.data:
        return state.ca_cache[1]
    found = await state.api.secret(namespace, secrets.secret_name(pki_name, "ca"))
    if found is None:
        LOGGER.warning(f"CSRs are not signed: the CA Secret of ClusterPKI {namespace}/{pki_name} does not exist yet")
        return None
    stored = secrets.StoredSecret.from_object(found)
    if not issued.holds("ca", stored.digest):
        LOGGER.warning(f"CSRs are not signed: Secret {stored.name} does not hold the CA on record")
        return None
    state.ca_cache = (stored.digest, secrets.read_pair(stored))
    return state.ca_cache[1]


def _again_unless_settled(state: CsrState, body: dict[str, Any], exc: ApiError) -> None:
    """A write the API did not take for a passing reason is tried again (unreachable through an apiserver's
    restart, a certificate not trusted yet, 429, a 5xx: a node agent waits for its CSR). Not one the CSR's
    next event brings back (409: it changed meanwhile), nor a refusal that stays (404 gone, 403, 422)."""
    if exc.status == 0 or exc.status == 429 or exc.status >= 500:
        state.wait(body, API_RETRY)


async def _refuse(state: CsrState, body: dict[str, Any], refused: csr.Decision) -> None:
    name, signer = body["metadata"]["name"], body["spec"]["signerName"]
    message = f"CSR {name} ({signer}, requested by {body['spec'].get('username')}) is not signed: " \
              f"{refused.reason.value}: {refused.message}"
    CSR_SIGNING_REFUSED.labels(signer=signer, reason=refused.reason.value).inc()
    LOGGER.warning(message)
    try:
        await state.api.set_certificate(csr.with_condition(body, "Failed", SIGNING_REFUSED, message, times.now()))
        if state.policy_body is not None:
            await state.events.post(state.policy_body, "Warning", SIGNING_REFUSED, message)
    except ApiError as exc:
        LOGGER.warning(f"CSR {name}: could not record that it is not signed: {exc}")


def _policy(state: CsrState) -> Policy | None:
    """The policy's spec and bounds, read once per version of the policy ClusterPKI, not once per CSR."""
    body = state.policy_body
    if body is None:
        LOGGER.warning(f"The CSR policy ClusterPKI {'/'.join(state.policy)} is not known (yet): "
                       "CSRs wait")
        return None
    version = body["metadata"].get("resourceVersion")
    cached = state.policy_cache
    if cached is not None and cached[0] == version:
        return cached[1]
    try:
        parsed = spec.from_resource(body)
        read: Policy | None = Policy(parsed, bounds_of(parsed))
    except spec.SpecError as exc:
        LOGGER.warning(f"The CSR policy ClusterPKI is invalid, CSRs wait: {exc}")
        read = None
    state.policy_cache = (version, read)
    return read
