"""The ClusterPKI CRD, generated: ``crds/clusterpki.yaml`` is what ``python -m clusterpki.kube.crd`` prints.

:data:`FIELDS` is the one table of the spec's fields: per field its type, the description ``kubectl
explain`` shows, and its validations. Defaults and enums come from the spec model
(:mod:`clusterpki.pki.spec`: ``Spec()``'s defaults, the enums' values), never retyped, and a
description's ``{default}`` is that default as a user writes it, so neither can drift from the model.
The rest of the CRD (names, printer columns, the status schema) is data below.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import yaml

from clusterpki.kube.resource import GROUP, KIND, PLURAL, VERSION
from clusterpki.pki import catalog, durations, spec

REGENERATE = "PYTHONPATH=operator python -m clusterpki.kube.crd > crds/clusterpki.yaml"
# In a description: the field's default, written as in a spec; a list's items, so that "[{default}]" reads as
# the list, and "none" for an empty one.
DEFAULT = "{default}"


class Field(NamedTuple):
    """One node of the spec's schema. ``path`` starts at ``spec``; ``[]`` is a list's items
    (``spec.etcd.members[].name``). ``checks`` are its other OpenAPI keys (default, pattern, maxLength,
    enum, minimum, items...)."""

    path: str
    type: str
    description: str
    checks: Mapping[str, Any]


def _field(path: str, type_: str, description: str, *, list_map_keys: Iterable[str] = (), **checks: Any) -> Field:
    if list_map_keys:
        checks = {**checks, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(list_map_keys)}
    return Field(path, type_, description, checks)


_SPLIT, _ADMINS, _MASTERS = catalog.SUPER_ADMIN_SPLIT, catalog.CLUSTER_ADMINS[0], catalog.MASTERS[0]
_MODEL = spec.Spec(name="-")
_KUBELET = spec.KubeletPolicy()
_SERVING = spec.ServingNames()


def _member(member: spec.EtcdMember) -> dict[str, Any]:
    written = {"name": member.name, "dnsNames": list(member.dns_names), "ips": [str(ip) for ip in member.ips]}
    if member.advertise_address is not None:
        written["advertiseAddress"] = spec.host_port(str(member.advertise_address), member.bind_port)
    return written


def _values(kind: type[Any]) -> list[str]:
    return [item.value for item in kind]


def _one_of(kind: type[Any]) -> str:
    *first, last = _values(kind)
    return f"{', '.join(first)} or {last}"


_DURATION = durations.PATTERN
_CIDR = r"^[0-9a-fA-F:.]+/[0-9]{1,3}$"
_GO_DURATION = ("a Go duration such as 90s, 30m or 1h30m (units h, m, s, ms, us, ns; no d), from 1s to "
                f"{durations.format_spec(spec.MAX_VALIDITY)} (100 years)")
_ROTATION_ROOM = (f"A CA enters its renewal window, and is rotated, in the last third of it, where the three CAs' "
                  f"rotations take {spec.ROTATION_ROOM} rotation grace periods (the annotation {spec.GRACE_ANNOTATION}, "
                  f"{durations.format_spec(spec.DEFAULT_GRACE)} by default): so it is at least "
                  f"{3 * spec.ROTATION_ROOM} of them ({durations.format_spec(3 * spec.ROTATION_ROOM * spec.DEFAULT_GRACE)} "
                  "by default)")

FIELDS: tuple[Field, ...] = (
    _field("spec", "object",
           "What the PKI is made of: the names and addresses its certificates carry, their keys and lifetimes, "
           "what happens to its Secrets, and the kubelet CSR policy. Every field is optional; defaults are in "
           "brackets.",
           default={}),
    _field("spec.clusterDomain", "string",
           "The cluster's DNS domain (the kubelets' clusterDomain): the apiserver certificate names "
           f"kubernetes.default.svc.<clusterDomain>. A DNS name [{DEFAULT}].",
           default=_MODEL.cluster_domain, maxLength=253,
           pattern=r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?)*$"),
    _field("spec.serviceCIDR", "string",
           "The Service CIDR, IPv4 or IPv6, as kube-apiserver's --service-cluster-ip-range: its first address (the "
           "kubernetes Service's ClusterIP, 10.96.0.1 in 10.96.0.0/12) goes into the apiserver SANs, and no "
           f"kubelet serving certificate may carry an address in it [{DEFAULT}].",
           default=str(_MODEL.service_cidr), pattern=_CIDR),
    _field("spec.controlPlaneEndpoint", "string",
           "host[:port] that every kubeconfig points at (https://host:port; an IPv6 host in brackets when a port "
           f"follows; port {_MODEL.endpoint_port} by default), as kubeadm's controlPlaneEndpoint. The host, a DNS "
           "name or an IP address, goes into the apiserver SANs. A member with an advertiseAddress has its "
           "controller-manager.conf and scheduler.conf point at that address instead; admin.conf, kube-proxy.conf "
           f"and the Secrets' kubeconfig keep this endpoint [{DEFAULT}].",
           default=spec.host_port(_MODEL.endpoint_host, _MODEL.endpoint_port), maxLength=261,
           pattern=r"^(\[[0-9a-fA-F:.]+\]|[^:/\s]+|[0-9a-fA-F:]+)(:[0-9]{1,5})?$"),
    _field("spec.apiServer", "object", "The kube-apiserver's serving certificate (Secret <name>-apiserver).",
           default={}),
    _field("spec.apiServer.certSANs", "array",
           "Extra names for the apiserver certificate, as kubeadm's apiServer.certSANs: DNS names (a leading *. "
           "wildcard allowed) and IP addresses, besides kubernetes, kubernetes.default, kubernetes.default.svc, "
           "kubernetes.default.svc.<clusterDomain>, the first Service IP and the controlPlaneEndpoint host, which "
           "it always carries. No kubelet serving certificate may carry one of them. At most 100 "
           f"[{DEFAULT}].",
           default=list(_MODEL.cert_sans), maxItems=100,
           items={"type": "string", "maxLength": 253, "pattern": r"^[^\s,/]+$"}),
    _field("spec.etcd", "object", "The etcd cluster: its members' server and peer certificates.", default={}),
    _field("spec.etcd.members", "array",
           "The control-plane members, one per etcd member, from 1 to 15, each name once. Each gets an etcd "
           "server and an etcd peer certificate (Secrets <name>-etcd-server-<member> and "
           "<name>-etcd-peer-<member>, CN the member's name) with its dnsNames and ips plus localhost, 127.0.0.1 "
           f"and ::1 [{DEFAULT}].",
           minItems=1, maxItems=15, default=[_member(m) for m in _MODEL.etcd_members], list_map_keys=["name"]),
    _field("spec.etcd.members[]", "object",
           "One control-plane member: its etcd member's names and addresses, and where its own kube-apiserver "
           "listens.",
           required=["name"]),
    _field("spec.etcd.members[].name", "string",
           "The member's name, as kubeadm names etcd members: its node's name (clusterpki agent-manifests runs "
           "its agent on the node of that kubernetes.io/hostname). The CN of its etcd server and peer "
           "certificates, and part of their Secrets' names: a DNS label (lower-case letters, digits and '-') of "
           "at most 51 characters. Required.",
           maxLength=51, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
    _field("spec.etcd.members[].dnsNames", "array",
           "DNS names of the member (not IP addresses) for its etcd server and peer certificates; localhost is "
           "added anyway. At most 50 [none].",
           maxItems=50, items={"type": "string", "maxLength": 253}),
    _field("spec.etcd.members[].ips", "array",
           "IP addresses (IPv4 or IPv6) of the member for its etcd server and peer certificates; 127.0.0.1 and ::1 "
           "are added anyway. At most 50 [none].",
           maxItems=50, items={"type": "string", "maxLength": 45, "pattern": r"^[0-9a-fA-F:.]+$"}),
    _field("spec.etcd.members[].advertiseAddress", "string",
           "Where this member's kube-apiserver listens, IP[:port] ([IPv6]:port with a port; kubeadm's "
           f"localAPIEndpoint; port {spec.DEFAULT_BIND_PORT} by default). Its name and address then go into the "
           "apiserver certificate, and its kube-controller-manager and kube-scheduler reach their own apiserver "
           "there (its controller-manager.conf and scheduler.conf). clusterpki import reads it from each node's "
           "controller-manager.conf [none: they use controlPlaneEndpoint].",
           maxLength=53, pattern=r"^(\[[0-9a-fA-F:.]+\]|[0-9a-fA-F:.]+)(:[0-9]{1,5})?$"),
    _field("spec.keyAlgorithm", "string",
           f"The algorithm of every key it generates, CAs' and leaves': {_one_of(spec.KeyAlgorithm)} (RSA with that "
           "modulus size, ECDSA on that NIST curve). A leaf whose key is of another algorithm is re-issued with a "
           f"new key; a CA keeps its key until it is rotated [{DEFAULT}].",
           default=_MODEL.key_algorithm.value, enum=_values(spec.KeyAlgorithm)),
    _field("spec.validity", "object", "How long the certificates it issues are valid.", default={}),
    _field("spec.validity.ca", "string",
           f"How long a CA certificate (ca, etcd-ca, front-proxy-ca) is valid, {_GO_DURATION}. {_ROTATION_ROOM} "
           f"[{DEFAULT}].",
           default=durations.format_spec(_MODEL.ca_validity), pattern=_DURATION),
    _field("spec.validity.certificate", "string",
           f"How long a leaf certificate is valid, {_GO_DURATION}; at most validity.ca (a leaf never outlives its "
           "CA). Also the longest expirationSeconds a kubelet CSR may ask for, and the validity of the kubelet "
           f"certificates it signs (kubelet.signCSRs; a CSR's expirationSeconds may shorten it) [{DEFAULT}].",
           default=durations.format_spec(_MODEL.cert_validity), pattern=_DURATION),
    _field("spec.renewBefore", "string",
           f"How long before its expiry a leaf is renewed (keeping its key), {_GO_DURATION}; shorter than "
           "validity.certificate. CAs are rotated in the last third of validity.ca instead "
           "[one third of validity.certificate].",
           pattern=_DURATION),
    _field("spec.kubelet", "object",
           "The kubelet CSR policy: how the operator run with --csr-policy naming this ClusterPKI decides and signs "
           "the kubelet CSRs of the cluster it runs in (signers kubernetes.io/kube-apiserver-client-kubelet and "
           "kubernetes.io/kubelet-serving). Without that flag naming it, it has no effect.",
           default={}),
    _field("spec.kubelet.approveClientCSRs", "boolean",
           "Whether the operator decides kubelet client CSRs (signer kubernetes.io/kube-apiserver-client-kubelet), "
           "approving those that pass every rule and denying the others; false leaves them to others "
           f"[{DEFAULT}].",
           default=_KUBELET.approve_client_csrs),
    _field("spec.kubelet.approveServingCSRs", "boolean",
           "Whether the operator decides kubelet serving CSRs (signer kubernetes.io/kubelet-serving), approving "
           "those that pass every rule, their names within servingNames, and denying the others; false leaves "
           f"them to others [{DEFAULT}].",
           default=_KUBELET.approve_serving_csrs),
    _field("spec.kubelet.signCSRs", "boolean",
           "Whether the operator signs approved kubelet CSRs with this ClusterPKI's ca, for control planes whose "
           "kube-controller-manager does not sign. It signs only a CSR that passes every rule when it is signed, "
           f"whoever approved it [{DEFAULT}].",
           default=_KUBELET.sign_csrs),
    _field("spec.kubelet.servingNames", "object",
           "Bounds on the names a kubelet's serving certificate may carry, beyond being its Node's own and nobody "
           "else's, when it is approved and when it is signed.",
           default={}),
    _field("spec.kubelet.servingNames.ipRanges", "array",
           "CIDRs every IP address of a kubelet serving certificate must fall in. At most 100 [none: any address "
           "its Node reports].",
           maxItems=100, items={"type": "string", "pattern": _CIDR}),
    _field("spec.kubelet.servingNames.dnsNames", "array",
           "Patterns every DNS name of a kubelet serving certificate must match: {node} is the node's name, * "
           "exactly one label ({node}.*.compute.internal); [] allows IP addresses only. At most 100 "
           f"[{DEFAULT}: the node's own name].",
           maxItems=100, default=list(_SERVING.dns_names), items={"type": "string", "maxLength": 253}),
    _field("spec.kubelet.servingNames.maxNames", "integer",
           "The most names (DNS names and IP addresses) one kubelet serving certificate may carry, from 1 to 100 "
           f"[{DEFAULT}].",
           minimum=1, maximum=100, default=_SERVING.max_names),
    _field("spec.secretRetention", "string",
           f"What happens to its Secrets when the ClusterPKI is deleted: {_one_of(spec.SecretRetention)}. Retain "
           "keeps them; Delete gives each Secret it made an ownerReference to the ClusterPKI, so Kubernetes' "
           f"garbage collector deletes them with it (adopted CA Secrets excepted) [{DEFAULT}].",
           default=_MODEL.secret_retention.value, enum=_values(spec.SecretRetention)),
    _field("spec.kubernetesVersion", "string",
           f"The cluster's Kubernetes version (v1.30 or v1.30.2): the certificates follow kubeadm's identities for "
           f"it. From {_SPLIT}, admin.conf and apiserver-kubelet-client are in the group {_ADMINS} and "
           f"super-admin.conf (Secret <name>-super-admin; on the first member only) in {_MASTERS}; before, "
           f"those and the etcd clients are in {_MASTERS}. Unset, the contract's identities [unset]. On a "
           f"running cluster, create the ClusterRoleBinding {_ADMINS} before moving to {_SPLIT} or later.",
           pattern=f"^{spec.RELEASE_PATTERN}$"),
)

# The order of a schema node's keys in the file.
_KEY_ORDER = ("type", "format", "description", "default", "enum", "minimum", "maximum", "minLength", "maxLength",
              "pattern", "minItems", "maxItems", "items", "required", "properties", "x-kubernetes-list-type",
              "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields")


def _shown(default: Any) -> str:
    """A default in a description: as a user writes it in a spec; a list's items, ``none`` for no item."""
    if isinstance(default, list):
        return ", ".join(_written(item) for item in default) or "none"
    return _written(default)


def _written(value: Any) -> str:
    """A value as a user writes it in a spec: ``cluster.local``, ``true``, ``["{node}"]``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{key}: {_written(item)}" for key, item in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_written(item) for item in value) + "]"
    text = str(value)
    plain = text and text == text.strip() and not any(c in text for c in "{}[],#'\"") and ": " not in text
    return text if plain else json.dumps(text)


def _node(field: Field) -> dict[str, Any]:
    default = field.checks.get("default")
    if default not in (None, {}) and DEFAULT not in field.description:
        raise ValueError(f"{field.path}: its description must show its default ({DEFAULT})")
    if (default is None or default == {}) and DEFAULT in field.description:
        raise ValueError(f"{field.path}: {DEFAULT} in the description of a field without a default")
    description = field.description.replace(DEFAULT, _shown(default)) if default is not None else field.description
    return {"type": field.type, "description": description, **field.checks}


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    unknown = set(node) - set(_KEY_ORDER)
    if unknown:
        raise ValueError(f"not an OpenAPI key of this CRD: {sorted(unknown)}")
    ordered = {key: node[key] for key in _KEY_ORDER if key in node}
    if "properties" in ordered:
        ordered["properties"] = {name: _ordered(child) for name, child in ordered["properties"].items()}
    if isinstance(ordered.get("items"), dict):
        ordered["items"] = _ordered(ordered["items"])
    return ordered


def spec_schema(fields: Iterable[Field] = FIELDS) -> dict[str, Any]:
    """The ``openAPIV3Schema.properties.spec`` subtree, built from the table."""
    nodes: dict[str, dict[str, Any]] = {}
    for field in fields:
        node = nodes[field.path] = _node(field)
        if field.path == "spec":
            continue
        if field.path.endswith("[]"):
            parent = nodes[field.path[:-2]]
            parent["items"] = node
        else:
            parent = nodes[field.path.rpartition(".")[0]]
            parent.setdefault("properties", {})[field.path.rpartition(".")[2]] = node
    return _ordered(nodes["spec"])


def known_fields(fields: Iterable[Field] = FIELDS) -> dict[str, set[str]]:
    """The field names the table gives each object, by its path (``spec.etcd.members[]`` for a member):
    what the spec reader must know, no more and no less."""
    known: dict[str, set[str]] = {}
    for field in fields:
        if field.type == "object":
            known.setdefault(field.path, set())
        if field.path != "spec" and not field.path.endswith("[]"):
            parent, _, name = field.path.rpartition(".")
            known.setdefault(parent, set()).add(name)
    return known


_PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Phase", "type": "string",
     "description": "The CA rotation in progress, as <authority> <phase> (empty when none is).",
     "jsonPath": ".status.phase"},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason', "priority": 1},
    {"name": "Certificates", "type": "integer", "jsonPath": ".status.certificateCount"},
    {"name": "Consumers", "type": "string",
     "description": "Agents' components that run the current Secrets, of those reporting (empty without agents).",
     "jsonPath": ".status.consumersCurrent"},
    {"name": "Nodes", "type": "string",
     "description": "Nodes whose kubelet runs the current ca, of those whose node agent reports (empty without node "
                    "agents).",
     "jsonPath": ".status.nodesCurrent", "priority": 1},
    {"name": "Next Renewal", "type": "string",
     "description": "When the next certificate falls due (a date column would show the age of a future time as "
                    "<invalid>).",
     "jsonPath": ".status.nextRenewal"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_STRING = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_INT64 = {"type": "integer", "format": "int64"}

_STATUS = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "observedGeneration": _INT64,
        "certificateCount": {"type": "integer"},
        "phase": {"type": "string",
                  "description": "The CA rotation in progress, as <authority> <phase>; absent when none is."},
        "caRotation": {
            "type": "object",
            "description": "The last CA or service-account key rotation, in progress or done.",
            "x-kubernetes-preserve-unknown-fields": True,
            "properties": {
                "ca": {"type": "string", "description": "The authority rotated: ca, etcd-ca, front-proxy-ca or sa."},
                "phase": {"type": "string", "description": "Where it stands.",
                          "enum": ["Preparing", "Rotating", "Completing", "Completed", "Aborting", "Aborted"]},
                "trigger": {"type": "string",
                            "description": "What started it (the rotate-ca annotation, the authority's renewal "
                                           "window, or a recovery).",
                            "enum": ["annotation", "renewal window", "recovery"]},
                "request": {"type": "string", "description": "The rotate-ca annotation's value that started it, if "
                                                             "one did."},
                "startedAt": _TIME,
                "phaseStartedAt": {**_TIME, "description": "When its consumers all ran this phase's Secrets."},
                "completedAt": _TIME,
                "oldFingerprint": {"type": "string", "description": "SHA-256 of the authority replaced (of its "
                                                                    "certificate; of the public key for sa)."},
                "newFingerprint": {"type": "string", "description": "SHA-256 of its replacement, once it is made."},
                "waitingFor": {"type": "string", "description": "The consumers and nodes that hold the phase up."},
                "oldKeyTrustedUntil": {**_TIME, "description": "For sa, until when tokens of the old key verify."},
            },
        },
        "conditions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": _STRING,
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": _STRING,
                    "message": _STRING,
                    "lastTransitionTime": _TIME,
                    "observedGeneration": _INT64,
                },
            },
        },
        "certificates": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": _STRING,
                    "secretName": _STRING,
                    "issuer": _STRING,
                    "serialNumber": _STRING,
                    "notBefore": _TIME,
                    "notAfter": _TIME,
                    "renewalTime": _TIME,
                },
            },
        },
    },
}


def crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": {"app.kubernetes.io/name": "clusterpki"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": KIND.lower(),
                      "shortNames": ["cpki"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "The control-plane PKI of one Kubernetes cluster, issued into Secrets.",
                    "properties": {
                        "apiVersion": _STRING,
                        "kind": _STRING,
                        "metadata": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 63}}},
                        "spec": spec_schema(),
                        "status": _STATUS,
                    },
                }},
            }],
        },
    }


class _Dumper(yaml.SafeDumper):
    """Block style throughout, lists indented under their key, long strings folded, no anchors."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _string(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    prose = " " in text and text == text.strip() and "\n" not in text and "  " not in text
    folded = prose and (len(text) > 80 or ": " in text or " #" in text or text[0] in "'\"[]{}*&!|>%@`")
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=">" if folded else None)


_Dumper.add_representer(str, _string)

_HEADER = f"""\
# Generated from operator/clusterpki/kube/crd.py: edit that, then run
#   {REGENERATE}
"""


def text() -> str:
    """``crds/clusterpki.yaml``, the same text at every run."""
    document = crd()
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100,
                     default_flow_style=False)
    if yaml.safe_load(body) != document:
        raise AssertionError("the CRD's YAML does not read back as the CRD")
    return _HEADER + body


def main() -> None:
    sys.stdout.write(text())


if __name__ == "__main__":
    main()
