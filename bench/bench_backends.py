"""Backends head to head: per-step DiT latency and whole-pipeline time, torch vs onnxruntime.

    python bench/bench_backends.py --presets tiny,small --device cpu
    python bench/bench_backends.py --presets small --lengths 62,394 --rounds 15 --no-pipeline --int8

For each preset: a random-weight bundle exported with weights (so both backends
load the same directory). Per step: each backend's own `sample` over 8 Euler steps of
one video with CFG (the DiT on a batch of 2) at each latent length L, divided by 8:
exactly the per-step work of each sampler (torch: the guided stage with the text
keys/values and adaLN modulations hoisted; onnxruntime: the exported step graph over
IOBinding), with its per-generation setup amortized over the 8 steps. The
backends are timed in alternating blocks with a pause between them, so load
from other processes hits all alike and neither runs while the other's idle
worker threads still spin. Pipeline: `Pipeline.generate` on a generated clip, one warm-up then
`--repeats`. One JSON line per measurement in bench/results/backends.jsonl,
with achieved GFLOP/s (DiTConfig.flops) for the step rows. `--int8` adds an
experiment: the step graph with int8 dynamically quantized MatMuls (not a
shipped path; its error against the fp32 graph's latents is recorded).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

log = logging.getLogger("v2m.bench.backends")

BLOCKS = 3  # timed blocks per backend and length, interleaved
SETTLE_S = 0.5


def prepare(preset: str, work: Path, duration: float) -> tuple[Path, Path]:
    from v2m.export.exporter import export_bundle
    from v2m.models.bundle import init_bundle
    from v2m.runtime import synth

    src = work / f"{preset}-bundle"
    if not (src / "config.json").is_file():
        init_bundle(preset, src, seed=0)
    out = work / f"{preset}-exported"
    if not (out / "manifest.json").is_file():
        export_bundle(src, out, with_weights=True)
    clip = work / f"clip-{duration:g}s.mp4"
    if not clip.is_file():
        synth.make_test_video(clip, duration_s=duration, size=(320, 240))
    return out, clip


STEPS = 8  # sampler steps per timed call


def int8_step(bundle: Path, work: Path) -> Path:
    """An experiment, not a shipped path: the step graph with its MatMuls dynamically quantized
    to int8 (onnxruntime.quantization; VNNI on x86). Changes the numerics (see `int8_rel_rms`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / f"{bundle.name}-step.int8.onnx"
    if not out.is_file():
        quantize_dynamic(str(bundle / "onnx" / "fp32" / "step.onnx"), str(out), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"])
    return out


def step_callables(bundle: Path, device: str, threads: int, length: int, int8: Path | None = None):
    """{backend: zero-arg callable running STEPS sampler steps at (B=1 with CFG, L=length)},
    FLOPs of a call, extras."""
    from v2m.core.bundle import load_config, text_max_tokens
    from v2m.runtime import sampler
    from v2m.runtime.backends.ort_backend import OrtBackend
    from v2m.runtime.backends.torch_backend import TorchBackend

    cfg = load_config(bundle)
    s = text_max_tokens(cfg.text)
    rng = np.random.default_rng(0)
    noise = sampler.initial_noise(0, (1, cfg.latent_channels, length))
    mask = np.ones((1, s), np.float32)
    mask[:, s // 2 :] = 0
    cond = sampler.Conditioning(rng.random((1, 1, length), dtype=np.float32),
                                rng.standard_normal((1, s, cfg.text_dim), dtype=np.float32), mask)
    plan = sampler.Plan.make(sampler.SamplerOptions(steps=STEPS, cfg_scale=4.5))
    torch_be = TorchBackend(bundle, cfg, device=device)
    ort_be = OrtBackend(bundle, cfg, device=device, threads=threads)
    fns = {"torch": lambda: torch_be.sample(noise, cond, plan), "onnxruntime": lambda: ort_be.sample(noise, cond, plan)}
    extras: dict[str, dict] = {}
    if int8 is not None:
        import onnxruntime as ort

        q_be = OrtBackend(bundle, cfg, device=device, threads=threads)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        q_be.sessions["step"] = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])
        fns["onnxruntime-int8"] = lambda: q_be.sample(noise, cond, plan)
        ref, got = ort_be.sample(noise, cond, plan), q_be.sample(noise, cond, plan)
        extras["onnxruntime-int8"] = {"int8_rel_rms": float(np.sqrt(((got - ref) ** 2).mean() / (ref**2).mean()))}
    return fns, STEPS * torch_be.dit.cfg.flops(2, length, s), extras


def bench_steps(preset, bundle, device, threads, lengths, rounds, out, int8=None):
    rows = []
    for length in lengths:
        fns, flops, extras = step_callables(bundle, device, threads, length, int8)
        for fn in fns.values():  # warm-up: allocations, ORT's first-run planning, oneDNN primitives
            for _ in range(3):
                fn()
        times: dict[str, list[float]] = {k: [] for k in fns}  # ms per sampler step
        per_block = max(1, rounds // BLOCKS)
        for _ in range(BLOCKS):  # alternate blocks, so background load hits every backend alike
            for name, fn in fns.items():
                # Let the other library's worker threads stop spinning first (OpenMP and ORT's
                # pools busy-wait after a parallel region and would steal this backend's cores).
                time.sleep(SETTLE_S)
                times[name] += [t / STEPS for t in harness.time_fn(fn, warmup=1, iters=per_block, device=device)]
        for name, ts in times.items():
            st = harness.summarize(ts)
            row = {
                "bench": "backends_step", "preset": preset, "backend": name, "precision": "fp32",
                "B": 2, "L": length, "threads": threads, "step_ms": st["median"], "step_ms_p10": st["p10"],
                "step_ms_p90": st["p90"], "n": st["n"], "gflops": flops / STEPS / (st["median"] * 1e-3) / 1e9,
                **extras.get(name, {}), **harness.environment(device),
            }
            harness.append_result("backends", row, out)
            rows.append(row)
        t_ms, o_ms = (harness.summarize(times[k])["median"] for k in ("torch", "onnxruntime"))
        log.info("%s L=%d: torch %.2f ms, onnxruntime %.2f ms per step (onnxruntime %.2fx faster)",
                 preset, length, t_ms, o_ms, t_ms / o_ms)
    return rows


def bench_pipeline(preset, bundle, clip, device, repeats, out):
    from v2m.runtime import Pipeline

    rows = []
    pipes = {b: Pipeline.from_pretrained(bundle, backend=b, device=device, precision="fp32")
             for b in ("torch", "onnxruntime")}
    for pipe in pipes.values():
        pipe.generate(clip, prompt="warm synth pop", seed=0)  # warm-up
    totals: dict[str, list[float]] = {b: [] for b in pipes}
    steps: dict[str, list[float]] = {b: [] for b in pipes}
    stages: dict[str, dict[str, list[float]]] = {b: {} for b in pipes}
    for r in range(repeats):
        for b, pipe in pipes.items():
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            res = pipe.generate(clip, prompt="warm synth pop", seed=r + 1)
            totals[b].append(time.perf_counter() - t0)
            steps[b] += res.step_ms
            for k, v in res.timings.items():
                stages[b].setdefault(k, []).append(v)
    for b in pipes:
        st = harness.summarize(steps[b])
        row = {
            "bench": "backends_pipeline", "preset": preset, "backend": b, "precision": "fp32",
            "L": int(res.curve.shape[0]), "steps": len(res.step_ms), "repeats": repeats,
            "total_s": float(np.median(totals[b])),
            **{f"{k}_s": float(np.median(v)) for k, v in stages[b].items()},
            "step_ms": st["median"], "step_ms_p10": st["p10"], "step_ms_p90": st["p90"],
            **harness.environment(device),
        }
        harness.append_result("backends", row, out)
        rows.append(row)
    log.info("%s pipeline: torch %.2f s, onnxruntime %.2f s", preset,
             np.median(totals["torch"]), np.median(totals["onnxruntime"]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--lengths", default="62,394", help="latent lengths L (62 = the 5 s clip, 394 = 32 s)")
    ap.add_argument("--rounds", type=int, default=12, help="timed calls per backend and length (in 3 blocks)")
    ap.add_argument("--duration", type=float, default=5.0, help="pipeline clip length, seconds")
    ap.add_argument("--repeats", type=int, default=2, help="timed pipeline runs per backend")
    ap.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: all usable)")
    ap.add_argument("--int8", action="store_true", help="also time an int8-quantized step graph (experiment, CPU)")
    ap.add_argument("--workdir", default=None, help="reuse bundles and clips here")
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = ap.parse_args()
    harness.setup_logging()
    import torch

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="v2m-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else None
    lengths = [int(v) for v in args.lengths.split(",")]
    summary = []
    for preset in args.presets.split(","):
        bundle, clip = prepare(preset, work, args.duration)
        q = int8_step(bundle, work) if args.int8 else None
        rows = bench_steps(preset, bundle, args.device, threads, lengths, args.rounds, out, q)
        if args.pipeline:
            rows += bench_pipeline(preset, bundle, clip, args.device, args.repeats, out)
        summary += rows
    print(f"{'preset':<6} {'what':<9} {'L':>4} {'backend':<12} {'median':>10} {'p10':>9} {'p90':>9}")
    for r in summary:
        if r["bench"] == "backends_step":
            print(f"{r['preset']:<6} {'step':<9} {r['L']:>4} {r['backend']:<12} {r['step_ms']:>8.2f}ms "
                  f"{r['step_ms_p10']:>7.2f}ms {r['step_ms_p90']:>7.2f}ms  {r['gflops']:.0f} GFLOP/s"
                  + (f"  (rel rms err {r['int8_rel_rms']:.1e})" if "int8_rel_rms" in r else ""))
        else:
            print(f"{r['preset']:<6} {'pipeline':<9} {r['L']:>4} {r['backend']:<12} {r['total_s']:>9.3f}s "
                  f"(sampler step {r['step_ms']:.2f} ms)")


if __name__ == "__main__":
    main()
