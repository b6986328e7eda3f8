"""The layout rules of the code base, checked on its source.

One concept per module (none over 700 lines), imports that flow one way (no
cycles among the modules, function-level imports included), a pipeline that
uses only the library's public API, and a short public namespace.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import svcca_dask

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("svcca_dask", "pipeline")
MAX_LINES = 700


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """Every import of a module (at any depth): (absolute module, names imported from it)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            # `from . import x` imports the module x, not the names of the package
            submodules = [n for n in names if f"{target}.{n}" in MODULES]
            found += [(f"{target}.{n}", []) for n in submodules]
            if len(submodules) < len(names):
                found.append((target, [n for n in names if n not in submodules]))
    return found


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for target, _ in _imports(name, path):
            # a module's own packages are imported before it: not an edge of its own
            if target in MODULES and not (name == target or name.startswith(target + ".")):
                graph[name].add(target)
    return graph


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_one_concept(name):
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by concept"


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (a path back to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:  # a back edge: the cycle is on the stack
                return [*stack[stack.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    cycle = _find_cycle(_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_cycles():
    # the check must see a cycle, or the test above proves nothing
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert "svcca_dask.stats" in _edges()["svcca_dask.measures"]  # edges are found


def test_pipeline_uses_the_public_api_only():
    for name, path in MODULES.items():
        if not name.startswith("pipeline"):
            continue
        for target, names in _imports(name, path):
            if not target.startswith("svcca_dask"):
                continue
            private = [p for p in target.split(".") if p.startswith("_")]
            assert not private, f"{name} imports the private module {target}"
            hidden = [n for n in names if n.startswith("_")]
            assert not hidden, f"{name} imports private names {hidden} from {target}"


def test_public_namespace_is_what_a_user_calls():
    assert len(svcca_dask.__all__) <= 33  # the input layer and the accumulator (issue 24) added 4
    missing = [n for n in svcca_dask.__all__ if not hasattr(svcca_dask, n)]
    assert not missing
    for layer in ("stats", "measures", "conv", "svd", "rules", "store"):
        assert hasattr(svcca_dask, layer)  # the layers underneath stay importable


def test_readme_is_a_guide():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines < 300, f"README.md has {lines} lines; history goes to benchmarks/RESULTS.md"
