"""Every command fed bad input answers in one line (after the usage, for arguments that do not go together)
and a non-zero exit, never a traceback: run as a user runs it, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

UNREACHABLE = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def clusterpki(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterpki", *args], input=stdin, capture_output=True, text=True,
                          cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO / "operator"),
                                                     "KUBECONFIG": "/nonexistent/kubeconfig", **(env or {})})


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bad-input")
    rendered = tmp / "rendered"
    assert clusterpki("render", "-f", "examples/clusterpki.yaml", "--out", str(rendered)).returncode == 0
    corrupt = tmp / "corrupt"
    assert clusterpki("render", "-f", "examples/clusterpki.yaml", "--out", str(corrupt)).returncode == 0
    (corrupt / "pki" / "ca.key").write_text("not a key\n")
    (tmp / "unreachable.conf").write_text(UNREACHABLE)
    (tmp / "junk.yaml").write_text("kind: ClusterPKI\nspec: [\n")
    return {"rendered": rendered, "corrupt": corrupt, "unreachable": tmp / "unreachable.conf",
            "junk": tmp / "junk.yaml"}


FAILURES = {  # argv (with {placeholders} from files), the line's words
    "render, a file that is not there": (["render", "-f", "/nonexistent.yaml", "--out", "{rendered}"],
                                         "cannot read /nonexistent.yaml"),
    "render, YAML that is not": (["render", "-f", "{junk}", "--out", "{rendered}"], "is not valid YAML"),
    "render, a directory that cannot be made": (["render", "-f", "examples/clusterpki.yaml", "--out", "/proc/x/y"],
                                                "cannot write the PKI to /proc/x/y"),
    "render, a corrupt CA key": (["render", "-f", "examples/clusterpki.yaml", "--out", "{corrupt}"], "pki/ca.key"),
    "render, a member the spec lacks": (["render", "-f", "examples/clusterpki.yaml", "--out", "{rendered}",
                                         "--etcd-member", "nope"], "nope"),
    "check-expiration, a directory that is not there": (["check-expiration", "--dir", "/nonexistent"], "/nonexistent"),
    "renew, a kubeconfig that is not there": (["renew", "-n", "x", "y", "--kubeconfig", "/nope.conf"],
                                              "--kubeconfig /nope.conf: no such file"),
    "renew, KUBECONFIG that is not there": (["renew", "-n", "x", "y"], "KUBECONFIG=/nonexistent/kubeconfig"),
    "renew, a context the kubeconfig lacks": (["renew", "-n", "x", "y", "--kubeconfig", "{unreachable}", "--context",
                                               "nope"], "(context nope): context 'nope' is not in it (it has x)"),
    "renew, a server that does not answer": (["renew", "-n", "x", "y", "--kubeconfig", "{unreachable}"],
                                             "https://127.0.0.1:1"),
    "import, a directory that is not kubeadm's": (["import", "-n", "x", "y", "--dir", "/nonexistent",
                                                   "--kubeconfig", "{unreachable}"], "/nonexistent"),
    "import, a server that does not answer": (["import", "-n", "x", "y", "--dir", "{rendered}", "--kubeconfig",
                                               "{unreachable}"], "https://127.0.0.1:1"),
    "check-expiration, a server that does not answer": (["check-expiration", "-n", "x", "y", "--kubeconfig",
                                                         "{unreachable}"], "https://127.0.0.1:1"),
    "agent, a server that does not answer": (["agent", "-n", "x", "y", "--member", "m0", "--dir", "{rendered}",
                                              "--kubeconfig", "{unreachable}"], "https://127.0.0.1:1"),
    "node-agent, a kubeconfig that is not there": (["node-agent", "-n", "x", "y", "--node", "n", "--restart-command",
                                                    "true", "--kubeconfig", "/nope.conf"], "/nope.conf"),
    "agent-manifests, YAML that is not": (["agent-manifests", "-f", "{junk}", "-n", "x"], "is not valid YAML"),
    "run, a kubeconfig that is not there": (["run", "--kubeconfig", "/nope.conf"], "--kubeconfig /nope.conf"),
}

USAGE = {  # arguments that do not go together: the usage, then one line, exit 2
    "no command": ([], "required"),
    "check-expiration, both sources": (["check-expiration", "--dir", "{rendered}", "-n", "x", "y"], "not allowed"),
    "check-expiration, a namespace without a name": (["check-expiration", "-n", "x"], "-n NAMESPACE NAME"),
    "agent, a command restarter without its command": (["agent", "-n", "x", "y", "--member", "m0", "--restart",
                                                        "command"], "--restart-command"),
    "agent, a component it does not know": (["agent", "-n", "x", "y", "--member", "m0", "--component", "kubelett"],
                                            "kubelett"),
    "agent-manifests, no namespace anywhere": (["agent-manifests", "-f", "examples/clusterpki.yaml"], "-n"),
    "run, a CSR policy that is not NAMESPACE/NAME": (["run", "--csr-policy", "x", "--kubeconfig", "{unreachable}"],
                                                    "NAMESPACE/NAME"),
    "an unknown flag": (["render", "-f", "x", "--out", "y", "--outt", "x"], "clusterpki render: error: unrecognized"),
}


def _argv(argv: list[str], files: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]


@pytest.mark.parametrize("case", FAILURES)
def test_a_failure_is_one_line_and_exit_1(case, files):
    argv, words = FAILURES[case]
    done = clusterpki(*_argv(argv, files))
    assert "Traceback" not in done.stderr and done.returncode == 1, (done.returncode, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("clusterpki: error: "), done.stderr
    assert _argv([words], files)[0] in done.stderr, done.stderr
    assert "not-a-real-token" not in done.stderr


@pytest.mark.parametrize("case", USAGE)
def test_arguments_that_do_not_go_together_are_the_usage_a_line_and_exit_2(case, files):
    argv, words = USAGE[case]
    done = clusterpki(*_argv(argv, files))
    said = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and done.returncode == 2, (done.returncode, done.stderr)
    assert said[0].startswith("usage: clusterpki") and said[-1].startswith("clusterpki") and words in said[-1], said


def test_version_and_a_document_on_standard_input(files, tmp_path):
    done = clusterpki("--version")
    assert (done.returncode, done.stdout.strip()) == (0, "clusterpki 0.1.0")
    piped = clusterpki("render", "-f", "-", "--out", str(tmp_path / "out"),
                       stdin=(REPO / "examples" / "clusterpki.yaml").read_text())
    assert piped.returncode == 0 and (tmp_path / "out" / "pki" / "ca.crt").exists(), piped.stderr
    junk = clusterpki("render", "-f", "-", "--out", str(tmp_path / "junk"), stdin="kind: [\n")
    assert junk.returncode == 1 and junk.stderr == "clusterpki: error: standard input is not valid YAML at line 2\n", \
        junk.stderr
