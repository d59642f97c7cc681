"""The CRD against the contract and against the spec model, so the two never drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from clusterpki.kube import crd
from clusterpki.pki import durations, spec

from tests.helpers import REPO, document
from tests.kube import with_schema_defaults

CRD_TEXT = (REPO / "crds/clusterpki.yaml").read_text()
CRD = yaml.safe_load(CRD_TEXT)
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def test_names_and_scope_follow_the_contract():
    assert CRD["metadata"]["name"] == "clusterpkis.pki.clusterpki.dev"
    assert CRD["spec"]["group"] == "pki.clusterpki.dev" and CRD["spec"]["scope"] == "Namespaced"
    names = CRD["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ClusterPKI", "clusterpkis", ["cpki"])
    assert (VERSION["name"], VERSION["served"], VERSION["storage"]) == ("v1alpha1", True, True)
    assert VERSION["subresources"] == {"status": {}}


def test_printer_columns_include_the_contract_s():
    columns = [c["name"] for c in VERSION["additionalPrinterColumns"] if c.get("priority", 0) == 0]
    assert columns == ["Ready", "Phase", "Certificates", "Consumers", "Next Renewal", "Age"], \
        "the contract's (at least READY, CERTIFICATES, NEXT RENEWAL and AGE), and the rotation in progress"
    wide = [c["name"] for c in VERSION["additionalPrinterColumns"] if c.get("priority", 0) == 1]
    assert wide == ["Reason", "Nodes"], "kubectl get -o wide adds them; the default output stays the contract's"


def test_status_keeps_unknown_fields():
    assert SCHEMA["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_schema_defaults_equal_the_spec_model_s():
    """An object as the apiserver stores it (schema defaults applied) parses to the model's defaults."""
    stored = with_schema_defaults(document("x"))
    assert stored["spec"]["keyAlgorithm"] == "ECDSA-P256"
    assert spec.from_resource(stored) == spec.from_resource(document("x"))


def test_enums_match_the_spec_model():
    properties = SCHEMA["properties"]["spec"]["properties"]
    assert properties["keyAlgorithm"]["enum"] == [a.value for a in spec.KeyAlgorithm]
    assert properties["secretRetention"]["enum"] == [r.value for r in spec.SecretRetention]


@pytest.mark.parametrize("path", [("validity", "ca"), ("validity", "certificate"), ("renewBefore",)])
def test_duration_patterns_are_the_parser_s(path):
    node = SCHEMA["properties"]["spec"]
    for part in path:
        node = node["properties"][part]
    assert node["pattern"] == durations.PATTERN
    assert re.fullmatch(node["pattern"], "2m") and not re.fullmatch(node["pattern"], "1d")


def test_manifests_and_crds_parse():
    for path in [*Path(REPO / "crds").glob("*.yaml"), *Path(REPO / "manifests").glob("*.yaml")]:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path


def test_the_rotation_s_status_fields_are_described_as_the_model_writes_them():
    from datetime import datetime, timezone

    from clusterpki.controller import rotation

    described = SCHEMA["properties"]["status"]["properties"]["caRotation"]["properties"]
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    written = rotation.Rotation("ca", rotation.Phase.COMPLETED, rotation.Trigger.ANNOTATION, "ca@1", at, at, at,
                                "a" * 64, "b" * 64, "m0/etcd", at).to_status()
    assert set(written) == set(described)
    assert described["phase"]["enum"] == [p.value for p in rotation.Phase]
    assert described["trigger"]["enum"] == [t.value for t in rotation.Trigger]
    before = {**{k: v for k, v in written.items() if k != "oldFingerprint"}, "old": "c" * 64}
    assert rotation.Rotation.from_status(before).old == "c" * 64, \
        "a status written before the fields were named is read"


SCHEMA_KEYS = {"type", "description", "format", "enum", "default", "pattern", "maxLength", "minLength", "minimum",
               "maximum", "minItems", "maxItems", "items", "properties", "required", "x-kubernetes-list-type",
               "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields"}


def test_every_schema_node_is_made_of_openapi_keys_only():
    """A comma in a flow mapping's description makes a key of its own (``if any.``), which only a
    server-side apply notices."""
    def walk(node: dict, where: str) -> None:
        assert isinstance(node, dict) and set(node) <= SCHEMA_KEYS, (where, set(node) - SCHEMA_KEYS)
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")
    walk(SCHEMA, "")


def test_the_file_is_the_generator_s_output():
    """crds/clusterpki.yaml is generated from one table (clusterpki.kube.crd.FIELDS), so a description,
    default or enum cannot drift from the spec model."""
    assert CRD_TEXT == crd.text(), f"crds/clusterpki.yaml is not what the generator writes: run {crd.REGENERATE}"


def test_the_generator_writes_the_same_text_every_run():
    assert crd.text() == crd.text()
    assert "{default}" not in crd.text()


def test_every_spec_field_is_described():
    """Every property under spec, recursively, and a list's items that are objects: kubectl explain shows
    each one's description."""
    undescribed = []

    def walk(node: dict, where: str) -> None:
        if not (isinstance(node.get("description"), str) and node["description"].strip()):
            undescribed.append(where)
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{name}")
        items = node.get("items")
        if isinstance(items, dict) and (items.get("type") == "object" or "properties" in items):
            walk(items, f"{where}[]")
    walk(SCHEMA["properties"]["spec"], "spec")
    assert undescribed == []


def test_the_table_s_fields_are_the_spec_reader_s():
    """A field in the CRD's table and not in the model's reader (or the other way round) fails here: the
    apiserver would keep what the operator calls unknown, or prune what it reads."""
    assert crd.known_fields() == spec._SpecReader._KNOWN


def test_the_schema_s_fields_are_the_table_s():
    found: set[str] = set()

    def walk(node: dict, where: str) -> None:
        found.add(where)
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{where}.{name}")
        if isinstance(node.get("items"), dict) and "properties" in node["items"]:
            walk(node["items"], f"{where}[]")
    walk(SCHEMA["properties"]["spec"], "spec")
    assert found == {field.path for field in crd.FIELDS}


def test_descriptions_show_the_model_s_defaults():
    properties = SCHEMA["properties"]["spec"]["properties"]
    assert properties["clusterDomain"]["description"].endswith("[cluster.local].")
    assert properties["validity"]["properties"]["ca"]["description"].endswith(
        f"[{durations.format_spec(spec.Spec(name='x').ca_validity)}].")
    members = properties["etcd"]["properties"]["members"]["description"]
    assert "[{name: etcd-0, dnsNames: [localhost], ips: [127.0.0.1]}]" in members
    serving = properties["kubelet"]["properties"]["servingNames"]["properties"]
    assert '["{node}": the node\'s own name]' in serving["dnsNames"]["description"]
    assert serving["maxNames"]["description"].endswith(f"[{spec.DEFAULT_MAX_SERVING_NAMES}].")


def test_a_default_missing_from_its_description_is_refused():
    bare = crd.Field("spec.x", "string", "No default shown.", {"default": "y"})
    with pytest.raises(ValueError, match="must show its default"):
        crd.spec_schema([crd.FIELDS[0], bare])
