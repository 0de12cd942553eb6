"""Batch throughput: videos per minute for one video at a time (B=1) vs the batched path.

    python bench/bench_batch.py --preset tiny --videos 16 --duration 2 --batch-sizes 1,8,16

16 short generated clips of one length, run end to end through `runtime.batch.run_batch`
(decode, encode, curve, sampler, VAE, WAV write) with `--batch-size` B; one warm-up run,
then `--repeats` timed ones. One JSON line per B in bench/results/batch.jsonl.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

log = logging.getLogger("v2m.bench.batch")


def prepare(preset: str, work: Path, n: int, duration: float) -> tuple[Path, list[Path]]:
    from v2m.models.bundle import init_bundle
    from v2m.runtime import synth

    bundle = work / f"{preset}-bundle"
    if not (bundle / "config.json").is_file():
        init_bundle(preset, bundle, seed=0)
    clips = []
    for i in range(n):
        clip = work / "videos" / f"clip{i:02d}.mp4"
        if not clip.is_file():
            clip.parent.mkdir(parents=True, exist_ok=True)
            synth.make_test_video(clip, duration_s=duration, cuts=(duration / 3, 2 * duration / 3), seed=i)
        clips.append(clip)
    return bundle, clips


def run_once(pipe, clips: list[Path], out: Path, batch_size: int, steps: int | None) -> float:
    from v2m import batch

    jobs = batch.collect_inputs(clips, out, prompt="warm synth pop", seed=0)
    from v2m.runtime.request import Request

    opts = batch.BatchOptions(out, format="wav", batch_size=batch_size, request=Request(steps=steps), overwrite=True,
                              progress=False)
    t0 = time.perf_counter()
    summary = batch.run_batch(pipe, jobs, opts)
    wall = time.perf_counter() - t0
    if summary.count("ok") != len(clips):
        raise RuntimeError(f"{len(clips) - summary.count('ok')} videos failed; see {summary.path}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--videos", type=int, default=16)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--batch-sizes", default="1,8,16")
    ap.add_argument("--steps", type=int, default=None, help="default: the bundle's (96)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="results folder (default bench/results)")
    args = ap.parse_args()
    harness.setup_logging()
    logging.getLogger("v2m.runtime.media").setLevel(logging.ERROR)  # random weights clip a little

    from v2m.runtime import Pipeline

    work = Path(args.workdir or tempfile.mkdtemp(prefix="v2m-bench-batch-"))
    bundle, clips = prepare(args.preset, work, args.videos, args.duration)
    pipe = Pipeline.from_pretrained(bundle, backend=args.backend, device=args.device)
    steps = args.steps or pipe.config.sampler.steps
    env = harness.environment(args.device)
    for b in (int(x) for x in args.batch_sizes.split(",")):
        run_once(pipe, clips[: max(b, 2)], work / "warm", b, steps)  # warm-up at this batch shape
        walls = [run_once(pipe, clips, work / f"out-b{b}", b, steps) for _ in range(args.repeats)]
        s = harness.summarize([w * 1e3 for w in walls])
        row = {
            "bench": "batch",
            "preset": args.preset,
            "backend": args.backend,
            "batch_size": b,
            "videos": len(clips),
            "video_s": args.duration,
            "steps": steps,
            "repeats": args.repeats,
            "wall_s": s["median"] / 1e3,
            "wall_s_p10": s["p10"] / 1e3,
            "wall_s_p90": s["p90"] / 1e3,
            "videos_per_min": 60 * len(clips) / (s["median"] / 1e3),
            **env,
        }
        harness.append_result("batch", row, Path(args.out) if args.out else None)
        print(f"B={b:<3} {row['videos_per_min']:7.1f} videos/min  (median {row['wall_s']:.2f} s for {len(clips)} videos)")


if __name__ == "__main__":
    main()
