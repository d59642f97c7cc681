"""A rotation's phases through the controller's loop on an in-memory API and a fixed clock: every phase
with the bundle invariant, a lost or forged spare, a move cut short, a phase waiting for consumers or
forced past them, a report that goes stale or comes from no member, the service-account key's token
window, and the automatic start in a CA's renewal window. Plus the typed rotation state's own rules."""

from __future__ import annotations

from datetime import timedelta

import pytest
from clusterpki.controller import requests, rotation
from clusterpki.controller.rotation import Phase, Push, Rotation, Trigger
from clusterpki.kube.reports import Report, lease_name
from clusterpki.pki import keys, nodes, record, spec
from cryptography import x509

from tests.unit.controller.world import T0, World, clusterpki

GRACE = timedelta(seconds=30)
CA_LEAVES = ("apiserver", "apiserver-kubelet-client", "admin", "kube-scheduler", "kube-controller-manager",
             "kube-proxy")


def rotating_world(**spec_fields: object) -> World:
    return World(clusterpki(annotations={spec.GRACE_ANNOTATION: "30s"}, validity={"ca": "8760h"}, **spec_fields))


def bundle(world: World, component: str) -> list[int]:
    return [c.serial_number for c in x509.load_pem_x509_certificates(world.data(component, "ca.crt"))]


def serial(world: World, component: str) -> int:
    return x509.load_pem_x509_certificate(world.data(component, "tls.crt")).serial_number


def phase(world: World) -> str:
    return world.status()["caRotation"]["phase"]


def invariant(world: World) -> None:
    """Every leaf of ``ca`` verifies against every bundle of ``ca`` stored now."""
    bundles = [x509.load_pem_x509_certificates(world.data(c, "ca.crt")) for c in ("ca", *CA_LEAVES)]
    for leaf in CA_LEAVES:
        cert = x509.load_pem_x509_certificate(world.data(leaf, "tls.crt"))
        for trust in bundles:
            assert any(_signed(cert, ca) for ca in trust), leaf


def _signed(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
        return True
    except Exception:  # noqa: BLE001
        return False


async def started(world: World, target: str = "ca") -> World:
    await world.reconcile()
    world.annotate(**{requests.ROTATE: target})
    await world.reconcile()
    return world


async def test_every_phase_keeps_the_invariant_and_records_what_it_trusts():
    world = await started(rotating_world())
    old, new = serial(world, "ca"), serial(world, "ca-next")
    assert phase(world) == "Preparing" and bundle(world, "ca") == [old, new] and bundle(world, "apiserver") == [old, new]
    assert world.status()["phase"] == "ca Preparing", "kubectl get's PHASE column"
    invariant(world)
    issued = record.Record.from_status(world.status()["record"])
    assert len(issued.bundles["ca"]) == 2 and issued.fingerprint("ca-next") is not None

    await world.reconcile(GRACE)  # the grace period is over: Rotating, its work in the next look
    assert phase(world) == "Rotating"
    plan = await world.reconcile()
    assert serial(world, "ca") == new and serial(world, "ca-previous") == old and "x-ca-next" not in world.secrets
    assert all(plan.issued[leaf].why.value == "rotation" for leaf in CA_LEAVES)
    assert bundle(world, "ca") == [new, old]
    invariant(world)

    await world.reconcile(GRACE)
    assert phase(world) == "Completing"
    await world.reconcile()
    assert phase(world) == "Completed" and bundle(world, "ca") == [new] and bundle(world, "admin") == [new]
    assert "phase" not in world.status(), "no rotation in progress: the PHASE column is empty"
    invariant(world)
    assert {"RotationPreparing", "RotationRotating", "RotationCompleting", "RotationCompleted"} <= set(world.reasons())
    assert record.Record.from_status(world.status()["record"]).fingerprint("ca-previous") is not None


async def test_a_forged_spare_restarts_preparing_and_only_the_recorded_one_is_ever_moved_in():
    world = await started(rotating_world())
    forged = keys.private_pem(keys.generate(spec.KeyAlgorithm.ECDSA_P256))
    world.tamper("ca-next", tls_key=forged)
    first_spare = serial(world, "ca-next")
    await world.reconcile(timedelta(seconds=10))
    assert "RotationRestarted" in world.reasons() and serial(world, "ca-next") != first_spare
    restarted = world.status()["caRotation"]["phaseStartedAt"]
    assert restarted == "2026-11-30T12:00:10Z", "the grace period starts again with the new spare"
    new = serial(world, "ca-next")
    await world.reconcile(GRACE)
    await world.reconcile()
    assert serial(world, "ca") == new


async def test_a_move_cut_short_is_finished_with_the_two_recorded_cas():
    world = await started(rotating_world())
    old, new = serial(world, "ca"), serial(world, "ca-next")
    await world.reconcile(GRACE)
    assert phase(world) == "Rotating"
    # The move half done: the old CA copied to -previous, then the operator died.
    world.secrets["x-ca-previous"] = {**world.secrets["x-ca"], "metadata": {
        **world.secrets["x-ca"]["metadata"], "name": "x-ca-previous",
        "labels": {**world.secrets["x-ca"]["metadata"]["labels"], "pki.clusterpki.dev/component": "ca-previous"}}}
    await world.reconcile()
    assert serial(world, "ca") == new and serial(world, "ca-previous") == old
    assert "RotationRestarted" not in world.reasons()
    invariant(world)


def report(member: str, world: World, current: bool, renewed_ago: timedelta = timedelta(0)) -> Report:
    issued = record.Record.from_status(world.status()["record"])
    revision = issued.revision(["ca"]) if current else "behind"
    return Report(member=member, renewed=world.now - renewed_ago, duration=timedelta(seconds=90),
                  loaded={"kube-apiserver": {"ca": revision}}, lease=lease_name("x", member))


async def test_a_phase_waits_for_consumers_and_a_force_moves_it_on_once():
    world = await started(rotating_world())
    behind = (report("etcd-0", world, current=False),)
    await world.reconcile(GRACE, reports=behind)
    assert phase(world) == "Preparing" and world.status()["caRotation"]["waitingFor"] == "etcd-0/kube-apiserver (ca)"
    assert "RotationWaiting" in world.reasons()
    world.annotate(**{requests.FORCE: "now"})
    await world.reconcile(reports=behind)
    assert phase(world) == "Rotating" and world.status()["requests"]["force"] == "now"
    await world.reconcile(reports=behind)
    await world.reconcile(GRACE, reports=behind)
    assert phase(world) == "Rotating", "a force value moves one phase on, once"


async def test_a_stale_report_or_one_of_no_member_holds_nothing_up():
    world = await started(rotating_world())
    await world.reconcile(reports=(report("etcd-0", world, current=True),))
    assert world.status()["consumersCurrent"] == "1/1"
    stale = (report("etcd-0", world, current=False, renewed_ago=timedelta(seconds=91)),
             report("intruder", world, current=False))
    await world.reconcile(GRACE, reports=stale)
    assert phase(world) == "Rotating" and "consumers" not in world.status()
    assert ("Warning", "ConsumerStale", "The agent of member etcd-0 stopped reporting: it no longer counts as a "
            "consumer, and holds no rotation up") in world.events


async def test_the_service_account_key_keeps_its_old_public_key_for_the_token_lifetime():
    world = rotating_world()
    world.body["metadata"]["annotations"][spec.TOKEN_LIFETIME_ANNOTATION] = "2m"
    await started(world, "sa")
    old = keys.load_private_pem(world.data("sa", "sa.key"))
    await world.reconcile(GRACE)
    await world.reconcile()
    published = keys.load_public_pems(world.data("sa", "sa.pub"))
    assert len(published) == 2 and keys.same_public_key(published[1], old)
    await world.reconcile(GRACE)
    await world.reconcile()
    assert phase(world) == "Completed" and len(keys.load_public_pems(world.data("sa", "sa.pub"))) == 2
    world.annotate(**{requests.ROTATE: "ca"})
    await world.reconcile(timedelta(seconds=30))
    assert world.status()["caRotation"]["ca"] == "sa", "no rotation starts while the old key is still trusted"
    await world.reconcile(timedelta(minutes=2))
    assert len(keys.load_public_pems(world.data("sa", "sa.pub"))) == 1
    assert world.status()["caRotation"]["ca"] == "ca", "the waiting request starts once the window has closed"


async def test_a_ca_in_its_renewal_window_is_rotated_by_itself():
    world = World(clusterpki(annotations={spec.GRACE_ANNOTATION: "1s"}, validity={"ca": "60s", "certificate": "30s"}))
    await world.reconcile()
    await world.reconcile(timedelta(seconds=41))
    found = world.status()["caRotation"]
    assert (found["ca"], found["trigger"], found["phase"]) == ("ca", "renewal window", "Preparing")


# -- the typed state's own rules -----------------------------------------------------------------

def fresh(phase_: Phase = Phase.PREPARING, target: str = "ca") -> Rotation:
    return Rotation(target=target, phase=phase_, trigger=Trigger.ANNOTATION, request=target, started_at=T0,
                    phase_started_at=T0)


def test_a_phase_lasts_its_grace_period_from_when_its_work_is_done():
    unstarted = rotation.start("ca", Trigger.ANNOTATION, "ca", "old", T0)
    started_, wake, _ = rotation.advance(unstarted, GRACE, T0)
    assert started_.phase_started_at == T0 and wake == T0 + GRACE
    moved, wake, _ = rotation.advance(started_, GRACE, T0 + GRACE)
    assert moved.phase is Phase.ROTATING and moved.phase_started_at is None and wake == T0 + GRACE
    late = T0 + timedelta(hours=1)
    waiting, wake, _ = rotation.advance(moved, GRACE, late)
    assert waiting.phase is Phase.ROTATING and wake == late + GRACE


def test_complete_ends_rotating_early_and_is_used_once():
    moved, _, used = rotation.advance(fresh(Phase.ROTATING), GRACE, T0 + timedelta(seconds=1), push=Push(complete=True))
    assert moved.phase is Phase.COMPLETING and used.complete
    kept, _, used = rotation.advance(fresh(Phase.PREPARING), GRACE, T0 + timedelta(seconds=1), push=Push(complete=True))
    assert kept.phase is Phase.PREPARING and not used.complete


def test_leaving_sa_s_rotating_keeps_the_old_key_for_the_token_lifetime():
    moved, _, _ = rotation.advance(fresh(Phase.ROTATING, "sa"), GRACE, T0 + GRACE, token_lifetime=timedelta(hours=1))
    assert moved.old_key_trusted_until == T0 + GRACE + timedelta(hours=1)
    other, _, _ = rotation.advance(fresh(Phase.ROTATING), GRACE, T0 + GRACE, token_lifetime=timedelta(hours=1))
    assert other.old_key_trusted_until is None


def test_the_state_round_trips_through_the_status_and_an_unreadable_one_is_none():
    state = fresh(Phase.ROTATING)
    assert Rotation.from_status(state.to_status()) == state
    assert Rotation.from_status({"ca": "ca", "phase": "Sideways", "startedAt": "x"}) is None


@pytest.mark.parametrize("value, targets, problem", [
    ("2026-11-22T12:00:00Z", {"apiserver", "admin", "kube-proxy"}, None),
    ("apiserver", {"apiserver"}, None),
    ("apiserver,admin@1", {"apiserver", "admin"}, None),
    ("nonsense@2", set(), "nonsense is not a leaf of this ClusterPKI"),
    ("a,b@3", set(), "a, b are not leaves of this ClusterPKI"),
])
def test_renewal_targets(value, targets, problem):
    assert requests.renewal_targets(value, ["apiserver", "admin", "kube-proxy"]) == (targets, problem)


def test_rotation_targets():
    assert requests.rotation_target("etcd-ca@2") == ("etcd-ca", None)
    assert requests.rotation_target("root") == (None, "'root' is not one of ca, etcd-ca, front-proxy-ca, sa")


def test_a_request_fires_once_per_value():
    asked = requests.Requests(renew="x", rotate="ca")
    assert asked.new_since(requests.Requests()) == asked
    assert asked.new_since(requests.Requests(renew="x")) == requests.Requests(rotate="ca")


def test_completed_waits_until_no_consumer_holds_completing_up():
    completing = fresh(Phase.COMPLETING)
    held, wake, _ = rotation.advance(completing, GRACE, T0, holding_up="m0/kube-apiserver (ca)")
    assert held.phase is Phase.COMPLETING and held.waiting_for == "m0/kube-apiserver (ca)"
    assert wake == T0 + rotation.CONSUMER_RECHECK
    done, wake, _ = rotation.advance(held, GRACE, T0 + timedelta(seconds=5))
    assert done.phase is Phase.COMPLETED and done.waiting_for is None and wake is None
    forced, _, used = rotation.advance(completing, GRACE, T0, holding_up="m0/etcd (ca)", push=Push(force=True))
    assert forced.phase is Phase.COMPLETED and used.force


def test_no_cross_signing_by_an_expired_ca():
    from clusterpki.controller import phases
    from clusterpki.pki import certificates
    now = T0
    old_key, new_key = (keys.generate(spec.KeyAlgorithm.ECDSA_P256) for _ in range(2))
    old = certificates.KeyPair(certificates.create_ca("kubernetes", old_key, timedelta(hours=1), now - timedelta(hours=2)),
                               old_key)
    new = certificates.KeyPair(certificates.create_ca("kubernetes", new_key, timedelta(days=1), now), new_key)
    assert phases.crossed("ca", new, old, now) == new, "an expired old CA signs nothing"
    fresh_old = certificates.KeyPair(certificates.create_ca("kubernetes", old_key, timedelta(days=1), now), old_key)
    assert len(phases.crossed("ca", new, fresh_old, now).chain) == 1
    assert phases.crossed("etcd-ca", new, fresh_old, now) == new, "only a single-file CA is cross-signed"


def node_wants(world: World) -> nodes.Wanted:
    """What a node agent takes from the status: the published bundle, checked against the record."""
    status = world.status()
    return nodes.wanted(record.Record.from_status(status["record"]), status["trustBundles"]["ca"].encode())


async def test_nodes_follow_the_control_plane_s_ca_file_and_their_client_certificate_the_signer():
    world = await started(rotating_world())
    old, new = serial(world, "ca"), serial(world, "ca-next")
    wants = node_wants(world)
    assert (wants.trusted.serial_number, wants.signer.serial_number) == (old, old), "Preparing: nothing moves yet"
    steady = wants.revision
    await world.reconcile(GRACE, nodes={"n1": steady})
    await world.reconcile(nodes={"n1": steady})
    wants = node_wants(world)
    assert phase(world) == "Rotating"
    assert (wants.trusted.serial_number, wants.signer.serial_number) == (old, new), \
        "Rotating: the old CA on disk, the kubelet's client certificate from the new one"
    assert wants.revision != steady
    await world.reconcile(GRACE, nodes={"n1": steady})
    assert phase(world) == "Rotating" and world.status()["caRotation"]["waitingFor"] == "nodes n1"
    assert world.status()["nodes"] == {"count": 1, "current": 0, "behind": ["n1"]}
    assert world.status()["nodesCurrent"] == "0/1"
    await world.reconcile(nodes={"n1": wants.revision})
    assert phase(world) == "Completing"
    await world.reconcile(nodes={"n1": wants.revision})  # its work: the old CA leaves the bundle
    assert phase(world) == "Completing", "Completed waits for the nodes as for the control plane"
    wants = node_wants(world)
    assert (wants.trusted.serial_number, wants.signer.serial_number) == (new, new)
    await world.reconcile(nodes={"n1": wants.revision})
    assert phase(world) == "Completed" and world.status()["nodesCurrent"] == "1/1"


async def test_a_node_behind_holds_up_only_a_rotation_of_ca():
    world = await started(rotating_world(), "etcd-ca")
    await world.reconcile(GRACE, nodes={"n1": "behind"})
    await world.reconcile(nodes={"n1": "behind"})
    assert phase(world) == "Rotating"


def test_a_published_bundle_that_is_not_the_record_s_is_refused():
    issued = record.Record(secrets={"ca": record.Entry("a" * 64, "d")}, bundles={"ca": ("a" * 64,)})
    with pytest.raises(ValueError, match="not the ca bundle on record"):
        nodes.wanted(issued, _pem_of_a_new_ca())
    with pytest.raises(ValueError, match="not issued yet"):
        nodes.wanted(record.Record(), b"")


def _pem_of_a_new_ca() -> bytes:
    from clusterpki.pki import engine
    from clusterpki.pki.kubeconfig import pem_bundle
    from tests.unit.controller.world import T0 as now
    return pem_bundle([engine.build(spec.from_resource(clusterpki()), engine.Existing(), now).cas["ca"].cert])


async def test_a_ca_rotation_does_not_move_before_the_nodes_reports_are_listed():
    """After an operator's start, until its Node watch has listed every Node once, no node is known
    to be behind, and none to be current either: a ca rotation waits."""
    world = await started(rotating_world())
    await world.reconcile(GRACE, nodes=None)
    assert phase(world) == "Preparing"
    assert world.status()["caRotation"]["waitingFor"] == "nodes (their reports are not listed yet)"
    await world.reconcile(nodes={})
    assert phase(world) == "Rotating"


@pytest.mark.parametrize("target", ["ca", "etcd-ca", "front-proxy-ca", "sa"])
async def test_a_planned_rotation_says_so_and_never_reads_like_corruption(target):
    """Each leaf re-issued by a rotation is 'its CA was rotated', never 'not signed by its CA', which is
    what a leaf of a foreign CA is told (the issue's new user read it as corruption)."""
    world = await started(rotating_world(), target)
    for _ in range(6):
        await world.reconcile(GRACE + timedelta(seconds=1))
    assert phase(world) == "Completed"
    messages = [m for _, _, m in world.events]
    reissued = [m for _, r, m in world.events if r == "Reissued"]
    assert all(m.endswith(": its CA was rotated") for m in reissued), reissued
    assert bool(reissued) == (target != "sa")
    assert not [m for m in messages if "not signed" in m or "Tampered" in m or "does not match" in m], messages


async def test_a_rotation_asked_for_during_another_waits_says_so_and_starts_once_that_ends():
    """Found by a new user: the second request waited for an unrelated event (a year, at worst)."""
    world = await started(rotating_world(), "etcd-ca")
    world.annotate(**{requests.ROTATE: "front-proxy-ca"})
    await world.reconcile()
    assert world.events[-1][1:] == ("RotationWaiting", "pki.clusterpki.dev/rotate-ca='front-proxy-ca' waits for the "
                                                       "rotation of etcd-ca (Preparing) to end")
    plan = None
    while phase(world) != "Completed":
        plan = await world.reconcile(GRACE + timedelta(seconds=1))
    assert plan is not None and plan.wake_at == world.now, "looked at again at once"
    await world.reconcile()
    assert world.status()["caRotation"]["ca"] == "front-proxy-ca" and phase(world) == "Preparing"


async def test_a_rotation_of_no_authority_is_refused_at_once_even_during_another():
    world = await started(rotating_world(), "etcd-ca")
    world.annotate(**{requests.ROTATE: "etcd"})
    await world.reconcile()
    assert world.events[-1][1:] == ("InvalidRotationRequest", "pki.clusterpki.dev/rotate-ca='etcd': 'etcd' is not "
                                                             "one of ca, etcd-ca, front-proxy-ca, sa")
    assert world.status()["requests"]["rotate"] == "etcd"


async def test_complete_outside_rotating_is_refused_and_never_cuts_a_later_rotating_short():
    """Found by a new user: a complete given in Preparing fired when Rotating began, which then lasted
    0.13 s instead of its grace period."""
    world = await started(rotating_world())
    world.annotate(**{requests.COMPLETE: "early"})
    await world.reconcile()
    assert world.events[-1][1:] == ("InvalidRotationRequest", "pki.clusterpki.dev/rotate-ca-complete='early': the "
                                    "rotation of ca is Preparing: only Rotating can be completed early")
    await world.reconcile(GRACE)
    await world.reconcile()
    assert phase(world) == "Rotating"
    await world.reconcile(GRACE / 2)
    assert phase(world) == "Rotating", "its whole grace period"


async def test_complete_or_force_with_no_rotation_under_way_is_told():
    world = rotating_world()
    await world.reconcile()
    world.annotate(**{requests.COMPLETE: "1", requests.FORCE: "1"})
    await world.reconcile()
    said = [m for _, r, m in world.events if r == "InvalidRotationRequest"]
    assert said == ["pki.clusterpki.dev/rotate-ca-complete='1': no CA rotation is under way",
                    "pki.clusterpki.dev/rotate-ca-force='1': no CA rotation is under way"]
    assert world.status()["requests"] == {"complete": "1", "force": "1"}


async def test_a_force_given_in_one_phase_is_spent_when_that_phase_ends():
    world = await started(rotating_world())
    world.annotate(**{requests.FORCE: "now"})
    await world.reconcile()
    assert "force" not in (world.status().get("requests") or {}), "Preparing is not over: the force is for it"
    await world.reconcile(GRACE)
    assert phase(world) == "Rotating" and world.status()["requests"]["force"] == "now", \
        "spent with Preparing: it never moves Rotating past consumers"


async def test_a_force_or_complete_in_the_old_service_account_key_s_window_is_refused_never_kept():
    """Found by review: after an sa rotation, while its old key stays trusted, no rotation is active; a
    force given then was neither used nor refused, and pushed the next rotation's Preparing past consumers."""
    world = await started(rotating_world(), "sa")
    for _ in range(4):
        await world.reconcile(GRACE + timedelta(seconds=1))
    assert phase(world) == "Completed" and world.status()["caRotation"].get("oldKeyTrustedUntil")
    world.annotate(**{requests.FORCE: "stale", requests.COMPLETE: "stale"})
    await world.reconcile()
    assert world.status()["requests"]["force"] == "stale" and world.status()["requests"]["complete"] == "stale"
    said = [m for _, r, m in world.events if r == "InvalidRotationRequest"]
    assert said[-2:] == ["pki.clusterpki.dev/rotate-ca-complete='stale': no CA rotation is under way",
                         "pki.clusterpki.dev/rotate-ca-force='stale': no CA rotation is under way"]


async def test_a_fleet_at_rest_reads_only_its_own_secrets_and_a_rotation_looks_at_its_halves_names_first():
    """A ClusterPKI at rest lacks only rotation halves it does not write: it reads its own Secrets and
    nothing else. A rotation that is to write a half looks at the names first, and a Secret someone else
    put at that name blocks it, untouched."""
    world = rotating_world()
    await world.reconcile()
    world.reads.clear()
    await world.reconcile(timedelta(minutes=1))
    assert world.reads == ["list"], "at rest, nothing but its own Secrets is read"
    world.plant("x-ca-next", {"tls.crt": b"mallory"}, kind="Opaque")
    world.annotate(**{requests.ROTATE: "ca"})
    await world.reconcile()
    assert world.reads[1:] == ["list", "list", "names"], "the halves' names, read once needed"
    assert world.reasons()[-1] == "SecretConflict" and "Secret x-ca-next exists and is not managed" in \
        world.ready()["message"]
    assert world.data("ca-next", "tls.crt") == b"mallory" and "caRotation" not in world.status()
