"""Video encoding of a clip slower than the curve rate: each distinct frame once vs every sample.

    python bench/bench_frame_dedup.py --preset small --fps 8 --duration 10

`Pipeline.encode_video` (decode + frame encoder) on a generated clip at `--fps`, timed
round-robin in two variants:
- repeat: every curve sample encoded, repeated frames included (the path before
  `VideoReader.sample_runs`: each batch's runs forced to one sample per row);
- dedup:  each distinct frame encoded once, its features repeated (today's path).
The two give identical features (checked here too). One JSON line per variant in
<out>/frame_dedup.jsonl with the frames encoded, ms (median, p10, p90) and the speed-up.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", choices=["tiny", "small", "full"])
    ap.add_argument("--fps", type=float, default=8.0, help="the clip's frame rate (below 12.3 repeats frames)")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--clock", default="wall", choices=sorted(harness.CLOCKS))
    ap.add_argument("--workdir", default=None, help="reuse the bundle and clip here")
    harness.add_torch_args(ap, warmup=1, iters=3)
    args = ap.parse_args()
    harness.setup_logging()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from v2m.models.bundle import init_bundle
    from v2m.runtime import Pipeline, synth, video

    work = Path(args.workdir or tempfile.mkdtemp(prefix="v2m-dedup-"))
    bundle, clip = work / f"{args.preset}-bundle", work / f"clip-{args.fps:g}fps-{args.duration:g}s.mp4"
    if not (bundle / "config.json").is_file():
        init_bundle(args.preset, bundle, seed=0)
    if not clip.is_file():
        synth.make_test_video(clip, duration_s=args.duration, fps=args.fps, size=(320, 240))
    pipe = Pipeline.from_pretrained(bundle, backend="torch", fast=False)
    seen = {"n": 0}
    encode = pipe.backend.encode_frames

    def counting(pixels):
        seen["n"] += len(pixels)
        return encode(pixels)

    pipe.backend.encode_frames = counting
    runs = video.VideoReader.sample_runs

    def one_per_sample(self, fps, size, batch_size=32, max_samples=None):  # the path before dedup
        for frames, counts in runs(self, fps, size, batch_size, max_samples):
            yield np.repeat(frames, counts, axis=0), np.ones(int(counts.sum()), np.int64)

    def variant(name):
        def fn():
            video.VideoReader.sample_runs = one_per_sample if name == "repeat" else runs
            try:
                return pipe.encode_video(clip)[0]
            finally:
                video.VideoReader.sample_runs = runs
        return fn

    fns = {name: variant(name) for name in ("repeat", "dedup")}
    frames = {}
    for name, fn in fns.items():
        seen["n"] = 0
        feats = fn()
        frames[name] = seen["n"]
        fns[name].features = feats
    same = bool(np.array_equal(fns["repeat"].features, fns["dedup"].features))
    with torch.inference_mode():
        times = harness.time_interleaved(fns, warmup=args.warmup, iters=args.iters, clock=args.clock)
    env = harness.environment("cpu")
    base = harness.summarize(times["repeat"])["median"]
    for name, ts in times.items():
        st = harness.summarize(ts)
        row = {"bench": "frame_dedup", "preset": args.preset, "variant": name, "video_fps": args.fps,
               "duration_s": args.duration, "samples": int(fns[name].features.shape[0]), "frames_encoded": frames[name],
               "features_identical": same, "ms": st["median"], "ms_p10": st["p10"], "ms_p90": st["p90"], "n": st["n"],
               "speedup_vs_repeat": base / st["median"], "clock": args.clock, "threads": torch.get_num_threads(), **env}
        harness.append_result("frame_dedup", row, Path(args.out) if args.out else None)
        print(f"{name:<7} {frames[name]:>4} frames encoded  {st['median']:>9.1f} ms  (p10 {st['p10']:.1f}, "
              f"p90 {st['p90']:.1f})  {base / st['median']:.2f}x  features identical: {same}")


if __name__ == "__main__":
    main()
