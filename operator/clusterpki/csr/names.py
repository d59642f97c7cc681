"""Which names a kubelet's serving certificate may carry. Pure.

A node writes its own Node's addresses (NodeRestriction lets it), so what a Node reports is a claim,
not proof. A name qualifies only if all hold:

- its Node reports it (an IP as InternalIP or ExternalIP, a DNS name as Hostname, InternalDNS or
  ExternalDNS);
- it is nobody else's: no other Node's name or address; not in the service CIDR; not one of the
  apiserver's names or addresses, nor the control-plane endpoint; not an etcd member's (but a node
  that *is* an etcd member may carry that member's own addresses: on a stacked control plane the
  kubelet, etcd and the apiserver share the node's address); not ``localhost`` or loopback's
  ``127.0.0.1``; no wildcard;
- the policy's bounds (``spec.kubelet.servingNames``) allow it: an IP within ``ipRanges`` (any, when
  none are given), a DNS name matching one of ``dnsNames`` (``{node}`` alone by default), and no more
  than ``maxNames`` names in all.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

from clusterpki.csr.reasons import Reason
from clusterpki.pki import catalog
from clusterpki.pki.spec import NODE, IPAddress, IPNetwork, Spec

_HOSTNAME_TYPES = ("Hostname", "InternalDNS", "ExternalDNS")
_IP_TYPES = ("InternalIP", "ExternalIP")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


class Node(NamedTuple):
    name: str
    hostnames: frozenset[str]
    ips: frozenset[IPAddress]

    def names(self) -> set[str]:
        """Everything it reports, as strings, with its own name."""
        return {self.name.lower(), *self.hostnames, *(str(ip) for ip in self.ips)}


def node_of(body: Mapping[str, Any]) -> Node:
    """The addresses a Node reports, as the index keeps them."""
    addresses = (body.get("status") or {}).get("addresses") or []
    ips = set()
    for a in addresses:
        if a.get("type") in _IP_TYPES:
            try:
                ips.add(ipaddress.ip_address(a.get("address", "")))
            except ValueError:
                continue
    return Node(body["metadata"]["name"],
                frozenset(str(a.get("address", "")).lower() for a in addresses if a.get("type") in _HOSTNAME_TYPES),
                frozenset(ips))


class NodeIndex:
    """Every Node's names and addresses, and which Nodes report each one."""

    def __init__(self, nodes: Iterable[Node] = ()) -> None:
        self.nodes: dict[str, Node] = {}
        self._owners: dict[str, set[str]] = defaultdict(set)
        for node in nodes:
            self.put(node)

    def put(self, node: Node) -> None:
        self.remove(node.name)
        self.nodes[node.name] = node
        for name in node.names():
            self._owners[name].add(node.name)

    def remove(self, name: str) -> None:
        node = self.nodes.pop(name, None)
        for value in node.names() if node else ():
            self._owners[value].discard(name)
            if not self._owners[value]:
                del self._owners[value]

    def get(self, name: str) -> Node | None:
        return self.nodes.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def others(self, value: str, node: str) -> list[str]:
        """The Nodes other than ``node`` that report ``value`` (a name, or an IP as a string)."""
        return sorted(self._owners.get(value, set()) - {node})


@dataclass(frozen=True)
class Bounds:
    """What the policy ClusterPKI says of kubelet certificates, read once per version of it."""

    ip_ranges: tuple[IPNetwork, ...]
    dns_names: tuple[str, ...]
    max_names: int
    max_validity: timedelta
    service_cidr: IPNetwork
    reserved: Mapping[str, str]  # name or IP -> whose it is
    members: Mapping[str, frozenset[str]]  # etcd member -> its own names and IPs


def bounds_of(spec: Spec) -> Bounds:
    """The bounds a policy ClusterPKI sets, and the names it reserves: the apiserver's (its SANs and the
    endpoint) and every etcd member's."""
    dns, ips = catalog.apiserver_sans(spec, None)
    reserved = {str(value).lower(): "the apiserver's" for value in (*dns, *ips)}
    reserved[spec.endpoint_host.lower()] = "the control-plane endpoint"
    members = {m.name: frozenset({*(d.lower() for d in m.dns_names), *(str(ip) for ip in m.ips)})
               for m in spec.etcd_members}
    for member, values in members.items():
        reserved.update({value: f"etcd member {member}'s" for value in values if value not in reserved})
    serving = spec.kubelet.serving_names
    return Bounds(serving.ip_ranges, serving.dns_names, serving.max_names, spec.cert_validity, spec.service_cidr,
                  reserved, members)


def problem(value: str, is_ip: bool, node: Node, index: NodeIndex, bounds: Bounds) -> tuple[Reason, str] | None:
    """Why ``value`` (a DNS name, lower case, or an IP as a string) may not be in ``node``'s serving
    certificate; None when it may."""
    if not is_ip and "*" in value:
        return Reason.SAN_WILDCARD, f"{value} is a wildcard, never a kubelet's"
    if value in LOOPBACK:
        return Reason.SAN_RESERVED, f"{value} is every host's own loopback"
    if value not in node.names():
        return Reason.SAN_NOT_OWNED_BY_NODE, f"{value} is not an address of {node.name}"
    owners = index.others(value, node.name)
    if owners:
        return Reason.SAN_OF_ANOTHER_NODE, f"{value} is an address of node {', '.join(owners)} too"
    if is_ip and ipaddress.ip_address(value) in bounds.service_cidr:
        return Reason.SAN_RESERVED, f"{value} is in the service CIDR {bounds.service_cidr}"
    whose = bounds.reserved.get(value)
    if whose is not None and value not in bounds.members.get(node.name, frozenset()):
        return Reason.SAN_RESERVED, f"{value} is {whose}"
    return _outside(value, is_ip, node, bounds)


def _outside(value: str, is_ip: bool, node: Node, bounds: Bounds) -> tuple[Reason, str] | None:
    if is_ip:
        if bounds.ip_ranges and not any(ipaddress.ip_address(value) in r for r in bounds.ip_ranges):
            ranges = ", ".join(str(r) for r in bounds.ip_ranges)
            return Reason.SAN_OUTSIDE_BOUNDS, f"{value} is outside spec.kubelet.servingNames.ipRanges ({ranges})"
        return None
    if not any(_matches(pattern, value, node.name) for pattern in bounds.dns_names):
        allowed = ", ".join(bounds.dns_names) or "none"
        return Reason.SAN_OUTSIDE_BOUNDS, f"{value} matches none of spec.kubelet.servingNames.dnsNames ({allowed})"
    return None


def _matches(pattern: str, value: str, node: str) -> bool:
    """Whether a DNS name matches a pattern, ``{node}`` being the node's name and ``*`` one label."""
    want = pattern.replace(NODE, node.lower()).split(".")
    have = value.split(".")
    return len(want) == len(have) and all(w in ("*", h) for w, h in zip(want, have, strict=True))
