"""bench/bench_serve.py runs and writes the rows docs/performance.md's serving table is copied from (plumbing, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_serve.py"


def test_bench_serve_rows(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--presets", "tiny", "--concurrency", "1,2", "--requests", "2",
                           "--modes", "local", "--steps", "2", "--duration", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "serve.jsonl").read_text().splitlines()]
    assert [(r["mode"], r["preset"], r["concurrency"]) for r in rows] == [("local", "tiny", 1), ("local", "tiny", 2)]
    for r in rows:
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["requests_per_s"] > 0 and r["n"] == 2
        assert 1 <= r["mean_batch"] <= 2 and r["device"].startswith("cpu") and r["commit"] and r["fastapi"]
