"""The profiler: report schema, Chrome trace, PNG plot, CLI wiring (CPU)."""

import itertools
import json
import subprocess
import sys

import pytest

from v2m.cli.main import main
from v2m.core.errors import OutputError
from v2m.runtime.profiler import (
    REPORT_SCHEMA,
    Profiler,
    check_report_paths,
    format_report,
    plot_report,
)

REPORT_KEYS = {
    "schema", "device", "device_type", "step_timer", "versions", "commit", "date", "preset", "backend",
    "precision", "sampler_path", "shapes", "runs", "stages", "total_ms", "steps", "step_summary_ms",
    "peak_gpu_mem_bytes", "batch", "meta",
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


class FakeNvtx:
    """Records NVTX calls like torch.cuda.nvtx: push/pop nest (a stack), start/end are by id."""

    enabled = True

    def __init__(self):
        self.stack: list[str] = []
        self.open: dict[int, tuple[str, tuple[str, ...]]] = {}
        self.ranges: list[tuple[str, tuple[str, ...]]] = []  # closed start/end ranges, with the stack they ran in
        self.ids = itertools.count()

    def push(self, name):
        self.stack.append(name)

    def pop(self):
        self.stack.pop()

    def start(self, name):
        i = next(self.ids)
        self.open[i] = (name, tuple(self.stack))
        return i

    def end(self, i):
        name, stack = self.open.pop(i)
        assert stack == tuple(self.stack), f"{name} started in {stack}, ended in {tuple(self.stack)}"
        self.ranges.append((name, stack))


@pytest.fixture(scope="module")
def windowed_pipe(windowed_bundle):
    """The windowed bundle: the 2 s short_video (25 latent frames) runs in windows."""
    from v2m.runtime import Pipeline

    return Pipeline.from_pretrained(windowed_bundle, backend="torch", device="cpu", precision="fp32")


def test_windowed_steps_per_call_and_nvtx_nesting(windowed_pipe, short_video):
    """Each window is one sampler call: its steps are timed from its own start, so the previous
    window's VAE decode is in no step; NVTX step ranges nest in their "sampler" range."""
    from v2m.runtime.windows import overlap_frames, plan_windows

    cfg = windowed_pipe.config
    prof = Profiler(device="cpu", trace=True)
    nvtx = prof.nvtx = FakeNvtx()
    res = windowed_pipe.generate(short_video.path, seed=1, steps=3, profiler=prof)
    length = res.info["latent_frames"]
    n_win = len(plan_windows(length, 16, overlap_frames(16, cfg.sampler.window_overlap)))
    assert n_win >= 2
    run = prof.runs[0]
    assert [len(c) for c in run.step_ms_by_call] == [3] * n_win
    assert res.step_ms == run.step_ms == [v for c in run.step_ms_by_call for v in c]
    # the windows' VAE decodes (between the calls) are slower than their sampling on CPU: counted in a
    # step they would push the step sum far over the sampler stage
    assert res.timings["vae"] > 0.05 * res.timings["sampler"]
    assert sum(res.step_ms) <= 1.01 * res.timings["sampler"] * 1e3
    rep = prof.report()
    assert [s["index"] for s in rep["steps"]] == [0, 1, 2]  # indexed within a call
    assert all(len(s["runs_ms"]) == n_win for s in rep["steps"]) and rep["step_summary_ms"]["n"] == 3 * n_win
    assert rep["batch"] is None
    steps_ev = [e for e in prof.chrome_trace()["traceEvents"] if e["ph"] == "X" and e["tid"] == 2]
    assert len(steps_ev) == 3 * n_win and sorted({e["args"]["call"] for e in steps_ev}) == list(range(n_win))

    assert not nvtx.stack and not nvtx.open  # everything closed
    steps_nv = [(n, st) for n, st in nvtx.ranges if n.startswith("step ")]
    assert all(st and st[-1] == "sampler" for _, st in steps_nv)  # inside their sampler call
    assert sum(n == "step 0" for n, _ in steps_nv) == n_win
    assert {n for n, _ in steps_nv} == {"step 0", "step 1", "step 2", "step 3"}  # "step 3": the wait after the last


def test_group_and_failed_call_bookkeeping():
    """Batch groups get their own steps; a failed call's open steps are dropped, not recorded."""
    prof = Profiler(device="cpu", trace=True)
    prof.begin_batch(preset="tiny", steps=2)
    g = prof.begin_group(kind="batched", B=2, L=25, S=8, videos=["a", "b"])
    prof.begin_steps()
    with prof.range("sampler"):
        prof.step(0)
        prof.step(1)
    assert len(prof.end_steps()) == 2
    prof.end_group({"sampler": 0.01, "vae": 0.02}, status="ok")
    assert g.step_ms and prof.runs == []  # steps went to the group, no run was made
    with pytest.raises(RuntimeError, match="end_group"):
        prof.end_group({})
    prof.begin_group(kind="batched", B=1, L=13, S=8, videos=["c"])
    prof.begin_steps()
    with pytest.raises(ZeroDivisionError), prof.range("sampler"):
        prof.step(0)
        1 / 0  # noqa: B018 - the sampler call fails
    prof.end_group({"sampler": 0.005}, status="failed", reason="boom")
    assert prof.groups[1].step_ms == [] and not prof._timing
    prof.add_run({"decode": 0.1, "sampler": 0.005}, {"video": "a", "group": 0})
    prof.end_batch(wall_ms=50.0, counts={"ok": 1, "failed": 1, "skipped": 0, "pending": 0}, videos=[])
    rep = prof.report()
    assert rep["runs"] == 1 and rep["shapes"] == {"L": [13, 25], "B": [1, 2], "S": 8, "steps": 2}
    assert [g["status"] for g in rep["batch"]["groups"]] == ["ok", "failed"]
    assert rep["batch"]["groups"][0]["sampler_calls"] == 1 and len(rep["batch"]["groups"][0]["step_ms"]) == 2
    assert rep["batch"]["groups"][1]["reason"] == "boom" and rep["batch"]["groups"][1]["step_ms"] == []
    assert len(rep["steps"]) == 2 and rep["step_summary_ms"]["n"] == 2
    text = format_report(rep)
    assert "batch: 1 ok, 1 failed" in text and "batched B=2 L=25 S=8: 1 group(s)" in text
    json.dumps(rep)


def test_check_report_paths(tmp_path):
    (tmp_path / "afile").write_text("x")
    check_report_paths({"--profile": tmp_path / "new" / "deeper" / "r.json", "--trace": None})  # creatable: fine
    cases = [
        ({"--profile": tmp_path}, "is a folder"),
        ({"--profile": tmp_path / "r.json", "--trace": tmp_path / "r.json"}, "both name"),
        ({"--profile": tmp_path / "afile" / "r.json"}, "is a file, not a folder"),
        ({"--trace": tmp_path / "out.wav"}, "is the output of x"),
    ]
    for paths, msg in cases:
        with pytest.raises(OutputError, match=msg):
            check_report_paths(paths, {tmp_path / "out.wav": "the output of x"})


def test_cli_single_video_report_path_checked_first(capsys, tiny_bundle, short_video, tmp_path):
    """A report that would overwrite the output, or sits in a folder: one line, exit 2, nothing written."""
    from v2m.cli.main import main

    out = tmp_path / "o.wav"
    base = ["generate", str(short_video.path), "-m", str(tiny_bundle), "-o", str(out), "--device", "cpu", "--steps", "2"]
    assert main(base + ["--profile", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the output" in err[0]
    assert main(base + ["--trace", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a folder" in err[0]
    assert not out.exists()
