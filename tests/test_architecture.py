"""The layout rules of the code base, checked on its source and its interfaces.

Imports that flow one way (no cycles among the modules, function-level imports
included), no private name used outside its module, a pipeline that uses only
the library's public API, every type a public function returns importable from
``svcca_dask``, functions short enough to read, and the formatter's layout.
"""

from __future__ import annotations

import ast
import inspect
import shutil
import subprocess
import typing
from pathlib import Path
from typing import Any

import svcca_dask

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("svcca_dask", "pipeline")


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


def _private_imports(name: str, path: Path) -> list[str]:
    """``_private`` names ``name`` imports from another module of the code base."""
    found = []
    for target, names in _imports(name, path):
        if target.split(".")[0] in PACKAGES and target != name:
            found += [f"{target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    return found


def test_no_private_name_crosses_a_module():
    # a name one module needs from another is part of that module's interface: it has a real name
    crossing = {n: _private_imports(n, p) for n, p in MODULES.items()}
    crossing = {n: v for n, v in crossing.items() if v}
    assert not crossing, f"private names imported across modules: {crossing}"


def test_the_private_import_check_sees_one(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from svcca_dask.stats import _secret\n")
    assert _private_imports("svcca_dask.probe", probe) == ["svcca_dask.stats._secret"]


def _classes(annotation: Any) -> set[type]:
    """The classes an annotation names (through unions, containers, Optional)."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return {annotation}
    found: set[type] = set()
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and origin.__module__ != "builtins":
        found.add(origin)
    for arg in typing.get_args(annotation):
        found |= _classes(arg)
    return found


def _returned_library_types() -> dict[str, set[type]]:
    """Library classes each public function (and public class's public method) returns."""
    owners: list[tuple[str, Any]] = []
    for name in svcca_dask.__all__:
        obj = getattr(svcca_dask, name)
        if inspect.isfunction(obj):
            owners.append((name, obj))
        elif inspect.isclass(obj):
            for attr, fn in vars(obj).items():
                fn = fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn
                if inspect.isfunction(fn) and not attr.startswith("_"):
                    owners.append((f"{name}.{attr}", fn))
    out = {}
    for name, fn in owners:
        ret = typing.get_type_hints(fn).get("return")
        types = {c for c in _classes(ret) if c.__module__.split(".")[0] == "svcca_dask"}
        if types:
            out[name] = types
    return out


def test_every_returned_type_is_importable_from_the_package():
    returned = _returned_library_types()
    assert "svcca" in returned and "open_layer" in returned  # the check sees return types
    missing = {
        name: sorted(c.__name__ for c in types if getattr(svcca_dask, c.__name__, None) is not c)
        for name, types in returned.items()
    }
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"public functions return types svcca_dask does not export: {missing}"


def test_the_code_is_formatted():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is in the test extra"
    done = subprocess.run(
        [ruff, "format", "--check", *PACKAGES, "tests", "benchmarks"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    skips = [
        str(p.relative_to(ROOT))
        for d in (*PACKAGES, "tests", "benchmarks")
        for p in (ROOT / d).rglob("*.py")
        if "fmt: skip" in p.read_text() and p.name != "test_architecture.py"
    ]
    assert not skips, f"lines packed past the formatter: {skips}"


def test_public_namespace_is_what_a_user_calls():
    missing = [n for n in svcca_dask.__all__ if not hasattr(svcca_dask, n)]
    assert not missing
    for layer in ("stats", "measures", "conv", "svd", "rules", "store"):
        assert hasattr(svcca_dask, layer)  # the layers underneath stay importable
