"""`v2m bench` and `v2m profile-plot` (alias `plot`): profiling commands of the CLI.

    v2m bench --model B [--video V | --duration 32 --size 1280x720] [--repeats N] [--profile report.json]
    v2m profile-plot report.json -o steps.png
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from v2m.core.errors import InputError

from .common import add_runtime_args, load_pipeline

log = logging.getLogger("v2m.cli")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return w, h


def cmd_bench(args) -> int:
    from v2m.runtime import synth
    from v2m.runtime.profiler import Profiler, format_report

    with tempfile.TemporaryDirectory(prefix="v2m-bench-") as td:
        if args.video:
            clip = Path(args.video)
            if not clip.is_file():
                raise InputError(f"{clip}: no such video")
        else:
            clip = Path(td) / "clip.mp4"
            synth.make_test_video(clip, duration_s=args.duration, size=args.size)
        pipe = load_pipeline(args)
        kw = dict(prompt=args.prompt, steps=args.steps)
        pipe.generate(clip, seed=0, profile_steps=False, **kw)  # warm-up: allocations, graph capture, compile
        prof = Profiler(device=pipe.backend.device, trace=bool(args.trace), clock=pipe.backend.step_clock())
        for r in range(args.repeats):
            res = pipe.generate(clip, seed=r + 1, profiler=prof, **kw)
            with prof.range("write"):
                res.save(Path(td) / "out.wav")
            prof.add_stage("write", res.timings["write"])
        report = prof.report(warmup_runs=1, video=str(args.video or f"synthetic {args.duration:g} s {args.size}"))
    print(format_report(report))
    if args.profile:
        from v2m.runtime.profiler import write_json_atomic

        print(f"wrote profile report {write_json_atomic(args.profile, report)}")
    if args.trace:
        print(f"wrote Chrome trace {prof.write_trace(args.trace)}")
    return 0


def cmd_profile_plot(args) -> int:
    import json

    from v2m.runtime.profiler import plot_report

    path = Path(args.report)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable profile report ({e})") from None
    if "steps" not in report or "stages" not in report:
        raise InputError(f"{path}: not a v2m profile report (no steps/stages)")
    print(f"wrote {plot_report(report, args.output)}")
    return 0


def register(sub) -> None:
    """Register `bench` and `profile-plot` (alias `plot`) on the CLI's subparsers."""
    b = sub.add_parser("bench", help="warm-up + N profiled generations; per-stage table with medians",
                       description="A warm-up generation, then N profiled ones; prints per-stage medians.",
                       examples=["v2m bench --model tiny-bundle --duration 32",
                                 "v2m bench --model full-onnx --backend onnxruntime --video clip.mp4 --repeats 5",
                                 "v2m bench --model tiny-bundle --profile report.json && v2m profile-plot report.json"])
    add_runtime_args(b)
    src = b.add_mutually_exclusive_group()
    src.add_argument("--video", default=None, help="a video to run on (default: a generated test clip)")
    src.add_argument("--duration", type=float, default=32.0, help="generated test clip length in seconds, in (0, 600]")
    b.add_argument("--size", type=_size, default=(320, 240), help="generated clip size WxH, even (default: 320x240)")
    b.add_argument("--repeats", type=int, default=3, help="profiled generations after the warm-up, in [1, 1000]")
    b.add_argument("--steps", type=int, default=None, help="sampler steps, in [1, 10000] (default: the bundle's)")
    b.add_argument("--prompt", default="warm synth pop", help="text prompt")
    b.add_argument("--profile", default=None, metavar="REPORT.json", help="write the profile report here (default: none)")
    b.add_argument("--trace", default=None, metavar="TRACE.json", help="write a Chrome trace here (default: none)")
    b.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile-plot", aliases=["plot"], help="per-step latency PNG from a profile report",
                       examples=["v2m profile-plot report.json -o steps.png"])
    p.add_argument("report", help="a profile report (v2m generate/bench --profile)")
    p.add_argument("-o", "--output", default="steps.png", help="the PNG to write")
    p.set_defaults(func=cmd_profile_plot)
