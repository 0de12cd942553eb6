"""Does the shipped model put musical events on the cuts? Its targets, on held-out cut videos.

    python bench/bench_alignment.py --model demo --videos 24 --seed 20000 [--curve-guidance 1,2]

For each held-out video (`v2m.eval.alignment.make_cut_videos`: 8 to 12 s, 2 to 5
hard cuts at random times; seeds 20000-29999 are used by nothing else, 30000 and up are
the validation videos the bundle's curve-guidance default was chosen on) it generates
with the curve, without it (`--no-curve`) and with each curve-guidance weight asked
for, and measures curve correlation, cut hits (+-0.25 s) and the median spectral
flatness. One JSON line per variant goes to bench/results/alignment.jsonl, with the
targets and whether they are met; the table is printed.

Targets: correlation >= 0.7 and >= 0.4 above --no-curve; cut hits >= 0.6
and >= 0.3 above --no-curve; median flatness <= 0.2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from v2m.eval.alignment import alignment_check

TARGETS = {"corr": 0.7, "corr_gain": 0.4, "cut_hits": 0.6, "cut_hits_gain": 0.3, "flatness": 0.2}


def verdict(with_curve: dict, no_curve: dict) -> dict[str, bool]:
    """Each target met or not."""
    return {
        "corr": with_curve["corr"] >= TARGETS["corr"],
        "corr_gain": with_curve["corr"] - no_curve["corr"] >= TARGETS["corr_gain"],
        "cut_hits": with_curve["cut_hits"] >= TARGETS["cut_hits"],
        "cut_hits_gain": with_curve["cut_hits"] - no_curve["cut_hits"] >= TARGETS["cut_hits_gain"],
        "flatness": with_curve["flatness"] <= TARGETS["flatness"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--seed", type=int, default=20_000)
    ap.add_argument("--curve-guidance", default="", help="comma-separated weights to measure too (0: no guidance)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep the videos here (default: a temporary directory)")
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    args = ap.parse_args()
    harness.setup_logging()
    import torch

    torch.set_num_threads(args.threads)
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(args.model, backend="torch", device="cpu")
    weights = [float(w) for w in args.curve_guidance.split(",") if w.strip()]
    with tempfile.TemporaryDirectory(prefix="v2m-align-") as td:
        work = Path(args.workdir or td)
        t0 = time.perf_counter()
        runs = {None: alignment_check(args.model, work, args.videos, args.seed, steps=args.steps, pipeline=pipe)}
        for w in weights:
            res = alignment_check(args.model, work, args.videos, args.seed, curve_guidance=w, steps=args.steps,
                                  pipeline=pipe)
            runs[w] = res
        wall = time.perf_counter() - t0
    base = runs[None]
    env = harness.environment("cpu")
    default = pipe.config.sampler.curve_guidance
    rows = [("--no-curve", base["no_curve"], None), (f"curve (bundle: guidance {default:g})", base["curve"], default)]
    rows += [(f"curve, guidance {w:g}", runs[w]["guided"], w) for w in weights]
    print(f"{'variant':<28} {'corr':>6} {'cut hits':>8} {'flatness':>8}  targets")
    for name, m, w in rows:
        met = verdict(m, base["no_curve"]) if w is not None else None
        print(f"{name:<28} {m['corr']:>6.3f} {m['cut_hits']:>8.3f} {m['flatness']:>8.3f}  "
              + ("" if met is None else " ".join(f"{k}:{'ok' if v else 'MISS'}" for k, v in met.items())))
        harness.append_result("alignment", {
            **env, "model": str(args.model), "variant": name, "curve_guidance": w, "videos": args.videos,
            "seed": args.seed, "steps": args.steps or pipe.config.sampler.steps, **m,
            "no_curve": base["no_curve"], "targets": TARGETS, "met": met, "wall_s": round(wall, 1),
        }, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
