"""The package's architecture, as rules a change cannot break unnoticed.

- The PKI engine (``clusterpki.pki``) knows nothing of Kubernetes: importing all of it loads no
  ``kopf``, ``kubernetes`` or ``aiohttp``, and it imports nothing else of clusterpki.
- Imports point downwards only: errors < pki < kubeadm, kube < controller, csr, agent < runtime < cli.
  Packages on one floor do not import each other (the controller and the CSR handlers share
  nothing but ``kube``).
- No module imports, directly or through others, a module that imports it back.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "operator" / "clusterpki"
FLOORS = {"errors": 0, "pki": 1, "kubeadm": 2, "kube": 2, "controller": 3, "csr": 3, "agent": 3, "runtime": 4, "cli": 5,
          "__main__": 6}
KUBERNETES = ("kopf", "kubernetes", "aiohttp", "prometheus_client")


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: resolved against the importing package
                base = ".".join(module.split(".")[:-node.level] + [node.module])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _internal(names: set[str], modules: dict[str, Path]) -> set[str]:
    return {name for name in names if name in modules and name != "clusterpki"}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_room_has_a_floor():
    rooms = {_room(m) for m in _modules()} - {""}
    assert rooms == set(FLOORS), f"give each new subpackage or top module a floor: {rooms ^ set(FLOORS)}"


def test_the_engine_imports_nothing_of_kubernetes_nor_of_the_rest():
    modules = _modules()
    for module, path in modules.items():
        if _room(module) != "pki":
            continue
        imports = _imports(path, module)
        assert not {n for n in imports if n.split(".")[0] in KUBERNETES}, module
        assert all(_room(n) == "pki" for n in _internal(imports, modules)), module


def test_loading_the_whole_engine_loads_no_kubernetes_library():
    modules = [m for m in _modules() if _room(m) == "pki"]
    code = (f"import sys\nimport {', '.join(modules)}\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {KUBERNETES!r}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_imports_point_downwards():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        room = _room(module)
        for target in _internal(_imports(path, module), modules):
            other = _room(target)
            if other == room or other == "":
                continue
            if FLOORS[other] >= FLOORS[room]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_module_imports_itself_back():
    modules = _modules()
    graph = {m: _internal(_imports(p, m), modules) - {m} for m, p in modules.items()}
    graph = {m: {t for t in targets if not m.startswith(f"{t}.")} for m, targets in graph.items()}  # a package's face
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
