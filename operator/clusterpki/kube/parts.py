"""A fleet in parts (``clusterpki run --leader-elect --shards N``): each part is a set of namespaces,
led by the replica holding its Lease, so that no ClusterPKI is handled by two replicas at once."""

from __future__ import annotations

import hashlib
from typing import NamedTuple

LEASE_NAME = "clusterpki"
MAX_SHARDS = 4  # parts a fleet may be split into: the Role names each one's Lease


def lease_names(shards: int) -> list[str]:
    """The Leases of a fleet in ``shards`` parts: ``clusterpki`` for one part, else one per part, named with
    the number of parts too: replicas given another number (a change rolling out) take Leases of their own,
    so every namespace keeps a replica throughout, never none."""
    return [LEASE_NAME] if shards == 1 else [f"{LEASE_NAME}-shard-{i}-of-{shards}" for i in range(shards)]


def shard_of(namespace: str, shards: int) -> int:
    """The part a namespace's ClusterPKIs belong to, the same in every replica (a digest of its name: Python's
    ``hash`` differs between processes). By namespace, not by ClusterPKI: ClusterPKIs whose Secret names
    may clash share a namespace, so one replica sees them all."""
    return int.from_bytes(hashlib.sha256(namespace.encode()).digest()[:8], "big") % shards


class Part(NamedTuple):
    """The part of the fleet a replica serves: the namespaces whose digest falls in ``index`` of
    ``shards``; every namespace with one part."""

    index: int = 0
    shards: int = 1

    def owns(self, namespace: str) -> bool:
        return self.shards == 1 or shard_of(namespace, self.shards) == self.index


WHOLE = Part()  # the whole fleet: one replica, or one leader
