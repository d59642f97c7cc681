"""``clusterpki render`` and ``check-expiration --dir``: what they write, keep, refuse and print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clusterpki.kubeadm import writer
from cryptography import x509

from tests.helpers import EXAMPLE, REPO, document, render, write_document


def serials(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): x509.load_pem_x509_certificate(p.read_bytes()).serial_number
            for p in out.rglob("*.crt")}


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mode & 0o777)
            for p in out.rglob("*") if p.is_file()}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterpki", *args], capture_output=True, text=True, cwd=cwd)


def test_layout_is_kubeadm_s(render_into):
    out = render_into(document("x"))
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted([
        "admin.conf", "controller-manager.conf", "scheduler.conf", "kube-proxy.conf", "kubelet.conf",
        *[f"pki/{n}.{e}" for n in ("ca", "apiserver", "apiserver-kubelet-client", "apiserver-etcd-client",
                                   "front-proxy-ca", "front-proxy-client") for e in ("crt", "key")],
        "pki/sa.key", "pki/sa.pub",
        *[f"pki/etcd/{n}.{e}" for n in ("ca", "server", "peer", "healthcheck-client") for e in ("crt", "key")],
    ])


def test_keys_are_0600_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        assert render(tmp_path, tmp_path / "out", document("x")) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out/pki/ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "out/admin.conf").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "out/pki/ca.crt").stat().st_mode & 0o777 == 0o644


def test_a_second_render_changes_nothing(render_into, capsys):
    out = render_into(document("x"))
    before = snapshot(out)
    capsys.readouterr()
    render_into(document("x"))
    assert snapshot(out) == before
    assert "Wrote 0 files" in capsys.readouterr().out


def test_a_san_change_reissues_only_the_apiserver(render_into, capsys):
    out = render_into(document("x"))
    before = serials(out)
    capsys.readouterr()
    render_into(document("x", apiServer={"certSANs": ["new.example.com"]}))
    after = serials(out)
    assert {k for k in before if before[k] != after[k]} == {"pki/apiserver.crt"}
    assert "apiserver                 re-issued (it does not match the spec: dns names" in capsys.readouterr().out


def test_bring_your_own_ca(tmp_path, render_into):
    theirs = render_into(document("theirs"), tmp_path / "theirs")
    out = tmp_path / "mine"
    (out / "pki/etcd").mkdir(parents=True)
    for name in ("ca.crt", "ca.key", "etcd/ca.crt", "etcd/ca.key"):
        (out / "pki" / name).write_bytes((theirs / "pki" / name).read_bytes())
    (out / "pki/ca.key").chmod(0o640)  # a brought-in key is not rewritten, not even its mode
    render_into(document("mine"), out)
    for name in ("ca.crt", "ca.key", "etcd/ca.crt", "etcd/ca.key"):
        assert (out / "pki" / name).read_bytes() == (theirs / "pki" / name).read_bytes()
    assert (out / "pki/ca.key").stat().st_mode & 0o777 == 0o640
    assert (out / "pki/front-proxy-ca.crt").read_bytes() != (theirs / "pki/front-proxy-ca.crt").read_bytes()
    ca = x509.load_pem_x509_certificate((theirs / "pki/ca.crt").read_bytes())
    x509.load_pem_x509_certificate((out / "pki/apiserver.crt").read_bytes()).verify_directly_issued_by(ca)


def test_force_reissues_leaves_but_keeps_cas_and_sa_key(render_into):
    out = render_into(document("x"))
    before, sa = serials(out), (out / "pki/sa.key").read_bytes()
    render_into(document("x"), None, "--force")
    after = serials(out)
    cas = {"pki/ca.crt", "pki/etcd/ca.crt", "pki/front-proxy-ca.crt"}
    assert {k for k in before if before[k] == after[k]} == cas
    assert (out / "pki/sa.key").read_bytes() == sa


def test_a_corrupt_leaf_is_reissued(render_into, capsys):
    out = render_into(document("x"))
    (out / "pki/apiserver-etcd-client.crt").write_text("garbage")
    capsys.readouterr()
    render_into(document("x"))
    assert "apiserver-etcd-client     re-issued (it cannot be read (apiserver-etcd-client.crt is not a PEM " \
           "certificate))" in capsys.readouterr().out
    x509.load_pem_x509_certificate((out / "pki/apiserver-etcd-client.crt").read_bytes())


def test_etcd_member_selects_the_pair(render_into):
    body = document("x", etcd={"members": [{"name": "a"}, {"name": "b"}]})
    out = render_into(body, None, "--etcd-member", "b")
    cert = x509.load_pem_x509_certificate((out / "pki/etcd/server.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=b"
    render_into(body)  # the default member is the first: the pair is re-issued for it
    cert = x509.load_pem_x509_certificate((out / "pki/etcd/peer.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=a"


@pytest.mark.parametrize("prepare, message", [
    (lambda out: (out / "pki/ca.key").unlink(),
     "pki/ca.crt exists without pki/ca.key: a CA needs both its certificate and its key"),
    (lambda out: (out / "pki/ca.key").write_bytes((out / "pki/front-proxy-ca.key").read_bytes()),
     "the ca CA in pki/ca.crt cannot be used: its private key does not match its certificate; "
     "it is never replaced automatically"),
    (lambda out: (out / "pki/etcd/ca.crt").write_text("not pem"),
     "the etcd-ca CA in pki/etcd/ca.crt cannot be read: ca.crt is not a PEM certificate"),
    (lambda out: (out / "pki/sa.key").write_text("not pem"),
     "pki/sa.key cannot be read: not an unencrypted PEM private key"),
])
def test_an_unusable_ca_is_never_replaced(tmp_path, render_into, capsys, prepare, message):
    out = render_into(document("x"))
    prepare(out)
    before = snapshot(out)
    capsys.readouterr()
    assert render(tmp_path, out, document("x")) == 1
    err = capsys.readouterr().err
    assert err.startswith("clusterpki: error: ") and message in err
    assert snapshot(out) == before


def test_a_bad_spec_writes_nothing_and_names_every_field(tmp_path):
    spec_file = write_document(tmp_path / "bad.yaml", document(
        "x", serviceCIDR="10.0.0.0/33", keyAlgorithm="RSA-1024"))
    result = cli("render", "-f", str(spec_file), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"clusterpki: error: {spec_file} is not a valid ClusterPKI: spec.serviceCIDR: '10.0.0.0/33' is not a CIDR; "
        "spec.keyAlgorithm: 'RSA-1024' is not one of RSA-2048, RSA-3072, RSA-4096, ECDSA-P256, ECDSA-P384\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    (None, "cannot read {f}: No such file or directory"),
    ("a: [unclosed", "{f} is not valid YAML at line 2"),
    ("kind: ConfigMap\n", "{f} must hold exactly one ClusterPKI document, it holds 0"),
])
def test_file_errors_are_one_sentence_without_traceback(tmp_path, content, message):
    spec_file = tmp_path / "in.yaml"
    if content is not None:
        spec_file.write_text(content)
    result = cli("render", "-f", str(spec_file), "--out", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr == f"clusterpki: error: {message.format(f=spec_file)}\n"


def test_unknown_member_is_an_error(tmp_path, capsys):
    assert render(tmp_path, tmp_path / "out", document("x"), "--etcd-member", "nope") == 1
    assert "etcd member 'nope' is not in spec.etcd.members (etcd-0)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failed_write_leaves_the_directory_as_it_was(tmp_path, render_into, monkeypatch, capsys):
    out = render_into(document("x"))
    (out / "pki/apiserver.crt").unlink()
    (out / "admin.conf").write_text("broken")
    before = snapshot(out)
    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(writer.os, "replace", failing_replace)
    assert render(tmp_path, out, document("x", apiServer={"certSANs": ["a.example"]})) == 1
    assert capsys.readouterr().err.endswith("No space left on device; nothing was changed\n")
    monkeypatch.undo()
    assert snapshot(out) == before
    assert not list(out.glob(".clusterpki-*"))


def test_a_failed_first_render_leaves_no_directory(tmp_path, monkeypatch):
    def failing_replace(src, dst):
        raise OSError(13, "Permission denied")

    monkeypatch.setattr(writer.os, "replace", failing_replace)
    assert render(tmp_path, tmp_path / "new/out", document("x")) == 1
    assert not (tmp_path / "new").exists()


def test_check_expiration_table_and_json(tmp_path, render_into):
    out = render_into(document("x", validity={"certificate": "720h"}))
    table = cli("check-expiration", "--dir", str(out))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["CERTIFICATE", "EXPIRES", "RESIDUAL", "TIME", "CERTIFICATE", "AUTHORITY"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"admin.conf", "apiserver", "apiserver-etcd-client", "apiserver-kubelet-client",
                         "controller-manager.conf", "etcd-healthcheck-client", "etcd-peer", "etcd-server",
                         "front-proxy-client", "kube-proxy.conf", "scheduler.conf", "ca", "etcd-ca",
                         "front-proxy-ca"}
    assert rows["apiserver"][-2:] == ["29d", "ca"]  # 30 days less the seconds since issuing
    assert rows["etcd-server"][-1] == "etcd-ca" and rows["front-proxy-client"][-1] == "front-proxy-ca"
    assert rows["ca"][-2:] == ["9y", "(self-signed)"]

    as_json = cli("check-expiration", "--dir", str(out), "-o", "json")
    items = {i["name"]: i for i in json.loads(as_json.stdout)["certificates"]}
    assert items["admin.conf"]["certificateAuthority"] == "ca"
    assert 30 * 86400 - 60 < items["admin.conf"]["residualSeconds"] <= 30 * 86400
    assert items["ca"]["missing"] is False


def test_check_expiration_marks_missing_files_and_refuses_an_empty_dir(tmp_path, render_into):
    out = render_into(document("x"))
    (out / "pki/etcd/peer.crt").unlink()
    result = cli("check-expiration", "--dir", str(out))
    assert [line for line in result.stdout.splitlines() if line.startswith("etcd-peer")][0].split()[1:] == \
        ["<missing>", "<missing>", "etcd-ca"]
    empty = cli("check-expiration", "--dir", str(tmp_path))
    assert empty.returncode == 1
    assert empty.stderr == f"clusterpki: error: {tmp_path} holds no certificates in kubeadm's layout " \
                           "(pki/ca.crt, admin.conf, ...)\n"


def test_the_readme_commands_work_on_the_example(tmp_path):
    result = cli("render", "-f", str(EXAMPLE), "--out", "./pki", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Wrote 27 files of ClusterPKI 'example' to ./pki (etcd member cp-0)." in result.stdout
    assert cli("check-expiration", "--dir", "./pki", cwd=tmp_path).returncode == 0
    assert REPO.joinpath("README.md").read_text().count("clusterpki render -f examples/clusterpki.yaml --out ./pki")


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci/run").read_text().splitlines()
    command = ci[ci.index("# The README's test command:") + 1]
    assert f"```sh\n{command}\n```" in (REPO / "README.md").read_text()


def test_every_member_in_one_run_shares_the_cas_and_the_service_account_key(tmp_path):
    """``render --all-members``: one directory per etcd member, each with its own etcd pairs and the same
    CAs and sa.key (tokens one apiserver signs, the others verify); a second run changes nothing, and a
    member directory of another cluster is refused, untouched."""
    from clusterpki.kubeadm.render import shared_files

    spec_file = write_document(tmp_path / "pki.yaml", document("ha", etcd={"members": [
        {"name": "m0", "ips": ["192.0.2.10"]}, {"name": "m1", "ips": ["192.0.2.11"]}]}))
    done = cli("render", "-f", str(spec_file), "--out", str(tmp_path / "out"), "--all-members",
               cwd=REPO)
    assert done.returncode == 0, done.stderr
    first, second = snapshot(tmp_path / "out" / "m0"), snapshot(tmp_path / "out" / "m1")
    said = done.stdout.split("Wrote ")[1:]
    assert [line.split(" files")[0] for line in said] == [str(len(first)), str(len(second))], \
        "each member's count is every file written into it, the shared ones included"
    assert "ca                        copied (from m0)" in done.stdout.split("(etcd member m0).")[1]
    assert all(first[f] == second[f] for f in shared_files()), "the same CAs and key, modes included"
    server = x509.load_pem_x509_certificate(second["pki/etcd/server.crt"][0])
    ips = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "192.0.2.11" in [str(ip) for ip in ips.get_values_for_type(x509.IPAddress)], "m1's own etcd pair"
    assert second["pki/etcd/server.crt"] != first["pki/etcd/server.crt"]
    again = cli("render", "-f", str(spec_file), "--out", str(tmp_path / "out"), "--all-members", cwd=REPO)
    assert again.returncode == 0 and snapshot(tmp_path / "out" / "m1") == second

    other = tmp_path / "other"
    assert cli("render", "-f", str(spec_file), "--out", str(other / "m0"), cwd=REPO).returncode == 0
    (other / "m1" / "pki").mkdir(parents=True)
    (other / "m1" / "pki" / "ca.crt").write_bytes(first["pki/ca.crt"][0])
    refused = cli("render", "-f", str(spec_file), "--out", str(other), "--all-members", cwd=REPO)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "share their CAs" in refused.stderr
    assert [p.name for p in (other / "m1").rglob("*") if p.is_file()] == ["ca.crt"]
    both = cli("render", "-f", str(spec_file), "--out", str(other), "--all-members", "--etcd-member", "m0", cwd=REPO)
    assert both.returncode == 2


def test_members_with_an_advertise_address_are_named_by_the_apiserver_and_reached_by_their_own_controllers(tmp_path):
    """kubeadm's localAPIEndpoint: the apiserver certificate names each member and its address, and a
    member's controller-manager.conf and scheduler.conf reach its own apiserver; admin.conf and
    kube-proxy.conf stay on controlPlaneEndpoint. Checked with the openssl CLI."""
    import yaml

    spec_file = write_document(tmp_path / "pki.yaml", document(
        "ha", controlPlaneEndpoint="lb.example.com:8443", etcd={"members": [
            {"name": "cp-0", "ips": ["192.0.2.10"], "advertiseAddress": "192.0.2.10"},
            {"name": "cp-1", "ips": ["192.0.2.11"], "advertiseAddress": "[2001:db8::11]:7443"}]}))
    done = cli("render", "-f", str(spec_file), "--out", str(tmp_path / "out"), "--all-members", cwd=REPO)
    assert done.returncode == 0, done.stderr
    text = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                           str(tmp_path / "out" / "cp-1" / "pki" / "apiserver.crt")],
                          capture_output=True, text=True, check=True).stdout
    for name in ("DNS:cp-0", "DNS:cp-1", "IP Address:192.0.2.10", "IP Address:2001:DB8:0:0:0:0:0:11",
                 "DNS:lb.example.com"):
        assert name in text, (name, text)

    def server(member: str, conf: str) -> str:
        return yaml.safe_load((tmp_path / "out" / member / conf).read_text())["clusters"][0]["cluster"]["server"]
    assert server("cp-0", "controller-manager.conf") == server("cp-0", "scheduler.conf") == "https://192.0.2.10:6443"
    assert server("cp-1", "controller-manager.conf") == "https://[2001:db8::11]:7443"
    assert server("cp-1", "admin.conf") == server("cp-1", "kube-proxy.conf") == "https://lb.example.com:8443"


@pytest.mark.parametrize("value, problem", [("api.example.com", "is not an IP address"),
                                            ("192.0.2.1:99999", "is not a number from 1 to 65535"),
                                            (["192.0.2.1"], "must be a string")])
def test_an_advertise_address_that_is_not_ip_and_port_is_a_spec_error(tmp_path, value, problem):
    spec_file = write_document(tmp_path / "pki.yaml", document("x", etcd={"members": [
        {"name": "m0", "advertiseAddress": value}]}))
    done = cli("render", "-f", str(spec_file), "--out", str(tmp_path / "out"), cwd=REPO)
    assert done.returncode == 1 and "spec.etcd.members[0].advertiseAddress" in done.stderr and problem in done.stderr, \
        done.stderr
    assert not (tmp_path / "out").exists()
