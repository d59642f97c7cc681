"""The CRD's structural schema as the real apiserver applies it: defaults, pruning, validation, and a
status that keeps every field the operator writes."""

from __future__ import annotations

from tests.e2e.conftest import pki


async def test_an_empty_spec_gets_the_contract_s_defaults(api, namespace):
    obj = await api.apply_pki(pki("defaults", namespace))
    assert obj["spec"] == {
        "clusterDomain": "cluster.local", "serviceCIDR": "10.96.0.0/12", "controlPlaneEndpoint": "127.0.0.1:6443",
        "apiServer": {"certSANs": []},
        "etcd": {"members": [{"name": "etcd-0", "dnsNames": ["localhost"], "ips": ["127.0.0.1"]}]},
        "keyAlgorithm": "ECDSA-P256", "validity": {"ca": "87600h", "certificate": "8760h"},
        "kubelet": {"approveClientCSRs": True, "approveServingCSRs": True, "signCSRs": False,
                    "servingNames": {"dnsNames": ["{node}"], "maxNames": 8}},
        "secretRetention": "Retain"}


async def test_unknown_fields_are_pruned(api, namespace):
    body = pki("pruned", namespace, bogus="x", validity={"ca": "1000h", "forever": True})
    obj = await api.apply_pki(body)
    assert "bogus" not in obj["spec"] and obj["spec"]["validity"] == {"ca": "1000h", "certificate": "8760h"}


async def test_the_schema_refuses_bad_values_naming_the_field(api, namespace):
    cases = {
        "spec.keyAlgorithm": {"keyAlgorithm": "DSA-1024"},
        "spec.validity.ca": {"validity": {"ca": "forever"}},
        "spec.secretRetention": {"secretRetention": "Orphan"},
        "spec.etcd.members[0].name": {"etcd": {"members": [{"name": "Not_A_Label"}]}},
        "spec.apiServer.certSANs[0]": {"apiServer": {"certSANs": ["a b"]}},
    }
    for field, spec in cases.items():
        code, status = await api.try_create("clusterpkis", pki("refused", namespace, **spec), namespace)
        assert code == 422, (field, status)
        assert field in status["message"], (field, status["message"])


async def test_the_status_keeps_every_field_the_operator_writes(api, namespace):
    await api.apply_pki(pki("status", namespace))
    status = {"observedGeneration": 1, "certificateCount": 14, "nextRenewal": "2030-01-01T00:00:00Z",
              "renewRequest": "x@1", "caRotation": {"ca": "ca", "phase": "Completed", "next": "abc"},
              "conditions": [{"type": "Ready", "status": "True", "reason": "Issued", "message": "m",
                              "lastTransitionTime": "2030-01-01T00:00:00Z", "observedGeneration": 1}]}
    obj = await api.patch("clusterpkis", "status", {"status": status}, namespace, subresource="status")
    assert obj["status"] == status
