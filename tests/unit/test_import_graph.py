"""The package graph stays a layered DAG: no import cycle between modules, and the layering rule
deploy -> trainer -> {sampler, rewards, data} (sampler, rewards and data import nothing of each
other, nothing imports deploy). Imports are read with `ast` from the source, every one of them:
module level, inside functions and under `if TYPE_CHECKING:`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("sampler", "trainer", "rewards", "data", "deploy")
# What each package may import of the others (itself always).
ALLOWED = {
    "sampler": set(),
    "rewards": set(),
    "data": set(),
    "trainer": {"sampler", "rewards", "data"},
    "deploy": {"trainer", "sampler", "rewards", "data"},
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(root: Path) -> dict[str, Path]:
    return {
        _module_name(p, root): p for pkg in PACKAGES for p in sorted((root / pkg).rglob("*.py"))
    }


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The dotted names one import statement reads (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the project modules it imports}, for every module of PACKAGES under `root`."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        targets = {t for node in ast.walk(tree) for t in _imported(node, name, is_package)}
        # `from pkg import mod` names module pkg.mod when it exists, else an attribute of pkg.
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        pkg = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != pkg and other not in ALLOWED[pkg]:
                bad.append(f"{module} imports {target}")
    return bad


def test_the_reader_sees_function_level_and_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "sampler").mkdir()
    (tmp_path / "sampler" / "__init__.py").write_text("")
    (tmp_path / "sampler" / "a.py").write_text("def f():\n    from . import b\n")
    (tmp_path / "sampler" / "b.py").write_text("from sampler.a import f\nimport sampler.c\n")
    (tmp_path / "sampler" / "c.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["sampler.a"] == {"sampler", "sampler.b"}
    assert graph["sampler.b"] == {"sampler.a", "sampler.c"}
    assert cycles(graph) == [["sampler.a", "sampler.b"]]


def test_no_import_cycle_between_modules() -> None:
    found = cycles(import_graph(REPO))
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_layering_rule(pkg: str) -> None:
    graph = {m: t for m, t in import_graph(REPO).items() if m.split(".")[0] == pkg}
    assert graph, f"no modules found for {pkg}"
    assert layering_violations(graph) == []


def test_a_lower_package_importing_a_sibling_or_deploy_is_a_violation() -> None:
    graph = {
        "rewards.a": {"sampler.client"},
        "trainer.b": {"deploy.layout", "rewards.a"},
        "deploy.c": {"trainer.b"},
    }
    assert layering_violations(graph) == [
        "rewards.a imports sampler.client",
        "trainer.b imports deploy.layout",
    ]
