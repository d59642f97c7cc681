"""A change to a ClusterPKI (a new rotate-ca annotation, a spec edit) is looked at once, judged against the
version the watch saw before it, whatever the operator's own status patch brought back meanwhile.

The race: a user annotates while a reconcile writes its status; the status patch's response already holds
the new annotation; judged against that body, the watch's event for the annotation looked like nothing new,
and the change waited for something else to come by."""

from __future__ import annotations

import copy
from types import SimpleNamespace

from clusterpki.controller import handlers
from clusterpki.kube.informer import Watch
from clusterpki.kube.scheduling import Scheduler

KEY = ("ns", "cp")


def body(version: int, annotations: dict[str, str] | None = None, generation: int = 1, phase: str = "") -> dict:
    return {"metadata": {"namespace": "ns", "name": "cp", "uid": "u-1", "resourceVersion": str(version),
                         "generation": generation, "annotations": annotations or {}},
            "status": {"phase": phase}}


async def following() -> tuple[SimpleNamespace, Watch, list]:
    """A controller state whose scheduler records what it is asked to fire, and the ClusterPKI watch."""
    fired: list = []

    async def fire(key):
        fired.append(key)

    state = SimpleNamespace(bodies={}, told={}, dirty=set(), scheduler=Scheduler(fire))
    watch = Watch(None, ["ns"], "", lambda kind, obj, before: handlers.track(state, kind, obj, before),
                  plural="clusterpkis", metadata_only=False, keep=handlers._what_asks_for_a_look)
    return state, watch, fired


async def test_an_annotation_the_own_status_patch_brought_back_first_is_still_looked_at():
    state, watch, _ = await following()
    watch._seen("ADDED", body(1))
    assert state.scheduler.due(KEY) is not None
    state.scheduler.forget(KEY)
    state.dirty.clear()
    # the reconcile's status patch returns version 3, which holds the user's annotation of version 2
    handlers.remember(state, KEY, body(3, {"pki.clusterpki.dev/rotate-ca": "etcd-ca@1"}, phase="Completed"))
    watch._seen("MODIFIED", body(2, {"pki.clusterpki.dev/rotate-ca": "etcd-ca@1"}))
    assert state.scheduler.due(KEY) is not None and KEY in state.dirty, "the annotation asks for a look"
    assert state.bodies[KEY]["metadata"]["resourceVersion"] == "3", "the newest version stays kept"
    state.scheduler.forget(KEY)
    state.dirty.clear()
    watch._seen("MODIFIED", body(3, {"pki.clusterpki.dev/rotate-ca": "etcd-ca@1"}, phase="Completed"))
    assert state.scheduler.due(KEY) is None, "the operator's own status patch asks for nothing"


async def test_a_spec_change_asks_for_a_look_and_a_status_change_does_not():
    state, watch, _ = await following()
    watch._seen("ADDED", body(1))
    state.scheduler.forget(KEY)
    watch._seen("MODIFIED", body(2, phase="Rotating"))
    assert state.scheduler.due(KEY) is None
    watch._seen("MODIFIED", body(3, generation=2, phase="Rotating"))
    assert state.scheduler.due(KEY) is not None


async def test_a_look_asked_for_while_a_reconcile_runs_survives_its_scheduling():
    """The reconcile in progress ends by replacing the due time with its own wake: the look asked for
    meanwhile must come after it all the same."""
    state, watch, _ = await following()
    watch._seen("ADDED", body(1))
    state.dirty.discard(KEY)  # a reconcile starts
    watch._seen("MODIFIED", body(2, {"pki.clusterpki.dev/rotate-ca": "ca@1"}))
    plan = SimpleNamespace(wake_at=None, retry=None)
    handlers._schedule(state, KEY, plan)
    assert state.scheduler.due(KEY) is not None


async def test_a_relist_reports_a_change_missed_while_the_watch_was_away():
    state, watch, _ = await following()
    watch._seen("ADDED", body(1))
    state.scheduler.forget(KEY)
    annotated = body(5, {"pki.clusterpki.dev/rotate-ca": "ca@2"})

    class Listing:
        async def request(self, *args, **kwargs):
            return {"metadata": {"resourceVersion": "5"}, "items": [copy.deepcopy(annotated)]}

    watch.api = Listing()
    handlers.remember(state, KEY, copy.deepcopy(annotated))  # a status patch's response got there first
    await watch._list("/x", "the ClusterPKIs", "ns", report=True)
    assert state.scheduler.due(KEY) is not None


async def test_a_deleted_clusterpki_leaves_nothing_due_or_marked():
    state, watch, _ = await following()
    watch._seen("ADDED", body(1))
    watch._seen("DELETED", body(2))
    assert KEY not in state.dirty and state.scheduler.due(KEY) is None and KEY not in state.bodies
