"""Frame-encoder throughput: DINOv2 frames per second at the pipeline's input size.

    python bench/bench_encoder.py                                  # vitl14, CUDA, fp16, 224 px
    python bench/bench_encoder.py --preset tiny --device cpu --batches 8 --size 112

What the pipeline runs per batch of decoded frames: `DINOv2.pooled` (patch tokens,
final norm, mean) on normalized pixels, position embeddings baked for the input
size as the fast path does. Variants: `eager` and `compile` (torch.compile,
"max-autotune-no-cudagraphs" on CUDA). Random weights made on the device in the
bench dtype. One JSON line per (variant, batch) in `<out>/encoder.jsonl`:
frames/s, ms per batch (median, p10, p90), TFLOP/s against the device peak from
`dinov2.flops_per_frame`, peak GPU memory.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from v2m.models.bundle import randomize_weights  # noqa: E402
from v2m.models.dinov2 import PRESETS, DINOv2, flops_per_frame  # noqa: E402
from v2m.runtime.backends.torch_backend import DTYPES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="vitl14", choices=sorted(PRESETS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default=None, choices=sorted(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    ap.add_argument("--size", type=int, default=224, help="input pixels (square)")
    ap.add_argument("--batches", default="32,64,128,256")
    ap.add_argument("--variants", default="eager,compile")
    harness.add_torch_args(ap, warmup=3, iters=20)
    args = ap.parse_args()
    device, cuda, env, versions = harness.torch_session(args, "bench_encoder", "--preset tiny --size 112")
    precision = args.precision or ("fp16" if cuda else "fp32")
    dtype = DTYPES[precision]
    cfg = PRESETS[args.preset]
    peaks = harness.device_peaks(env["device"]) if cuda else None

    with torch.device(device):
        enc = DINOv2(cfg)
    randomize_weights(enc, torch.Generator(device=device).manual_seed(0))
    enc = enc.to(dtype).eval().bake_position_embeddings(args.size)
    fns = {"eager": enc.pooled}
    if "compile" in args.variants:
        fns["compile"] = torch.compile(enc.pooled, mode="max-autotune-no-cudagraphs" if cuda else None, dynamic=False)
    flops = flops_per_frame(cfg, args.size)
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        pixels = torch.randn(b, 3, args.size, args.size, device=device, dtype=dtype)
        for v in args.variants.split(","):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode():
                fn = functools.partial(fns[v], pixels)
                st = harness.summarize(harness.time_fn(fn, warmup=args.warmup, iters=args.iters, device=str(device)))
            fps = b / (st["median"] / 1e3)
            tflops = fps * flops / 1e12
            row = {
                "bench": "encoder", "device": env["device"], "preset": args.preset, "precision": precision,
                "variant": v, "batch": b, "image_size": args.size,
                "ms": st["median"], "ms_p10": st["p10"], "ms_p90": st["p90"], "iters": st["n"],
                "frames_per_s": fps, "gflop_per_frame": flops / 1e9, "tflops": tflops,
                "pct_peak": 100 * tflops / peaks["tflops_fp16"] if peaks and precision != "fp32" else None,
                "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
                "versions": versions, "commit": env["commit"], "date": env["date"],
            }
            harness.append_result("encoder", row, Path(args.out) if args.out else None)
            rows.append(row)

    print(f"\nDINOv2 {args.preset} at {args.size} px, {precision}, {env['device']}")
    print(f"{'variant':<8} {'batch':>5} {'ms':>9} {'p10':>9} {'p90':>9} {'frames/s':>9} {'TFLOP/s':>8} {'%peak':>6}")
    for r in rows:
        pk = f"{r['pct_peak']:.1f}" if r["pct_peak"] is not None else "-"
        print(f"{r['variant']:<8} {r['batch']:>5} {r['ms']:>9.3f} {r['ms_p10']:>9.3f} {r['ms_p90']:>9.3f} "
              f"{r['frames_per_s']:>9.0f} {r['tflops']:>8.3f} {pk:>6}")


if __name__ == "__main__":
    main()
