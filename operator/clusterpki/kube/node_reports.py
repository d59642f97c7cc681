"""A node agent's report: one annotation on its own Node, ``<namespace>/<clusterpki>:<revision>``.

Written only when what the kubelet runs changes (a few times per ``ca`` rotation, never as a
heartbeat): the Node's own Ready condition and Lease already say whether the node lives. A node may
write its own Node and no other (the NodeRestriction admission plugin), with the kubelet's own
credentials, so 5,000 nodes cost 5,000 small patches per rotation phase and no object of their own. The
operator follows Nodes' metadata in one watch and counts, per ClusterPKI, who reports which revision
(:func:`clusterpki.pki.nodes.revision`).

Whoever may write Nodes can write this annotation too: a forged report can hold a rotation up (the
status names the node) or let one move on before that node is ready, which harms that node alone. It
never puts trust on a node: what a node trusts comes from the record.
"""

from __future__ import annotations

from typing import Any, NamedTuple

ANNOTATION = "pki.clusterpki.dev/kubelet"


class NodeReport(NamedTuple):
    namespace: str
    name: str  # the ClusterPKI's
    revision: str

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def value(self) -> str:
        return f"{self.namespace}/{self.name}:{self.revision}"


def parse(value: str | None) -> NodeReport | None:
    """The report an annotation value holds; None when it holds none, or garbage."""
    if not value:
        return None
    where, _, revision = value.rpartition(":")
    namespace, _, name = where.partition("/")
    return NodeReport(namespace, name, revision) if namespace and name and revision else None


def of_node(meta: dict[str, Any]) -> NodeReport | None:
    return parse((meta.get("annotations") or {}).get(ANNOTATION))


def patch(report: NodeReport) -> dict[str, Any]:
    """The merge patch a node agent sends to its own Node."""
    return {"metadata": {"annotations": {ANNOTATION: report.value()}}}
