"""`v2m generate`: music for a video (several videos, a folder or --manifest: batch mode, `batch.py`)."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from v2m.core import tempfiles
from v2m.runtime.sampler import SOLVERS

from .batch import cmd_generate_batch
from .common import add_runtime_args, format_timings, load_pipeline, max_duration, request_from_args
from .creator import check_creator_args, creator_args, creator_json, run_creator
from .output import replay_command
from .serve import add_ray_args
from .support import StepProgress

log = logging.getLogger("v2m.cli")



def _check_video_job(video_path: Path, output: Path, args):
    """Everything about one video and its output that can fail before any work: the output
    path, the video (readable, a video not a still, the stream) and, for a video output,
    what its container can hold (`--reencode`), in one opening of the input (`media.inspect`,
    whose `Source` the generation reuses)."""
    from v2m.runtime import media, video

    media.check_output_path(output, video_path)
    source = media.inspect(video_path, output, args.reencode, args.video_stream)
    video.check_duration(source.info.duration_s, max_duration(args), video_path.name)
    tempfiles.clean_stale(Path(output).parent)  # what a killed run left there
    return source


def _progress_total(pipe, duration_s: float, args) -> int:
    """Sampler steps of the whole generation (windows of a long video included), from the header."""
    from v2m.core import curves
    from v2m.runtime import windows

    cfg = pipe.config
    steps = pipe.sampler_options(args.steps, args.cfg_scale).steps
    length = curves.latent_length(duration_s, cfg.latent_rate)
    if length <= cfg.sampler.max_frames:
        return steps
    overlap = windows.overlap_frames(cfg.sampler.max_frames, cfg.sampler.window_overlap)
    return steps * len(windows.plan_windows(length, cfg.sampler.max_frames, overlap))


def cmd_generate(args) -> int:
    check_creator_args(args)
    if args.duration is not None or args.candidates != 1:
        return cmd_generate_creator(args)
    if args.manifest or len(args.inputs) != 1 or Path(args.inputs[0]).is_dir() or getattr(args, "ray", None) is not None:
        return cmd_generate_batch(args)
    req = request_from_args(args)  # every option checked before any work
    video_path = Path(args.inputs[0])
    source = _check_video_job(video_path, Path(args.output), args)  # before any heavy work
    if args.profile or args.trace:
        from v2m.runtime.profiler import check_report_paths

        check_report_paths({"--profile": args.profile, "--trace": args.trace},
                           {args.output: "the output", video_path: "the input video"})
    t0 = time.perf_counter()
    pipe = load_pipeline(args)
    t_load = time.perf_counter() - t0
    profiler = None
    if args.profile or args.trace:
        from v2m.runtime.profiler import Profiler

        profiler = Profiler(device=pipe.backend.device, trace=bool(args.trace), clock=pipe.backend.step_clock())
    progress = StepProgress(_progress_total(pipe, source.info.duration_s, args), enabled=False if args.quiet else None)
    try:
        result = pipe.generate(video_path, request=req, on_step=progress, profiler=profiler, source=source,
                               max_duration_s=max_duration(args))
    finally:
        progress.close()
    with profiler.range("write") if profiler is not None else nullcontext():
        pipe.write(result.prepared, result.audio, args.output)
    out = sys.stderr if args.json else sys.stdout
    if not args.json:
        print(f"wrote {args.output} ({result.duration_s:.2f} s, seed {result.seed}, backend {result.info['backend']})")
    if profiler is not None:
        profiler.add_stage("write", result.timings["write"])
        if args.profile:
            print(f"wrote profile report {profiler.write_report(args.profile)}", file=out)
        if args.trace:
            print(f"wrote Chrome trace {profiler.write_trace(args.trace)}", file=out)
    if args.json:
        print(json.dumps(_result_json(args, video_path, result, t_load)))
    elif not args.quiet:
        print(format_timings(result.timings, result.step_ms))
    return 0


def cmd_generate_creator(args) -> int:
    """One video (or none: --duration), sampled once or as --candidates N (`creator.run_creator`)."""
    return run_creator(args, request_from_args(args), load_pipeline, _check_video_job)


def _result_json(args, video_path: Path, result, t_load: float) -> dict:
    """`v2m generate --json`: what was written, from what, every setting that replays it, and where
    the time went."""
    info = result.info
    timings = {k: round(v, 4) for k, v in result.timings.items()}
    run = {
        "output": str(args.output),
        "video": str(video_path),
        "video_stream": info.get("video_stream"),
        "model": str(args.model),
        "preset": info.get("preset"),
        "seed": result.seed,
        "prompt": result.prompt,
        "negative_prompt": info.get("negative_prompt"),
        "text_embeddings": args.text_embeddings,
        "encoder": args.encoder,
        "duration_s": round(result.duration_s, 4),
        "sample_rate": result.sample_rate,
        "backend": info.get("backend"),
        "device": info.get("device"),
        "precision": info.get("precision"),
        "steps": info.get("steps"),
        "cfg_scale": info.get("cfg_scale"),
        "solver": info.get("solver"),
        "shift": info.get("shift"),
        "use_curve": info.get("use_curve"),
        "curve_guidance": info.get("curve_guidance"),
        "keep_audio_db": args.keep_audio,
        "video_lost_s": info.get("video_lost_s"),
        "timings": {"load": round(t_load, 4), **timings, "total": round(t_load + sum(result.timings.values()), 4)},
        "step_ms_median": round(sorted(result.step_ms)[len(result.step_ms) // 2], 3) if result.step_ms else None,
        **creator_json(result.prepared.request),
    }
    run["replay"] = replay_command(run)
    return run


def register(sub) -> None:
    """Add the command's parser to the CLI's subparsers."""
    g = sub.add_parser("generate", help="generate music for a video",
                       description="Generate music for a video: muxed into a copy of it (.mp4/.mov/.mkv/.m4v) "
                                   "or alone (.wav/.flac). Several videos, a folder or --manifest run in "
                                   "batch mode (-o is then a folder).",
                       examples=["v2m generate clip.mp4 -o clip_music.mp4 --model tiny-bundle --prompt 'warm synth pop' --seed 7",
                                 "v2m generate clip.mkv -o music.wav --model tiny-onnx --backend onnxruntime --json",
                                 "v2m generate videos/ -o out/ --model tiny-bundle --batch-size 16"])
    g.add_argument("inputs", nargs="*", help="input video; or several videos / a folder (batch mode, -o is a folder)")
    g.add_argument("-o", "--output", required=True,
                   help=".mp4/.mov/.mkv/.m4v (muxed) or .wav/.flac (audio only); a folder in batch mode")
    add_runtime_args(g)
    g.add_argument("--prompt", default="",
                   help="text prompt (style, instruments, mood); 'auto': written from the video (`v2m prompt`) "
                        "(default: empty)")
    g.add_argument("--text-embeddings", default=None,
                   help="safetensors with precomputed 'embeddings' [S, E], used instead of the prompt (default: none)")
    g.add_argument("--seed", type=int, default=None,
                   help="noise seed, in [0, 2^63) (default: a random one, printed so the result can be replayed)")
    g.add_argument("--steps", type=int, default=None,
                   help="sampler steps, in [1, 10000] (default: the bundle's; `v2m info --model BUNDLE` shows it)")
    g.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance weight on the prompt, in [0, 100] (default: the bundle's)")
    g.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="what the music should not be: the unconditional branch of guidance uses this prompt "
                        "(default: zero embeddings with the prompt's mask)")
    g.add_argument("--solver", default=None, choices=SOLVERS,
                   help="euler, or heun (trapezoidal rule, two model evaluations a step); a Stable Audio Open "
                        "bundle: dpmpp-2m, dpmpp-2m-sde (SAO 1.0), pingpong, euler (SAO Small) (default: the bundle's)")
    g.add_argument("--shift", type=float, default=None, metavar="S",
                   help="SD3 timestep shift S in [0.01, 100]: S > 1 spends more steps near noise (default: the bundle's)")
    g.add_argument("--no-curve", action="store_true",
                   help="text-only baseline: the event curve is zeros in every branch (the paper's appendix)")
    g.add_argument("--curve-guidance", type=float, default=None, metavar="W",
                   help="extra guidance on the curve: the prediction with the curve against the one without it; "
                        "costs a third model batch; in [0, 100], 0 = off (default: the bundle's)")
    g.add_argument("--keep-audio", type=float, default=None, metavar="LEVEL_DB",
                   help="mix the original audio under the music at this level in dB, in [-60, 20] "
                        "(default: music only)")
    g.add_argument("--video-stream", type=int, default=None, metavar="N",
                   help="use the container's stream N (ffprobe's 'Stream #0:N') for the curve and the mux "
                        "(default: the stream marked default, else the largest that is not a cover picture)")
    g.add_argument("--reencode", default="auto", choices=["auto", "never"],
                   help="when the output container cannot hold the video's codec: auto re-encodes the picture "
                        "as H.264 (CRF 18, logged), never refuses before any work and names containers that can")
    g.add_argument("--max-duration", type=float, default=None, metavar="SECONDS",
                   help="refuse a video longer than this, from its header before decoding and from its frames' "
                        "times while decoding; 0: no limit (default: 14400, four hours; one video only)")
    g.add_argument("--json", action="store_true",
                   help="print the result as one JSON object on stdout: output, timings, and every setting that "
                        "replays the run (model, seed, steps, guidance, solver, ..., and the `replay` command line)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no timing table")
    g.add_argument("--manifest", default=None,
                   help="JSONL, one {video, prompt, seed, output} per line (batch mode) (default: none)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="batch mode: videos of one length sampled together, in [1, 1024]")
    g.add_argument("--format", default="mp4", choices=["mp4", "wav", "flac"], help="batch mode: output kind")
    g.add_argument("--overwrite", action="store_true", help="batch mode: redo outputs that are already complete")
    g.add_argument("--profile", default=None, metavar="REPORT.json",
                   help="write a per-stage / per-step profile report; in batch mode one report of the whole run "
                        "(per-video stages, each sampled group's steps with its batch size and shapes) (default: none)")
    g.add_argument("--trace", default=None, metavar="TRACE.json",
                   help="write a Chrome trace (chrome://tracing, Perfetto); in batch mode one trace of the "
                        "whole run (default: none)")
    creator_args(g)
    g.set_defaults(func=cmd_generate)

    add_ray_args(g)
