"""The package layers import one way only, and no module imports itself back through others.

Layers, bottom up: core < families < models < kernels < runtime < export < (batch, serve, eval,
train) < cli. A module may import its own layer or any layer below it, at module level or
inside a function alike (a lazy import is still a dependency); only a module's
`if __name__ == "__main__":` block, an entry point that nothing imports, may call the CLI. The oracle is the source
itself: every `import` statement of every module, read with `ast`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "core": 0, "families": 1, "models": 2, "kernels": 3, "runtime": 4, "export": 5,
    "batch": 6, "serve": 6, "eval": 6, "train": 6, "cli": 7,
}
# The large files are data (the demo bundle); source files must stay readable.
MAX_LINES = 620  # "about 600": past it, split the file


def _modules() -> dict[str, Path]:
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    mods: dict[str, Path] = {}
    for pkg, folder in dirs.items():
        for f in (ROOT / folder).glob("*.py"):
            name = pkg if f.stem == "__init__" else f"{pkg}.{f.stem}"
            mods[name] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The v2m modules `name` imports (a package's __init__ importing its own modules excluded)."""
    base = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    tree = ast.parse(path.read_text())
    main_block = lambda n: isinstance(n, ast.If) and ast.unparse(n.test).replace("'", '"') == '__name__ == "__main__"'
    tree.body = [n for n in tree.body if not main_block(n)]  # a program's entry point: nothing imports it
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")[: len(base.split(".")) - node.level + 1]
                mod = ".".join(parts) + (f".{node.module}" if node.module else "")
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in mods and t != name}
    if path.stem == "__init__":
        out = {t for t in out if not t.startswith(name + ".")}
    return out


def _layer(module: str) -> int:
    top = module.split(".")[1]
    if top not in LAYERS:
        pytest.fail(f"package v2m.{top} has no layer: add it to LAYERS (and to the docs' layout)")
    return LAYERS[top]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, mods) for name, path in mods.items()}


def test_no_upward_import(graph):
    bad = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if _layer(b) > _layer(a))
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycle(graph):
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_graph_sees_the_tree(graph):
    """The walk is not vacuous: it finds the core's known dependencies."""
    assert "v2m.core.errors" in graph["v2m.runtime.pipeline"] | graph["v2m.core.bundle"]
    assert "v2m.runtime.pipeline" in set().union(*graph.values())


def test_source_files_stay_small():
    big = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _modules().values()
           if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not big, f"files over {MAX_LINES} lines: {big}"
