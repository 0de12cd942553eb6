"""Event-curve benchmark: the Triton kernel vs plain PyTorch vs the numpy reference.

    python bench/bench_event_curve.py --device cuda --sizes full
    python bench/bench_event_curve.py --device cpu --sizes quick --threads 1 --out /tmp/bench_ec
    python bench/bench_event_curve.py --device cpu --interpret      # + Triton interpreter, small sizes

Features are fp16 [B, T, D] with D = 1024 (B in 1, 8, 64; T in 394, 960, 3600
frames at --fps), all videos full length. Each implementation is checked
against `event_curves_reference` once, then timed with `harness.time_fn` (CUDA
events on GPU). Effective bandwidth counts the bytes that must move: features
read once plus the fp32 curve written; on GPU it is also given as a fraction of
the device's peak. One JSON line per configuration in `<out>/event_curve.jsonl`
(default bench/results), with flat `<impl>_ms`, `_ms_p10`, `_ms_p90`, `_gbps`,
`_pct_peak` and `_max_abs_err` keys for impl in triton, torch, numpy.
"""

import argparse
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

log = logging.getLogger("v2m.bench.event_curve")

LATENT_RATE = 44100 / 3584
D = 1024
SIZES = {
    "quick": {"batch": (1, 8), "frames": (394, 960)},
    "full": {"batch": (1, 8, 64), "frames": (394, 960, 3600)},
}
INTERPRET_MAX_ELEMENTS = 8 * 394 * D  # the interpreter runs ~1e6 elements per second


def make_inputs(batch: int, frames: int, fps: float, seed: int = 0):
    """fp16 numpy features [B, T, D] (a slow random walk with cuts), lengths, latent lengths."""
    rng = np.random.default_rng(seed)
    steps = 0.15 * rng.standard_normal((batch, frames, D), dtype=np.float32)
    cuts = rng.random((batch, frames, 1)) < 0.01
    steps = np.where(cuts, 4.0 * rng.standard_normal((batch, frames, D), dtype=np.float32), steps)
    feats = np.cumsum(steps, axis=1)
    feats = feats / np.abs(feats).max() * 8.0  # keep the fp16 range comfortable
    lengths = np.full(batch, frames, dtype=np.int64)
    out_lengths = np.full(batch, max(1, math.ceil(frames / fps * LATENT_RATE)), dtype=np.int64)
    return feats.astype(np.float16), lengths, out_lengths


def run_config(batch: int, frames: int, args, impls: list[str], peaks) -> dict:
    import torch

    from v2m.kernels import event_curve as ec

    f_np, lens_np, out_np = make_inputs(batch, frames, args.fps)
    features = torch.from_numpy(f_np).to(args.device)
    lengths = torch.from_numpy(lens_np).to(args.device)
    out_lengths = torch.from_numpy(out_np).to(args.device)
    length = int(out_np.max())
    call_args = (args.fps, LATENT_RATE, args.kernel)
    fns = {
        "triton": lambda: ec.event_curves(
            features, lengths, out_lengths, *call_args, max_length=length
        ),
        "torch": lambda: ec.event_curves_torch(
            features, lengths, out_lengths, *call_args, max_length=length
        ),
        "numpy": lambda: ec.event_curves_reference(f_np, lens_np, out_np, *call_args),
    }
    expected = fns["numpy"]()
    nbytes = f_np.nbytes + expected.size * 4  # features read once + fp32 curve written
    row = {
        "bench": "event_curve",
        "B": batch,
        "T": frames,
        "D": D,
        "L": length,
        "dtype": "float16",
        "fps": args.fps,
        "kernel": args.kernel,
        "bytes": int(nbytes),
        "peak_gbps": peaks["gbps"] if peaks else None,
        "triton_interpret": bool(args.interpret),
        "torch_threads": torch.get_num_threads(),  # CPU timings swing with OpenMP oversubscription
    }
    big = batch * frames * D > 8 * 960 * D
    for name in impls:
        if name == "triton" and args.interpret and batch * frames * D > INTERPRET_MAX_ELEMENTS:
            log.info("B=%d T=%d: skipping triton (too large for the interpreter)", batch, frames)
            continue
        got = fns[name]()
        got = got.cpu().numpy() if hasattr(got, "cpu") else got
        max_err = float(np.abs(got - expected).max())
        if args.device.startswith("cuda") and name != "numpy":
            warmup, iters = 10, 100
        elif name == "numpy" or args.interpret or big:
            warmup, iters = 1, 5
        else:
            warmup, iters = 2, 10
        stats = harness.summarize(
            harness.time_fn(
                fns[name],
                warmup=warmup,
                iters=iters,
                device=args.device if name != "numpy" else "cpu",
            )
        )
        gbps = nbytes / (stats["median"] * 1e-3) / 1e9
        row.update(
            {
                f"{name}_ms": stats["median"],
                f"{name}_ms_p10": stats["p10"],
                f"{name}_ms_p90": stats["p90"],
                f"{name}_iters": stats["n"],
                f"{name}_gbps": gbps,
                f"{name}_pct_peak": 100.0 * gbps / peaks["gbps"] if peaks else None,
                f"{name}_max_abs_err": max_err,
            }
        )
    for name in ("triton", "numpy"):
        if f"{name}_ms" in row and "torch_ms" in row:
            row[f"{name}_speedup_vs_torch"] = row["torch_ms"] / row[f"{name}_ms"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda", help="cuda or cpu")
    ap.add_argument("--sizes", choices=sorted(SIZES), default="full")
    ap.add_argument("--fps", type=float, default=24.0)
    ap.add_argument("--kernel", type=int, default=31, help="Hann window length")
    ap.add_argument(
        "--interpret",
        action="store_true",
        help="on CPU, also time Triton under its interpreter (small sizes only)",
    )
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is steadier on a shared machine)",
    )
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    harness.setup_logging(args.verbose)
    if args.interpret:
        if args.device != "cpu":
            ap.error("--interpret is for --device cpu")
        os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import
    import torch

    from v2m.kernels import event_curve as ec

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA device; use --device cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    impls = ["torch", "numpy"]
    if args.device.startswith("cuda") or args.interpret:
        if not ec.triton_available():
            raise RuntimeError("triton is not available (not installed, or no CUDA device)")
        impls.insert(0, "triton")
    env = harness.environment(args.device)
    peaks = harness.device_peaks(env["device"]) if args.device.startswith("cuda") else None
    log.info("device %s, implementations %s, sizes %s", env["device"], ",".join(impls), args.sizes)
    for batch in SIZES[args.sizes]["batch"]:
        for frames in SIZES[args.sizes]["frames"]:
            row = run_config(batch, frames, args, impls, peaks)
            harness.append_result("event_curve", {**row, **env}, args.out and Path(args.out))
            log.info(
                "B=%-2d T=%-4d L=%-4d  %s",
                batch,
                frames,
                row["L"],
                "  ".join(
                    f"{n} {row[n + '_ms']:.3f} ms [{row[n + '_ms_p10']:.3f}, {row[n + '_ms_p90']:.3f}] "
                    f"{row[n + '_gbps']:.2f} GB/s"
                    + (f" ({row[n + '_pct_peak']:.0f}% of peak)" if row[n + "_pct_peak"] else "")
                    for n in impls
                    if n + "_ms" in row
                )
                + (
                    f"  triton x{row['triton_speedup_vs_torch']:.2f} vs torch"
                    if "triton_speedup_vs_torch" in row
                    else ""
                ),
            )


if __name__ == "__main__":
    main()
