"""Side by side on a CPU: torch eager vs ONNX Runtime fp32 (vs int8), against the measured matmul peak.

    python bench/bench_roofline.py                                   # demo and small, a 30 s clip
    python bench/bench_roofline.py --presets small --steps 8 --iters 3

One run, one process, interleaved: first the fp32 matmul peak of this machine now
(a 2048^3 product through torch, numpy and ONNX Runtime, round-robin), then per
bundle preset, for each backend:

- dit_step:  `backend.sample` of `--step-calls` Euler steps with CFG (the DiT on a batch
             of 2) at the clip's latent length L, per step;
- vae:       `backend.decode` of L latent frames (torch: `decode_chunked`);
- encoder:   `backend.encode_frames` of `--frames` frames at the bundle's input size
             (only where the bundle has a frame-encoder network: the demo's is weight-free);
- generate:  `Pipeline.generate` of the whole clip, `--steps` steps (the same pipelines, so
             warmed up by the rows above).

Backends: "torch" (eager, fp32), "onnxruntime-fp32" (the exported graphs), and
"onnxruntime-int8" where the bundle's manifest lists int8 graphs (`v2m export --precision
int8`); a bundle without them gets no int8 column. Every row carries the achieved GFLOP/s
(the model's analytic FLOPs: `DiTConfig.flops`, `OobleckConfig.flops`, `dinov2.flops_per_frame`;
for generate their sum over the run) and its fraction of the same run's matmul peak of the
library that ran it (`of_peak`) and of the best peak (`of_best_peak`).
JSON lines in bench/results/roofline.jsonl (harness: median, p10, p90, device, versions, commit).

Presets: "demo" is the shipped bundle (runtime/demo_bundle, already exported); any other
preset is made with random weights and exported into --workdir (kept for reuse).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

log = logging.getLogger("v2m.bench.roofline")

MATMUL_N = 2048
SETTLE_S = 0.3  # before each timed call: the other library's idle worker threads stop spinning


# --- the peak -------------------------------------------------------------------------------
def matmul_peaks(threads: int, n: int, iters: int, clock: str = "wall") -> dict[str, dict]:
    """fp32 (n x n) @ (n x n) through torch, numpy and ONNX Runtime, timed round-robin."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "AB"],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    fns = {"torch": lambda: torch.mm(ta, tb), "numpy": lambda: a @ b,
           "onnxruntime": lambda: sess.run(None, {"A": a, "B": b})}
    times = harness.time_interleaved(fns, warmup=1, iters=iters, settle_s=SETTLE_S, clock=clock)
    flops = 2.0 * n**3
    return {lib: {**harness.summarize(ts), "gflops": flops / (np.median(ts) * 1e-3) / 1e9} for lib, ts in times.items()}


# --- bundles and pipelines ------------------------------------------------------------------
def prepare_bundle(preset: str, work: Path) -> Path:
    if preset == "demo":
        from v2m.runtime.demo import resolve_model

        return resolve_model("demo")
    from v2m.export.exporter import export_bundle
    from v2m.models.bundle import init_bundle

    src, out = work / f"{preset}-bundle", work / f"{preset}-exported"
    if not (src / "config.json").is_file():
        init_bundle(preset, src, seed=0)
    if not (out / "manifest.json").is_file():
        export_bundle(src, out, with_weights=True)
    return out


def pipelines(bundle: Path, threads: int) -> dict:
    """{backend label: Pipeline}: torch eager, ORT fp32, and ORT int8 where the bundle has it."""
    from v2m.core.errors import V2MError
    from v2m.core.manifest import load_manifest
    from v2m.runtime import Pipeline

    pipes = {"torch": Pipeline.from_pretrained(bundle, backend="torch", precision="fp32", fast=False),
             "onnxruntime-fp32": Pipeline.from_pretrained(bundle, backend="onnxruntime", precision="fp32")}
    if "int8" in load_manifest(bundle).precisions:
        try:
            pipes["onnxruntime-int8"] = Pipeline.from_pretrained(bundle, backend="onnxruntime", precision="int8")
        except V2MError as e:
            log.warning("%s lists int8 graphs, but they do not load here (%s); no int8 column", bundle, e)
    for name, pipe in pipes.items():
        if name != "torch" and pipe.backend.threads != threads:  # the same thread count as torch's
            from v2m.runtime.backends.ort_backend import OrtBackend

            pipe.backend = OrtBackend(bundle, pipe.config, device="cpu", precision=pipe.backend.precision,
                                      threads=threads)
    return pipes


# --- the component workloads ----------------------------------------------------------------
def component_fns(pipes: dict, length: int, step_calls: int, frames: int) -> dict[str, tuple[dict, float, dict]]:
    """{component: ({backend: zero-arg callable}, FLOPs of a call, row extras)}."""
    from v2m.core.bundle import has_encoder_weights, text_max_tokens
    from v2m.models.dinov2 import DINOv2Config, flops_per_frame
    from v2m.models.dit import DiTConfig
    from v2m.models.vae import OobleckConfig
    from v2m.runtime import sampler

    cfg = next(iter(pipes.values())).config
    s = text_max_tokens(cfg.text)
    rng = np.random.default_rng(0)
    noise = sampler.initial_noise(0, (1, cfg.latent_channels, length))
    mask = np.ones((1, s), np.float32)
    mask[:, s // 2 :] = 0
    cond = sampler.Conditioning(rng.random((1, 1, length), dtype=np.float32),
                                rng.standard_normal((1, s, cfg.text_dim), dtype=np.float32), mask)
    plan = sampler.Plan.make(sampler.SamplerOptions(steps=step_calls, cfg_scale=4.5))
    latents = rng.standard_normal((1, cfg.latent_channels, length), dtype=np.float32)
    dit_flops = DiTConfig.from_dict(cfg.dit).flops(2, length, s)
    out = {
        "dit_step": ({k: (lambda p=p: p.backend.sample(noise, cond, plan)) for k, p in pipes.items()},
                     step_calls * dit_flops, {"B": 2, "steps_per_call": step_calls}),
        "vae": ({k: (lambda p=p: p.backend.decode(latents)) for k, p in pipes.items()},
                OobleckConfig.from_dict(cfg.vae).flops(length), {}),
    }
    if has_encoder_weights(cfg.encoder):
        size = int(cfg.encoder["input_size"])
        pixels = rng.standard_normal((frames, 3, size, size), dtype=np.float32)
        enc_flops = frames * flops_per_frame(DINOv2Config.from_dict(cfg.encoder["config"]), size)
        out["encoder"] = ({k: (lambda p=p: p.backend.encode_frames(pixels)) for k, p in pipes.items()},
                          enc_flops, {"frames": frames, "input_size": size})
    return out


def generate_flops(cfg, length: int, steps: int, frames: int) -> float:
    """Analytic FLOPs of one generate: the guided DiT steps (B = 2), the VAE, the frame encoder."""
    from v2m.core.bundle import has_encoder_weights, text_max_tokens
    from v2m.models.dinov2 import DINOv2Config, flops_per_frame
    from v2m.models.dit import DiTConfig
    from v2m.models.vae import OobleckConfig

    total = steps * DiTConfig.from_dict(cfg.dit).flops(2, length, text_max_tokens(cfg.text))
    total += OobleckConfig.from_dict(cfg.vae).flops(length)
    if has_encoder_weights(cfg.encoder):
        size = int(cfg.encoder["input_size"])
        total += frames * flops_per_frame(DINOv2Config.from_dict(cfg.encoder["config"]), size)
    return total


def _row(preset, component, backend, st, flops, peaks, extras, env, threads, clock):
    gflops = flops / (st["median"] * 1e-3) / 1e9
    lib = "torch" if backend == "torch" else "onnxruntime"
    return {
        "bench": "roofline", "preset": preset, "component": component, "backend": backend, "precision": "fp32"
        if not backend.endswith("int8") else "int8", "threads": threads, "clock": clock,
        "ms": st["median"], "ms_p10": st["p10"], "ms_p90": st["p90"], "n": st["n"], "gflops": gflops,
        "peak_gflops": peaks[lib]["gflops"], "of_peak": gflops / peaks[lib]["gflops"],
        "of_best_peak": gflops / max(p["gflops"] for p in peaks.values()),
        **extras, **env,
    }


def bench_preset(preset, args, work, clip, peaks, env, threads, out) -> list[dict]:
    from v2m.core.curves import latent_length
    from v2m.runtime import video

    bundle = prepare_bundle(preset, work)
    pipes = pipelines(bundle, threads)
    cfg = next(iter(pipes.values())).config
    length = latent_length(args.duration, cfg.latent_rate)
    rows = []
    for comp, (fns, flops, extras) in component_fns(pipes, length, args.step_calls, args.frames).items():
        times = harness.time_interleaved(fns, warmup=args.warmup, iters=args.iters, settle_s=SETTLE_S,
                                         clock=args.clock)
        per_call = args.step_calls if comp == "dit_step" else 1
        for backend, ts in times.items():
            st = harness.summarize(np.asarray(ts) / per_call)
            rows.append(_row(preset, comp, backend, st, flops / per_call, peaks, {"L": length, **extras}, env, threads,
                             args.clock))
    if args.generate:
        fns = {k: (lambda p=p: p.generate(clip, prompt="warm synth pop", seed=0, steps=args.steps)) for k, p in pipes.items()}
        times = harness.time_interleaved(fns, warmup=args.generate_warmup, iters=args.generate_iters,
                                         settle_s=SETTLE_S, clock=args.clock)
        frames = video.num_samples(args.duration, cfg.curve_fps)
        flops = generate_flops(cfg, length, args.steps, frames)
        for backend, ts in times.items():
            rows.append(_row(preset, "generate", backend, harness.summarize(ts), flops, peaks,
                             {"L": length, "steps": args.steps, "clip_s": args.duration}, env, threads, args.clock))
    for r in rows:
        harness.append_result("roofline", r, out)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="demo,small", help="demo (the shipped bundle) and/or tiny, small, full")
    ap.add_argument("--duration", type=float, default=30.0, help="clip seconds (sets L for every row)")
    ap.add_argument("--steps", type=int, default=8, help="sampler steps of each generate")
    ap.add_argument("--step-calls", type=int, default=4, help="sampler steps per timed dit_step call")
    ap.add_argument("--frames", type=int, default=32, help="frames per timed encoder call")
    ap.add_argument("--iters", type=int, default=3, help="timed rounds per component (round-robin over backends)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--generate", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--generate-iters", type=int, default=2)
    ap.add_argument("--generate-warmup", type=int, default=0, help="the component rows already warmed the pipelines")
    ap.add_argument("--matmul-n", type=int, default=MATMUL_N, help="size of the peak matmul (n^3)")
    ap.add_argument("--threads", type=int, default=None, help="torch and ORT threads (default: usable cores)")
    ap.add_argument("--clock", default="wall", choices=sorted(harness.CLOCKS),
                    help="wall time, or this process's CPU time (steadier on a shared machine; use --threads 1)")
    ap.add_argument("--workdir", default=None, help="reuse bundles and the clip here")
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = ap.parse_args()
    harness.setup_logging()
    import torch

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="v2m-roofline-"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else None
    env = harness.environment("cpu")

    peaks = matmul_peaks(threads, args.matmul_n, max(3, args.iters), args.clock)
    for lib, p in peaks.items():
        harness.append_result("roofline", {"bench": "roofline_peak", "library": lib, "n": args.matmul_n,
                                           "threads": threads, "clock": args.clock, "ms": p["median"], "ms_p10": p["p10"],
                                           "ms_p90": p["p90"], "gflops": p["gflops"], **env}, out)
    clip = work / f"clip-{args.duration:g}s.mp4"
    if args.generate and not clip.is_file():
        from v2m.runtime import synth

        synth.make_test_video(clip, duration_s=args.duration, size=(320, 240))
    rows = []
    for preset in args.presets.split(","):
        rows += bench_preset(preset, args, work, clip, peaks, env, threads, out)

    print(f"\n{env['device']}, {threads} threads, {args.clock} clock; fp32 {args.matmul_n}^3 matmul peak: "
          + ", ".join(f"{lib} {p['gflops']:.1f}" for lib, p in peaks.items()) + " GFLOP/s")
    print(f"{'preset':<6} {'component':<9} {'backend':<17} {'median':>10} {'p10':>10} {'p90':>10} {'GFLOP/s':>8} {'of peak':>7}")
    for r in rows:
        print(f"{r['preset']:<6} {r['component']:<9} {r['backend']:<17} {r['ms']:>8.1f}ms {r['ms_p10']:>8.1f}ms "
              f"{r['ms_p90']:>8.1f}ms {r['gflops']:>8.1f} {100 * r['of_peak']:>6.0f}%")


if __name__ == "__main__":
    main()
