"""The package layering, checked on the source: every ``import`` of every module under ``moesim/``
(module level and inside functions) parsed with ``ast``, so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "moesim"


def _module_name(path: Path) -> str:
    parts = ("moesim", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "__pycache__" not in p.parts}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """moesim modules ``name`` imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m == "moesim" or m.startswith("moesim.")}


def _package(module: str) -> str:
    """The layer a module belongs to: ``moesim.cost.model`` -> ``moesim.cost``; ``moesim.memory`` itself."""
    return ".".join(module.split(".")[:2])


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for src, targets in graph.items():
        for dst in targets:
            a, b = _package(src), _package(dst)
            if a != b and b != "moesim" and a != "moesim":
                edges.setdefault(a, set()).add(b)
    return edges


def _importers(graph: dict[str, set[str]], src_pkg: str, dst_pkg: str) -> list[str]:
    return sorted(f"{m} -> {t}" for m, ts in graph.items() if _package(m) == src_pkg
                  for t in ts if _package(t) == dst_pkg)


def test_the_parser_sees_lazy_imports(tmp_path: Path) -> None:
    """A function-level import is an edge like any other (the check would be blind without it)."""
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from moesim.calibration.tables import load_calibration\n"
                    "    import moesim.cli\n")
    found = _imports("moesim.cost.probe", path, {"moesim.calibration.tables", "moesim.cli"})
    assert found == {"moesim.calibration.tables", "moesim.cli"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_package_cycles(graph: dict[str, set[str]]) -> None:
    cycles = _cycles(_package_edges(graph))
    detail = [" <-> ".join(c) + ": " + "; ".join(
        e for a in c for b in c if a != b for e in _importers(graph, a, b)) for c in cycles]
    assert not cycles, detail


def test_reports_never_import_the_cli(graph: dict[str, set[str]]) -> None:
    assert _importers(graph, "moesim.reports", "moesim.cli") == []


def test_sweeps_sit_below_the_reports_and_the_cli(graph: dict[str, set[str]]) -> None:
    """The report runs its cells through the sweep machinery, so sweeps never import reports (or cli)."""
    assert _importers(graph, "moesim.sweeps", "moesim.cli") == []
    assert _importers(graph, "moesim.sweeps", "moesim.reports") == []


def test_cost_is_below_the_calibration_tools(graph: dict[str, set[str]]) -> None:
    assert _importers(graph, "moesim.cost", "moesim.calibration") == []


def test_the_simulator_does_not_import_the_planners(graph: dict[str, set[str]]) -> None:
    assert _importers(graph, "moesim.sim", "moesim.planners") == []


def test_no_module_cycles_inside_a_package(graph: dict[str, set[str]]) -> None:
    inside = {m: {t for t in ts if _package(t) == _package(m) and t != m} for m, ts in graph.items()}
    assert _cycles(inside) == []
