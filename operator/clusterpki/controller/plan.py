"""A plan: what :func:`clusterpki.controller.decide.decide` decided, for
:func:`clusterpki.controller.apply.apply` to carry out. Values only."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from clusterpki.controller.reasons import Event
from clusterpki.pki.certificates import Issue
from clusterpki.pki.record import Claim


class WriteKind(str, enum.Enum):
    CREATE = "create"
    REPLACE = "replace"  # with the resourceVersion read
    RECREATE = "recreate"  # delete and create: an immutable Secret, or one of another type
    DELETE = "delete"


@dataclass(frozen=True)
class Write:
    kind: WriteKind
    secret: dict[str, Any]  # the API object (for DELETE: its metadata is enough)
    first: bool = False  # CA Secrets are written before the rest
    unblock: dict[str, Any] | None = None  # the stored Secret without its finalizers, to store first

    @property
    def name(self) -> str:
        return self.secret["metadata"]["name"]


@dataclass(frozen=True)
class Retry:
    delay: float
    why: str


@dataclass(frozen=True)
class Plan:
    """Writes in order (a claim first when they bring new material), then the status and the Events.
    ``wake_at``: the next look (a renewal, a rotation's step, a report that turns stale); ``retry``:
    after a transient failure; ``stop``: the ClusterPKI is going away, nothing is written;
    ``read_halves``: a rotation is to write a half whose name was not looked at, so nothing is done
    until it is observed again with them (:func:`clusterpki.controller.observe.observe`)."""

    writes: tuple[Write, ...] = ()
    claim: Claim | None = None
    status: Mapping[str, Any] | None = None
    precondition: str | None = None  # the resourceVersion the status writes must find
    events: tuple[Event, ...] = ()
    wake_at: datetime | None = None
    retry: Retry | None = None
    issued: Mapping[str, Issue] = field(default_factory=dict)
    stop: str | None = None
    read_halves: bool = False
