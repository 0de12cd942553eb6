"""Does the shipped model put musical events on the cuts, and measure up like the papers?

    python bench/bench_alignment.py --model demo --videos 24 --seed 20000 [--curve-guidance 1,2]
        [--prompts caption,none,free] [--reference-clips 12] [--prompt-videos 1]
        [--duration 8,12] [--fps 24,30,60] [--fades 0.5]

For each held-out video (`v2m.eval.alignment.make_cut_videos`: 8 to 12 s by default, 2 to 5
cuts at random times, a moving square in every shot; `--fps` frame rates, a `--fades` share
of them with 0.4-1 s cross-fades instead of hard cuts; seeds 20000-29999 are used by nothing else, 30000 and up are
the validation videos the bundle's curve-guidance default was chosen on) it generates
with the curve, without it (`--no-curve`) and with each curve-guidance weight asked
for, and measures curve correlation, cut hits (+-0.25 s) and the median spectral
flatness; BCS, BHS and their F1 against the video's motion beats (+-0.1 s); left/right
correlation and the mono mix's level (dB); the Frechet distance (log-mel + chroma) to
`--reference-clips` clips of the demo training corpus (`train/synth_music.py`, a seed
of its own), with the corpus-to-corpus distance of two such sets as the floor. It does
so for each prompt set: caption-like prompts (the rows without a suffix, as before),
no prompt, and free words absent from every caption. Then prompt following
(`v2m.eval.prompt_following`) on `--prompt-videos` videos. One JSON line per variant
and prompt set goes to bench/results/alignment.jsonl (the targets and whether they
are met on the caption rows), one per prompt-following run; the table is printed.

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

from v2m.eval.alignment import alignment_check, make_cut_videos

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


SUFFIX = {"caption": "", "none": " [no prompt]", "free": " [free words]"}
MEASURES = ("corr", "cut_hits", "flatness", "bcs", "bhs", "beat_f1", "lr_corr", "mono_db", "frechet")


def _args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="demo")
    ap.add_argument("--videos", type=int, default=24)
    ap.add_argument("--seed", type=int, default=20_000)
    ap.add_argument("--curve-guidance", default="", help="comma-separated weights to measure too (0: no guidance)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps (default: the bundle's)")
    ap.add_argument("--prompts", default="caption,none,free", help="prompt sets: caption, none, free")
    ap.add_argument("--reference-clips", type=int, default=12, help="corpus clips for the Frechet distance (0: none)")
    ap.add_argument("--reference-seed", type=int, default=40_000, help="corpus seed of the reference clips")
    ap.add_argument("--duration", default="8,12", help="the videos' length range in seconds, MIN,MAX (default 8,12)")
    ap.add_argument("--reference-corpus", default="synth", choices=["synth", "scores"],
                    help="the reference clips' corpus: synth (the old demo's training music) or scores (real "
                         "instrument samples playing scores, a seed no recipe trains on)")
    ap.add_argument("--fps", default="24", help="the videos' frame rates, comma-separated; each video draws one")
    ap.add_argument("--fades", type=float, default=0.0, help="share of videos whose cuts are 0.4-1 s cross-fades")
    ap.add_argument("--prompt-videos", type=int, default=1, help="videos for prompt following (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="keep the videos here (default: a temporary directory)")
    ap.add_argument("--out", default=None, help="results directory (default bench/results)")
    return ap.parse_args()


def corpus(seed: int, count: int, kind: str = "synth", sample_rate: int = 44100) -> list:
    """`count` 10 s clips of a training corpus generator (`v2m.train.data.open_source`: synth, the
    synthetic grooves; scores, works played by General MIDI instruments): [(audio, sample rate)]."""
    from v2m.train.data import open_source

    src = open_source(kind, seed, count, 10.0)
    return [(src.clip(i)[0], sample_rate) for i in range(count)]


def _fmt(v) -> str:
    return "   n/a" if v is None else f"{v:>6.3f}"


def main() -> None:
    args = _args()
    harness.setup_logging()
    import torch

    torch.set_num_threads(args.threads)
    from v2m.eval.measures import set_frechet
    from v2m.eval.prompt_following import prompt_following
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(args.model, backend="torch", device="cpu")
    weights = [float(w) for w in args.curve_guidance.split(",") if w.strip()]
    sets = [p.strip() for p in args.prompts.split(",") if p.strip()]
    ref = corpus(args.reference_seed, args.reference_clips, args.reference_corpus) if args.reference_clips else None
    floor = set_frechet(corpus(args.reference_seed + 1, args.reference_clips, args.reference_corpus), ref) if ref else None
    env = harness.environment("cpu")
    default = pipe.config.sampler.curve_guidance
    print(f"{'variant':<42} " + " ".join(f"{k[:6]:>6}" for k in MEASURES) + "  targets")
    with tempfile.TemporaryDirectory(prefix="v2m-align-") as td:
        work = Path(args.workdir or td)
        for prompts in sets:
            t0 = time.perf_counter()
            kw = dict(steps=args.steps, pipeline=pipe, prompts=prompts, beats=True, reference=ref,
                      duration=tuple(float(x) for x in args.duration.split(",")),
                      fps=tuple(float(x) for x in args.fps.split(",")), fades=args.fades)
            runs = {None: alignment_check(args.model, work, args.videos, args.seed, **kw)}
            for w in weights:
                runs[w] = alignment_check(args.model, work, args.videos, args.seed, curve_guidance=w, **kw)
            wall = time.perf_counter() - t0
            base = runs[None]
            rows = [("--no-curve", base["no_curve"], None), (f"curve (bundle: guidance {default:g})", base["curve"], default)]
            rows += [(f"curve, guidance {w:g}", runs[w]["guided"], w) for w in weights]
            for name, m, w in rows:
                met = verdict(m, base["no_curve"]) if w is not None and prompts == "caption" else None
                print(f"{name + SUFFIX[prompts]:<42} " + " ".join(_fmt(m.get(k)) for k in MEASURES) + "  "
                      + ("" if met is None else " ".join(f"{k}:{'ok' if v else 'MISS'}" for k, v in met.items())))
                harness.append_result("alignment", {
                    **env, "model": str(args.model), "variant": name + SUFFIX[prompts], "prompts": prompts,
                    "curve_guidance": w, "videos": args.videos, "seed": args.seed,
                    "steps": args.steps or pipe.config.sampler.steps, **m, "no_curve": base["no_curve"],
                    "targets": TARGETS, "met": met, "wall_s": round(wall, 1), "reference_clips": args.reference_clips,
                    "reference_corpus": args.reference_corpus, "duration": args.duration,
                    "fps": args.fps, "fades": args.fades,
                    "frechet_floor": floor, "beat_tolerance": 0.1,
                }, Path(args.out) if args.out else None)
        if floor is not None:
            print(f"Frechet floor (corpus vs corpus, {args.reference_clips} clips each): {floor:.3f}")
        videos = make_cut_videos(work / "videos", args.prompt_videos, args.seed)
        for i, (path, _) in enumerate(videos):
            rep = prompt_following(pipe, path, seed=args.seed + i, steps=args.steps)
            print(f"prompt following {path.name}: {rep['fraction']:.2f} of {rep['pairs']} pairs "
                  f"(caption words {rep['by_kind']['caption']:.2f}, free words {rep['by_kind']['free']:.2f})")
            harness.append_result("alignment", {
                **env, "model": str(args.model), "variant": "prompt following", "video": path.name,
                "seed": args.seed + i, "steps": args.steps or pipe.config.sampler.steps, "fraction": rep["fraction"],
                "by_kind": rep["by_kind"], "pairs": rep["rows"],
            }, Path(args.out) if args.out else None)


if __name__ == "__main__":
    main()
