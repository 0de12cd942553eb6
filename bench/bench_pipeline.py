"""End-to-end pipeline benchmark: per-stage wall time and per-step sampler latency.

    python bench/bench_pipeline.py --presets tiny,small --device cpu
    python bench/bench_pipeline.py --presets tiny --backend onnxruntime   # an exported bundle
    python bench/bench_pipeline.py --presets full --device cuda --precision fp16 --duration 32 --size 1280x720

For each preset: a random-weight bundle, a generated test video with scene
cuts, one warm-up generation, then `--repeats` timed ones. One JSON line per
(preset, backend, device) in bench/results/pipeline.jsonl with the median of
each stage, sampler step median/p10/p90, the real-time factor, peak GPU memory and
(for fp16 / the fast path) the SNR of the latents and audio against the fp32 eager
reference on the same clip and seed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

log = logging.getLogger("v2m.bench.pipeline")


def prepare(preset: str, work: Path, backend: str, duration: float, size: tuple[int, int] = (320, 240),
            init_device: str = "cpu", precision: str = "fp32") -> tuple[Path, Path]:
    import torch

    from v2m.models.bundle import init_bundle
    from v2m.runtime import synth

    bundle = work / f"{preset}-bundle"
    if not (bundle / "config.json").is_file():
        # full-size random weights are made on the GPU, stored in the precision they run in
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
        init_bundle(preset, bundle, seed=0, dtype=dtype, device=init_device)
    if backend in ("onnxruntime", "tensorrt") and not (bundle / "manifest.json").is_file():
        from v2m.export.exporter import export_bundle

        export_bundle(bundle, bundle)
    clip = work / f"clip-{duration:g}s-{size[0]}x{size[1]}.mp4"
    if not clip.is_file():
        synth.make_test_video(clip, duration_s=duration, size=size)
    return bundle, clip


def run(preset: str, backend: str, device: str, precision: str, duration: float, repeats: int, work: Path, out: Path | None,
        size: tuple[int, int] = (320, 240), fast: bool | None = None, kernels: str = "torch", compile: str = "none",
        accuracy: bool = False, vae_precision: str | None = None):
    from v2m.runtime import Pipeline
    from v2m.runtime.profiler import Profiler

    init_device = "cuda" if device.startswith("cuda") else "cpu"
    bundle, clip = prepare(preset, work, backend, duration, size, init_device, precision)
    pipe = Pipeline.from_pretrained(bundle, backend=backend, device=device, precision=precision, fast=fast,
                                    kernels=kernels, compile=compile, vae_precision=vae_precision)
    first = pipe.generate(clip, prompt="warm synth pop", seed=0)  # warm-up (allocations, graph builds)
    stage_runs: dict[str, list[float]] = {}
    steps: list[float] = []
    totals = []
    prof = Profiler(device=pipe.backend.device, clock=pipe.backend.step_clock())  # device events, peak GPU memory
    for r in range(repeats):
        res = pipe.generate(clip, prompt="warm synth pop", seed=r, profiler=prof)
        with tempfile.TemporaryDirectory() as td:
            res.mux(clip, Path(td) / "out.mp4")
        for k, v in res.timings.items():
            stage_runs.setdefault(k, []).append(v)
        steps.extend(res.step_ms)
        totals.append(sum(res.timings.values()))
    step = harness.summarize(steps)
    peak = prof.report().get("peak_gpu_mem_bytes")
    peak_mb = peak / 2**20 if peak else None
    acc = {}
    if accuracy:  # the measured configuration vs the fp32 eager reference, same clip and seed
        del pipe
        ref = Pipeline.from_pretrained(bundle, backend="torch", device=device, precision="fp32", fast=False)
        gold = ref.generate(clip, prompt="warm synth pop", seed=0)
        acc = {"latents_snr_db_vs_fp32": harness.snr_db(gold.latents, first.latents),
               "audio_snr_db_vs_fp32": harness.snr_db(gold.audio, first.audio)}
        log.info("%s vs fp32 eager: latents SNR %.1f dB, audio SNR %.1f dB", precision,
                 acc["latents_snr_db_vs_fp32"], acc["audio_snr_db_vs_fp32"])
        del ref
    row = {
        "bench": "pipeline",
        "preset": preset,
        "backend": backend,
        "precision": precision,
        "duration_s": duration,
        "video_size": f"{size[0]}x{size[1]}",
        "sampler_path": res.info.get("sampler_path", "eager"),
        "vae_precision": res.info.get("vae_precision", precision),
        "peak_gpu_mb": peak_mb,
        **acc,
        "L": int(res.curve.shape[0]),
        "steps": len(res.step_ms),
        "repeats": repeats,
        **{f"{k}_s": float(np.median(v)) for k, v in stage_runs.items()},
        "total_s": float(np.median(totals)),
        "step_ms": step["median"],
        "step_ms_p10": step["p10"],
        "step_ms_p90": step["p90"],
        "realtime_factor": duration / float(np.median(totals)),
        **harness.environment(device),
    }
    harness.append_result("pipeline", row, out)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--backends", default="torch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", default="320x240", help="test clip WIDTHxHEIGHT (1280x720 for the 720p run)")
    ap.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                    help="torch fast path (default: on for CUDA + fp16)")
    ap.add_argument("--kernels", default="torch", choices=["torch", "triton"], help="torch fast path: fused glue kernels")
    ap.add_argument("--compile", default="none", choices=["none", "inductor"], help="torch fast path: torch.compile")
    ap.add_argument("--vae-precision", default=None, choices=["fp16", "bf16", "fp32"],
                    help="torch fast path: VAE precision if not --precision")
    ap.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the fp32 eager reference and report latents/audio SNR (default: on unless fp32 eager)")
    ap.add_argument("--workdir", default=None, help="reuse bundles and clips here")
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = ap.parse_args()
    harness.setup_logging()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="v2m-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    for preset in args.presets.split(","):
        for backend in args.backends.split(","):
            size = tuple(int(v) for v in args.size.lower().split("x"))
            row = run(preset, backend, args.device, args.precision, args.duration, args.repeats, work,
                      args.out and Path(args.out), size, args.fast, args.kernels, args.compile,
                      accuracy=args.accuracy if args.accuracy is not None else (args.precision != "fp32" or bool(args.fast)),
                      vae_precision=args.vae_precision)
            log.info(
                "%s/%s: total %.3f s (RTF %.1fx), step median %.2f ms, sampler %.3f s, vae %.3f s",
                preset, backend, row["total_s"], row["realtime_factor"], row["step_ms"], row["sampler_s"], row["vae_s"],
            )


if __name__ == "__main__":
    main()
