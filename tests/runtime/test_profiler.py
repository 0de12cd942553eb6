"""The profiler: report schema, Chrome trace, PNG plot, CLI wiring (CPU)."""

import json
import subprocess
import sys

import pytest

from v2m.runtime.cli import main
from v2m.runtime.profiler import REPORT_SCHEMA, Profiler, format_report, plot_report

REPORT_KEYS = {
    "schema", "device", "device_type", "step_timer", "versions", "commit", "date", "preset", "backend",
    "precision", "sampler_path", "shapes", "runs", "stages", "total_ms", "steps", "step_summary_ms",
    "peak_gpu_mem_bytes", "meta",
}


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    from v2m.runtime import Pipeline

    return Pipeline.from_pretrained(tiny_bundle, backend="torch", device="cpu", precision="fp32")


def _check_report(rep, steps, runs=1):
    assert REPORT_KEYS <= set(rep)
    assert rep["schema"] == REPORT_SCHEMA and rep["runs"] == runs and rep["step_timer"] == "perf_counter"
    assert rep["device"].startswith("cpu") and rep["preset"] == "tiny" and rep["backend"] == "torch"
    assert rep["shapes"]["steps"] == steps and rep["shapes"]["B"] == 1 and rep["shapes"]["L"] > 0 and rep["shapes"]["S"] > 0
    assert {"decode", "encode", "curve", "text", "sampler", "vae"} <= set(rep["stages"])
    for s in rep["stages"].values():
        assert {"median_ms", "p10_ms", "p90_ms", "runs_ms"} <= set(s) and len(s["runs_ms"]) == runs
    assert len(rep["steps"]) == steps
    assert [s["index"] for s in rep["steps"]] == list(range(steps))
    assert all(s["ms"] > 0 and len(s["runs_ms"]) == runs for s in rep["steps"])
    assert rep["step_summary_ms"]["n"] == steps * runs
    assert rep["versions"]["numpy"] and rep["versions"]["torch"]
    assert rep["peak_gpu_mem_bytes"] is None  # CPU
    json.dumps(rep)  # JSON-able


def test_report_96_steps(pipe, short_video, tmp_path):
    prof = Profiler(device="cpu", trace=True)
    res = pipe.generate(short_video.path, "x", seed=1, profiler=prof)
    assert len(res.step_ms) == 96 and res.step_ms == prof.runs[0].step_ms
    rep = prof.report()
    _check_report(rep, 96)
    sampler_ms = rep["stages"]["sampler"]["median_ms"]
    assert 0.5 * sampler_ms <= sum(res.step_ms) <= 1.01 * sampler_ms
    path = prof.write_report(tmp_path / "r.json")
    assert json.loads(path.read_text())["steps"][95]["index"] == 95
    assert "sampler step (perf_counter)" in format_report(rep)


def test_chrome_trace_and_plot(pipe, short_video, tmp_path):
    prof = Profiler(device="cpu", trace=True)
    for seed in (1, 2):
        pipe.generate(short_video.path, "x", seed=seed, steps=5, profiler=prof)
    rep = prof.report()
    _check_report(rep, 5, runs=2)
    trace = json.loads(prof.write_trace(tmp_path / "t.json").read_text())
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert all({"name", "ph", "ts", "dur", "pid", "tid"} <= set(e) for e in xs)
    names = {e["name"] for e in xs}
    assert {"encode", "curve", "text", "sampler", "vae", "step 0", "step 4"} <= names
    assert sum(e["name"] == "step 0" for e in xs) == 2
    png = plot_report(rep, tmp_path / "steps.png")
    data = png.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_trace_off_refuses():
    with pytest.raises(ValueError):
        Profiler().write_trace("x.json")


def test_profiler_is_torch_free_at_import():
    code = "import sys, v2m.runtime.profiler; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_generate_profile_and_plot(capsys, tiny_bundle, short_video, tmp_path):
    rep, trace, png = tmp_path / "report.json", tmp_path / "trace.json", tmp_path / "p.png"
    rc = main([str(a) for a in ("generate", short_video.path, "-o", tmp_path / "o.wav", "--model", tiny_bundle,
                                "--device", "cpu", "--steps", "6", "--profile", rep, "--trace", trace)])
    out, _ = capsys.readouterr()
    assert rc == 0 and "profile report" in out
    r = json.loads(rep.read_text())
    assert len(r["steps"]) == 6 and "write" in r["stages"]
    assert any(e.get("name") == "write" for e in json.loads(trace.read_text())["traceEvents"])
    assert main(["plot", str(rep), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["profile-plot", str(tmp_path / "o.wav"), "-o", str(png)]) == 2  # not a report


def test_cli_bench(capsys, tiny_bundle, tmp_path):
    rep = tmp_path / "bench.json"
    rc = main(["bench", "--model", str(tiny_bundle), "--device", "cpu", "--duration", "1.5", "--repeats", "2",
               "--steps", "4", "--fast", "--profile", str(rep)])
    out, _ = capsys.readouterr()
    assert rc == 0 and "sampler" in out and "median ms" in out
    r = json.loads(rep.read_text())
    assert r["runs"] == 2 and len(r["steps"]) == 4 and r["sampler_path"] == "static_eager"
