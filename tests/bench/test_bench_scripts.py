"""The bench scripts run and write the JSON lines docs/performance.md's tables are copied from (CPU, tiny sizes).

These check the plumbing, not speed: every row carries the fields the issue asks
for (device, preset, variant, L, B, median/p10/p90, TFLOP/s, speed-up, versions,
commit, date), and GPU-only scripts refuse cleanly without a GPU.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_bench_dit_rows(tmp_path):
    proc = _run("bench_dit.py", "--preset", "tiny", "--device", "cpu", "--lengths", "16,24", "--batches", "1",
                "--variants", "eager,static", "--warmup", "1", "--iters", "3", "--accuracy-steps", "3",
                "--threads", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "dit.jsonl").read_text().splitlines()]
    timing = [r for r in rows if not r["variant"].startswith("accuracy")]
    assert {(r["variant"], r["L"]) for r in timing} == {(v, n) for v in ("eager", "static") for n in (16, 24)}
    for r in timing:
        for key in ("device", "preset", "variant", "L", "B", "step_ms", "step_ms_p10", "step_ms_p90", "tflops",
                    "speedup_vs_eager", "versions", "commit", "date"):
            assert r.get(key) is not None, (key, r)
        assert r["step_ms_p10"] <= r["step_ms"] <= r["step_ms_p90"] and r["tflops"] > 0
        assert r["versions"]["torch"]
    assert all(r["speedup_vs_eager"] == 1.0 for r in timing if r["variant"] == "eager")
    (acc,) = [r for r in rows if r["variant"].startswith("accuracy")]
    assert len(acc["cos_per_step"]) == 3 and acc["cos_min"] >= 0.999 and acc["final_snr_db"] > 20
    assert "per-step velocity cosine" in proc.stdout


def test_bench_encoder_and_vae_rows(tmp_path):
    proc = _run("bench_encoder.py", "--preset", "tiny", "--device", "cpu", "--size", "112", "--batches", "2,5",
                "--variants", "eager", "--iters", "2", "--warmup", "1", "--threads", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "encoder.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in rows] == [2, 5]
    assert all(r["frames_per_s"] > 0 and r["ms_p10"] <= r["ms"] <= r["ms_p90"] and r["commit"] for r in rows)

    proc = _run("bench_vae.py", "--preset", "tiny", "--device", "cpu", "--lengths", "20", "--chunk", "8",
                "--iters", "2", "--warmup", "1", "--threads", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["variant"]: r for r in map(json.loads, (tmp_path / "vae.jsonl").read_text().splitlines())}
    assert set(rows) == {"whole-plain", "whole", "chunked"}
    assert rows["whole"]["max_abs_diff_vs_fp32"] == 0.0 and rows["whole"]["precision"] == "fp32"
    assert rows["whole-plain"]["max_abs_diff_vs_fp32"] == 0.0  # the out-of-place Snake: the same bits
    assert all(r["gflops"] > 0 and r["ms_p10"] <= r["ms"] <= r["ms_p90"] for r in rows.values())
    assert rows["chunked"]["snr_db_vs_fp32"] > 60  # the chunk seams are exact up to float rounding
    assert rows["whole"]["audio_s"] == pytest.approx(20 * 3584 / 44100)


def test_gpu_only_benches_refuse_cleanly(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = _run("bench_fused.py", "--out", str(tmp_path), timeout=120)
    assert proc.returncode != 0 and "needs a CUDA GPU" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "fused.jsonl").exists()


HELP_DRIVER = r"""
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    buf = io.StringIO()
    code = None
    with contextlib.redirect_stdout(buf):
        try:
            runpy.run_path(path, run_name="__main__")
        except SystemExit as e:
            code = e.code
    out[path] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def test_help():
    """Every bench script's --help, in one interpreter (each alone would import torch again)."""
    scripts = sorted(str(p) for p in BENCH.glob("bench_*.py"))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", HELP_DRIVER, *scripts], capture_output=True, text=True,
                          timeout=600, env=env, cwd=BENCH)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(results) == len(scripts) >= 10
    for path, (code, text) in results.items():
        assert code in (0, None) and "usage" in text, (path, code, text[-500:])


def test_gpu_suite_script_parses_and_refuses_unknown_stages(tmp_path):
    """The one GPU command: valid bash; an unknown stage is refused (exit 2) before any work."""
    script = BENCH / "gpu_suite.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    for stage in ("tests", "dit", "parts", "pipeline", "compile"):
        assert f"    {stage})" in text
    limits = [int(m) for m in re.findall(r"run (\d+) ", text)]
    assert sum(limits) <= 8 * 60, f"stage limits add up to {sum(limits)} s, past the 8-minute slot"


def test_bench_alignment_rows(tmp_path):
    """One held-out video, few steps: a row per variant and prompt set with the figures, targets and
    verdicts (the caption rows keep their names), then a prompt-following row."""
    proc = _run("bench_alignment.py", "--videos", "1", "--steps", "4", "--curve-guidance", "0", "--out", str(tmp_path),
                "--workdir", str(tmp_path / "videos"), "--prompts", "caption,free", "--reference-clips", "2",
                "--prompt-videos", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "alignment.jsonl").read_text().splitlines()]
    # the bundle's default (the demo bundle's curve guidance), then the asked-for weight 0
    from v2m.core.bundle import load_config
    from v2m.runtime.demo import demo_bundle_path

    w = load_config(demo_bundle_path()).sampler.curve_guidance
    caption = ["--no-curve", f"curve (bundle: guidance {w:g})", "curve, guidance 0"]
    assert [r["variant"] for r in rows] == [*caption, *(v + " [free words]" for v in caption), "prompt following"]
    assert [r["curve_guidance"] for r in rows[:3]] == [None, w, 0.0]
    for r in rows[:6]:
        for key in ("corr", "cut_hits", "flatness", "targets", "videos", "steps", "commit", "device", "torch", "numpy",
                    "lr_corr", "mono_db", "frechet", "frechet_floor", "prompts"):
            assert r.get(key) is not None or key == "met", (key, r)
        assert "bcs" in r and "bhs" in r and "beat_f1" in r and r["frechet"] >= 0
    assert rows[1]["met"] is not None and set(rows[1]["met"]) == {"corr", "corr_gain", "cut_hits", "cut_hits_gain", "flatness"}
    assert rows[4]["met"] is None  # targets are judged on the caption prompts only
    pf = rows[-1]
    assert 0 <= pf["fraction"] <= 1 and set(pf["by_kind"]) == {"caption", "free"} and len(pf["pairs"]) == 8
    assert "curve, guidance 0" in proc.stdout and "prompt following" in proc.stdout


def test_bench_roofline_rows(tmp_path):
    proc = _run("bench_roofline.py", "--presets", "tiny,demo", "--duration", "2", "--steps", "2", "--step-calls", "2",
                "--iters", "1", "--warmup", "0", "--frames", "2", "--generate-iters", "1", "--matmul-n", "128",
                "--threads", "1", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "roofline.jsonl").read_text().splitlines()]
    peaks = {r["library"]: r for r in rows if r["bench"] == "roofline_peak"}
    assert set(peaks) == {"torch", "numpy", "onnxruntime"} and all(p["gflops"] > 0 for p in peaks.values())
    found = {(r["preset"], r["component"], r["backend"]) for r in rows if r["bench"] == "roofline"}
    backends = {"torch", "onnxruntime-fp32"}  # no int8 column: these bundles have no int8 graphs
    assert found == ({("tiny", c, b) for c in ("dit_step", "vae", "encoder", "generate") for b in backends}
                     | {("demo", c, b) for c in ("dit_step", "vae", "generate") for b in backends})  # demo: weight-free encoder
    for r in rows:
        assert r["device"] and r["commit"] and r["torch"] and r["onnxruntime"] and r["date"]
        if r["bench"] == "roofline":
            lib = "torch" if r["backend"] == "torch" else "onnxruntime"
            assert r["ms_p10"] <= r["ms"] <= r["ms_p90"] and r["gflops"] > 0 and r["L"] == 25
            assert r["of_peak"] == pytest.approx(r["gflops"] / peaks[lib]["gflops"])


def test_bench_frame_dedup_rows(tmp_path):
    proc = _run("bench_frame_dedup.py", "--preset", "tiny", "--duration", "2", "--iters", "1", "--warmup", "0",
                "--threads", "1", "--workdir", str(tmp_path / "work"), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["variant"]: r for r in map(json.loads, (tmp_path / "frame_dedup.jsonl").read_text().splitlines())}
    assert set(rows) == {"repeat", "dedup"}
    assert rows["repeat"]["frames_encoded"] == rows["repeat"]["samples"] == rows["dedup"]["samples"] == 25
    assert rows["dedup"]["frames_encoded"] == 16  # 2 s at 8 fps
    assert all(r["features_identical"] and r["commit"] and r["device"] and r["ms"] > 0 for r in rows.values())


def test_bench_int8_rows(tmp_path):
    """A gate row per recipe (with the fused ops ONNX Runtime made) and a step row per (recipe, threads)."""
    proc = _run("bench_int8.py", "--preset", "tiny", "--recipes", "ship,static_qdq", "--threads", "1", "--iters", "1",
                "--step-calls", "1", "--length", "16", "--calib-steps", "2", "--workdir", str(tmp_path / "work"),
                "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "int8.jsonl").read_text().splitlines()]
    gates = {r["recipe"]: r for r in rows if r["row"] == "gate"}
    assert set(gates) == {"ship", "static_qdq"}
    assert gates["ship"]["step_ops"]["DynamicQuantizeMatMul"] > 0 and gates["static_qdq"]["step_ops"]["QLinearMatMul"] > 0
    assert all(len(g["step_cosine"]) == g["steps"] and "audio_snr_db" in g for g in gates.values())
    steps = {r["recipe"]: r for r in rows if r["row"] == "step"}
    assert set(steps) == {"fp32", "ship", "static_qdq"} and steps["fp32"]["speedup_vs_fp32"] == 1.0
    for r in steps.values():
        assert r["threads"] == 1 and r["L"] == 16 and r["ms_p10"] <= r["ms"] <= r["ms_p90"] and r["device"] and r["commit"]
