"""The node agent through a whole ``ca`` rotation, without a server: the controller's loop on the
in-memory world (tests/unit/controller/world.py) makes the ClusterPKI and its status, a fake API answers
the node agent's requests from it (its CSR signed by the CSR rules with the world's signing CA), and
the kubelet's files are real files in a kubeadm layout. The proofs on real kubelets are
tests/e2e/test_kubeadm_cluster.py and test_ha.py; this one checks every phase's files, restarts and reports, fast."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from clusterpki.agent.node import NodeAgent, _chains
from clusterpki.agent.restarters import RestartFailed
from clusterpki.controller import requests
from clusterpki.csr import rules
from clusterpki.csr.names import NodeIndex, bounds_of, node_of
from clusterpki.errors import UserError
from clusterpki.kube import node_reports, secrets
from clusterpki.kube.api import ApiError
from clusterpki.kubeadm.kubelet import CLIENT_CA, CLIENT_CURRENT, KUBECONFIG, Files
from clusterpki.pki import certificates, engine, keys, kubeconfig, nodes, spec
from clusterpki.pki.record import Record
from cryptography import x509

from tests.csr_factory import node_body
from tests.unit.controller.world import World, clusterpki

GRACE = timedelta(seconds=30)


class FakeApi:
    """The node agent's requests, answered from the world: the ClusterPKI, CSRs signed at once by the
    operator's rules, and the Node's annotations."""

    def __init__(self, world: World, node: str) -> None:
        self.world, self.node, self.csrs, self.annotations = world, node, {}, {}
        self.closed = False

    async def request(self, verb: str, what: str, method: str, path: str, body: Any = None, params=None,
                      content_type=None, accept=None) -> Any:
        if method == "GET" and "/clusterpkis/" in path:
            return self.world.body
        if method == "POST" and path.endswith("certificatesigningrequests"):
            name = f"csr-{len(self.csrs)}"
            csr = {**body, "metadata": {"name": name},
                   "spec": {**body["spec"], "username": f"system:node:{self.node}", "groups": ["system:nodes"]}}
            index = NodeIndex([node_of(node_body(self.node, (self.node,), ("10.0.0.1",)))])
            pki_spec = spec.from_resource(self.world.body)
            decision = rules.decide(csr, index, pki_spec.kubelet, bounds_of(pki_spec))
            assert decision.verdict == "Approved", decision
            ca = secrets.read_pair(secrets.StoredSecret.from_object(self.world.secret("ca")))
            csr["status"] = {"certificate": rules.sign(csr, ca, pki_spec.cert_validity, self.world.now)}
            self.csrs[name] = csr
            return csr
        if method == "GET" and "certificatesigningrequests/" in path:
            return self.csrs[path.rsplit("/", 1)[1]]
        if method == "PATCH" and path == f"/api/v1/nodes/{self.node}":
            self.annotations.update(body["metadata"]["annotations"])
            return {}
        raise ApiError(verb, what, 404, "NotFound")

    async def close(self) -> None:
        self.closed = True


class Restarts:
    def __init__(self) -> None:
        self.count = 0

    async def restart(self, component: str) -> None:
        assert component == "kubelet"
        self.count += 1


def kubelet_files(tmp_path: Path, world: World, node: str) -> Files:
    """A worker as ``kubeadm join`` leaves it: the cluster's CA, kubelet.conf pointing at the client
    certificate file, and a client certificate from the cluster's CA."""
    files = Files(tmp_path / "etc", tmp_path / "kubelet")
    ca = secrets.read_pair(secrets.StoredSecret.from_object(world.secret("ca")))
    (files.etc / "pki").mkdir(parents=True)
    (files.kubelet / "pki").mkdir(parents=True)
    (files.etc / CLIENT_CA).write_bytes(kubeconfig.pem_bundle([ca.cert]))
    current = files.kubelet / CLIENT_CURRENT
    (files.etc / KUBECONFIG).write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default-cluster\n  cluster:\n"
        f"    certificate-authority-data: {base64.b64encode(kubeconfig.pem_bundle([ca.cert])).decode()}\n"
        "    server: https://10.0.0.10:6443\ncontexts:\n- name: default-context\n  context:\n"
        "    cluster: default-cluster\n    user: default-auth\ncurrent-context: default-context\n"
        f"users:\n- name: default-auth\n  user:\n    client-certificate: {current}\n    client-key: {current}\n")
    key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    cert = certificates.sign_leaf(certificates.Identity(f"system:node:{node}", ("system:nodes",),
                                                        (certificates.CLIENT_AUTH,)),
                                  key.public_key(), ca, timedelta(days=365), world.now)
    files.write_client_certificate(kubeconfig.pem_bundle([cert]), key, world.now - timedelta(days=1))
    return files


def trusted(files: Files) -> tuple[int, int]:
    """The serials of the CA in the client CA file and in kubelet.conf."""
    client_ca = x509.load_pem_x509_certificate((files.etc / CLIENT_CA).read_bytes())
    return client_ca.serial_number, files.kubeconfig_cas()[0].serial_number


def issued_by(files: Files, ca_serial: int, world: World) -> bool:
    cert = files.client_certificate()
    for component in ("ca", "ca-previous", "ca-next"):
        secret = world.secrets.get(f"x-{component}")
        if secret is not None:
            ca = x509.load_pem_x509_certificates(base64.b64decode(secret["data"]["tls.crt"]))[0]
            if ca.serial_number == ca_serial:
                return certificates.signed_by(cert, ca)
    raise AssertionError(f"no CA of serial {ca_serial}")


@pytest.fixture
def world() -> World:
    return World(clusterpki(annotations={spec.GRACE_ANNOTATION: "30s"}, validity={"ca": "8760h"}))


def serial(world: World, component: str) -> int:
    return x509.load_pem_x509_certificates(world.data(component, "tls.crt"))[0].serial_number


async def test_a_worker_goes_through_a_ca_rotation_with_two_kubelet_restarts(world: World, tmp_path: Path):
    await world.reconcile()
    files = kubelet_files(tmp_path, world, "n1")
    api, restarts = FakeApi(world, "n1"), Restarts()
    agent = NodeAgent(lambda: api, "ns", "x", "n1", files, restarts, None)
    await agent.round()
    assert restarts.count == 0 and not api.csrs, "a node that runs the record already is left alone"
    reported = node_reports.parse(api.annotations[node_reports.ANNOTATION])
    assert reported.key == ("ns", "x") and reported.revision == nodes.revision(world_record(world))
    mtimes = {p: p.stat().st_mtime_ns for p in (files.etc / CLIENT_CA, files.etc / KUBECONFIG)}

    old = serial(world, "ca")
    world.annotate(**{requests.ROTATE: "ca"})
    await world.reconcile()
    new = serial(world, "ca-next")
    await agent.round()
    assert restarts.count == 0, "Preparing changes nothing a kubelet reads"
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    await world.reconcile(GRACE, nodes=reports(api))
    await world.reconcile(nodes=reports(api))
    assert world.status()["caRotation"]["phase"] == "Rotating"
    await world.reconcile(GRACE, nodes=reports(api))
    assert world.status()["caRotation"]["phase"] == "Rotating", "the node holds Completing up"
    await agent.round()
    assert restarts.count == 1 and len(api.csrs) == 1
    assert trusted(files) == (old, old) and issued_by(files, new, world)
    assert len(x509.load_pem_x509_certificates((files.kubelet / CLIENT_CURRENT).read_bytes())) == 2, \
        "the new client certificate carries the new CA cross-signed by the old, for apiservers that trust the old"

    await world.reconcile(nodes=reports(api))
    assert world.status()["caRotation"]["phase"] == "Completing"
    await world.reconcile(nodes=reports(api))
    await agent.round()
    assert restarts.count == 2 and len(api.csrs) == 1
    assert trusted(files) == (new, new) and issued_by(files, new, world)
    await world.reconcile(nodes=reports(api))
    assert world.status()["caRotation"]["phase"] == "Completed" and world.status()["nodesCurrent"] == "1/1"
    await agent.round()
    assert restarts.count == 2, "nothing more once Completed"


async def test_a_control_plane_node_leaves_the_ca_file_to_its_control_plane_agent(world: World, tmp_path: Path):
    await world.reconcile()
    files = kubelet_files(tmp_path, world, "cp")
    (files.etc / "pki" / "ca.key").write_bytes(b"the control-plane agent's")
    (files.etc / CLIENT_CA).write_bytes(b"the control-plane agent's")
    agent = NodeAgent(lambda: FakeApi(world, "cp"), "ns", "x", "cp", files, Restarts(), None)
    await agent.round()
    assert (files.etc / CLIENT_CA).read_bytes() == b"the control-plane agent's"


async def test_a_forged_trust_bundle_is_refused_and_nothing_is_written(world: World, tmp_path: Path):
    await world.reconcile()
    files = kubelet_files(tmp_path, world, "n1")
    before = {p: p.read_bytes() for p in (files.etc / CLIENT_CA, files.etc / KUBECONFIG)}
    other = World(clusterpki(name="y"))
    await other.reconcile()
    world.body["status"]["trustBundles"] = other.status()["trustBundles"]
    agent = NodeAgent(lambda: FakeApi(world, "n1"), "ns", "x", "n1", files, Restarts(), None)
    with pytest.raises(ValueError, match="not the ca bundle on record"):
        await agent.round()
    assert {p: p.read_bytes() for p in before} == before


def world_record(world: World) -> Record:
    return Record.from_status(world.status()["record"])


def reports(api: FakeApi) -> dict[str, str]:
    found = node_reports.parse(api.annotations.get(node_reports.ANNOTATION))
    return {api.node: found.revision} if found else {}


class FailsOnce(Restarts):
    async def restart(self, component: str) -> None:
        await super().restart(component)
        if self.count == 1:
            raise RestartFailed("restarting kubelet exited 1")


async def test_a_failed_restart_is_owed_even_by_a_new_agent_and_nothing_is_reported_until_it_succeeds(world: World, tmp_path: Path):
    await world.reconcile()
    files = kubelet_files(tmp_path, world, "n1")
    api, restarts = FakeApi(world, "n1"), FailsOnce()
    world.annotate(**{requests.ROTATE: "ca"})
    await world.reconcile()
    await world.reconcile(GRACE)
    await world.reconcile()  # Rotating: the node needs a client certificate from the new CA
    agent = NodeAgent(lambda: api, "ns", "x", "n1", files, restarts, None)
    with pytest.raises(RestartFailed):
        await agent.round()
    assert node_reports.ANNOTATION not in api.annotations, "the kubelet still runs its old certificate"
    again = NodeAgent(lambda: api, "ns", "x", "n1", files, restarts, None)  # the agent itself restarted
    await again.round()  # the files are right already, the restart is still owed (on disk)
    assert restarts.count == 2 and len(api.csrs) == 1
    assert node_reports.parse(api.annotations[node_reports.ANNOTATION]).revision == nodes.revision(world_record(world))


async def test_a_kubelet_conf_with_an_embedded_client_certificate_is_refused_in_words(world: World, tmp_path: Path):
    """Its certificate is one the agent cannot replace: it says so rather than report a kubelet current."""
    await world.reconcile()
    files = kubelet_files(tmp_path, world, "n1")
    conf = files.etc / KUBECONFIG
    conf.write_text(conf.read_text().replace("client-certificate: ", "client-certificate-data: x\n    old: "))
    agent = NodeAgent(lambda: FakeApi(world, "n1"), "ns", "x", "n1", files, Restarts(), None)
    with pytest.raises(UserError, match="must read the kubelet's client certificate and key from"):
        await agent.round()


def test_a_returned_certificate_must_lead_to_the_ca_the_apiservers_trust_now(world: World):
    old, new = (engine.build(spec.from_resource(clusterpki()), engine.Existing(), world.now).cas["ca"] for _ in range(2))
    key = keys.generate(spec.KeyAlgorithm.ECDSA_P256)
    leaf = certificates.sign_leaf(certificates.Identity("system:node:n1", ("system:nodes",), (certificates.CLIENT_AUTH,)),
                                  key.public_key(), new, timedelta(days=1), world.now)
    rotating = nodes.Wanted(trusted=old.cert, signer=new.cert, revision="r")
    assert not _chains([leaf], rotating), "no cross-signed certificate: apiservers that trust the old CA refuse it"
    assert _chains([leaf, certificates.cross_sign(new.cert, old, world.now)], rotating)
    assert _chains([leaf], nodes.Wanted(trusted=new.cert, signer=new.cert, revision="r"))
