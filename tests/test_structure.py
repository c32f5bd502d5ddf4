"""The package's shape: its import graph has no cycle, the data path imports downward only, and
neither C nor another module calls a private name of ours."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "stud"
MODULES = sorted(p.stem for p in PKG.glob("*.py"))
# Lower layers never import higher ones: the data path knows nothing of the process around it.
LAYERS = [
    {"relay"},                               # a connection
    {"policy"},                              # what a connection calls back
    {"worker"},                              # the worker process
    {"arbiter"},                             # the master process
    {"cli"},                                 # the command
]


def imports_of(module: str) -> set[str]:
    """The stud modules module imports, anywhere in it (functions and TYPE_CHECKING too)."""
    tree = ast.parse((PKG / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "stud":
                out |= {a.name for a in node.names}
            elif node.module.startswith("stud."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("stud.")}
    return {m for m in out if m in MODULES and m != module}


GRAPH = {m: imports_of(m) for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_were_read():
    assert {"relay", "config", "log", "proxyproto"} <= GRAPH["policy"]
    assert "worker" in GRAPH["arbiter"]


def test_no_import_cycle():
    assert find_cycle(GRAPH) is None, f"import cycle: {' -> '.join(find_cycle(GRAPH))}"


@pytest.mark.parametrize("low", range(len(LAYERS)))
def test_the_data_path_imports_downward_only(low):
    above = set().union(*LAYERS[low + 1:])
    for module in LAYERS[low]:
        assert not GRAPH[module] & above, f"{module} imports {GRAPH[module] & above}"


def test_no_private_name_is_used_across_modules():
    """`module._name` of one of ours, from another module (a test may; the package not)."""
    offenders = []
    for module in MODULES:
        text = (PKG / f"{module}.py").read_text()
        for other in MODULES:
            if other != module:
                offenders += [f"{module}: {m}" for m in
                              re.findall(rf"\b{other}\._[a-z]\w*", text)]
    assert not offenders


def test_c_calls_no_private_python_name():
    """The names C looks up or calls on Python objects are public ones."""
    for path in PKG.glob("*.c"):
        text = path.read_text()
        interned = re.findall(r'\{&s_\w+,\s*"(\w+)"\}', text)
        called = re.findall(r'PyObject_(?:CallMethod|GetAttrString)\w*\([^,]+,\s*"(\w+)"', text)
        assert all(not n.startswith("_") for n in interned + called), path.name
