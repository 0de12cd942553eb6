"""No test asserts on how long something took: speed lives in bench/ (a loaded CI box makes a
wall-time bound flaky). This walks every test file's syntax tree for an `assert` that reads
`time.perf_counter()`, `time.time()` or `time.monotonic()`, directly or through a name assigned
from one (t0 = time.perf_counter(); ...; elapsed = time.perf_counter() - t0; assert elapsed < 5)."""

from __future__ import annotations

import ast
from pathlib import Path

CLOCKS = {"perf_counter", "time", "monotonic", "perf_counter_ns", "monotonic_ns", "time_ns"}


def _reads_clock(node: ast.AST, timed: set[str]) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in CLOCKS \
                and isinstance(n.func.value, ast.Name) and n.func.value.id == "time":
            return True
        if isinstance(n, ast.Name) and n.id in timed:
            return True
    return False


def clock_asserts(source: str) -> list[int]:
    """Line numbers of asserts that depend on the clock."""
    bad = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        timed: set[str] = set()
        for n in ast.walk(fn):  # names assigned from the clock, or from other such names
            if isinstance(n, ast.Assign) and _reads_clock(n.value, timed):
                timed |= {t.id for t in n.targets if isinstance(t, ast.Name)}
        bad += [n.lineno for n in ast.walk(fn) if isinstance(n, ast.Assert) and _reads_clock(n.test, timed)]
    return sorted(bad)


def test_the_checker_finds_a_timing_assert():
    src = "import time\ndef test_x():\n    t0 = time.perf_counter()\n    dt = time.perf_counter() - t0\n    assert dt < 5\n"
    assert clock_asserts(src) == [5]
    assert clock_asserts("import time\ndef test_y():\n    deadline = time.monotonic() + 5\n    assert True\n") == []


def test_no_test_asserts_on_the_clock():
    root = Path(__file__).parent
    found = {str(p.relative_to(root)): lines for p in sorted(root.rglob("test_*.py"))
             if (lines := clock_asserts(p.read_text()))}
    assert not found, f"timing assertions (move them to bench/): {found}"
