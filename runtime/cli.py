"""The `v2m` command line.

Every user-caused failure ends with one line on stderr (`v2m: error: ...`) and exit
code 2, before any heavy work wherever it can be known then: option values (see
`cli_support.CHECKS`), the input video, the output path and what its container can
hold. `--debug` shows tracebacks. Results go to stdout (one JSON object with
`--json`), logs and the progress bar to stderr.

Exit codes: 0 ok; 1 internal error (a bug: rerun with --debug); 2 bad input, option
or usage (batch mode: some video failed on its input, see summary.json); 128 + N
when ended by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), temporary files removed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from . import __version__, tempfiles
from .cli_support import ArgumentParser, StepProgress, UsageError, check_options
from .encoders import ENCODER_KINDS
from .errors import (
    EXIT_INTERNAL,
    EXIT_USAGE,
    EXTRAS,
    InputError,
    V2MError,
    install_hint,
    require,
    signal_exit_code,
)
from .sao import PRESET_NAMES as SAO_PRESET_NAMES

log = logging.getLogger("v2m.cli")

EXIT_USER_ERROR = EXIT_USAGE  # the old name

EXIT_CODES_HELP = """exit codes:
  0        success
  1        internal error: a bug (rerun with --debug for the traceback)
  2        bad input, option value or usage; unwritable output; a missing extra
           (batch mode: some videos failed on their input; see summary.json)
  128+N    ended by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP); temporary files removed"""


# --- helpers -----------------------------------------------------------------------------
def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="v2m: %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _add_runtime_args(p: argparse.ArgumentParser, model_default: str | None = None) -> None:
    p.add_argument("--model", "-m", required=model_default is None, default=model_default,
                   help="bundle directory (v2m init-model / v2m export / v2m train), or `demo` (the installed "
                        "trained demo bundle)" + (f" (default: {model_default})" if model_default else ""))
    p.add_argument("--encoder", default=None, choices=ENCODER_KINDS,
                   help="frame encoder of the event curve (default: the bundle's); cut and motion are weight-free")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                   help="inference engine; auto: TensorRT on a GPU for an exported bundle; on a CPU ONNX Runtime for "
                        "every bundle (one without graphs exported on first use into $V2M_CACHE_DIR, default "
                        "~/.cache/v2m/onnx); else PyTorch")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when PyTorch sees a GPU)")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16", "int8"],
                   help="compute precision (default: fp16 on CUDA, fp32 on CPU); int8: ONNX Runtime on a CPU, "
                        "the DiT step and frame encoder quantized, refused below its accuracy gate")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="torch backend: fast path (CUDA-graphed sampler step, chunked VAE) (default: on for CUDA + fp16)")
    p.add_argument("--compile", default="none", choices=["none", "inductor"], help="torch fast path: torch.compile the DiT backbone")
    p.add_argument("--kernels", default="torch", choices=["torch", "triton"],
                   help="torch fast path: fused Triton kernels for the DiT's norm/modulate/residual and RoPE "
                        "(an alternative to --compile)")
    p.add_argument("--vae-precision", default=None, choices=["fp16", "bf16", "fp32"],
                   help="torch fast path: VAE decoder precision (fp32: exact Snake phases) (default: --precision's)")
    p.add_argument("--engine-cache", default=None, metavar="DIR",
                   help="tensorrt backend: where engines are built and found (default: BUNDLE/engines)")
    _add_threads_arg(p)


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the model's operators, >= 1 (default: OMP_NUM_THREADS if set, else the "
                        "physical cores this process may use)")


def _precision(args) -> str:
    if args.precision:
        return args.precision
    return "fp16" if str(args.device).startswith("cuda") else "fp32"


def _load_pipeline(args):
    from .backends import resolve_backend, torch_options_asked
    from .pipeline import Pipeline

    if args.backend == "torch":
        require("torch", what="--backend torch")
    # backend and device auto resolved without importing a framework (the CUDA driver says
    # whether there is a GPU): a torch-free install with onnxruntime-gpu or TensorRT uses it
    torch_options = torch_options_asked(getattr(args, "fast", None), getattr(args, "compile", "none"),
                                        getattr(args, "kernels", "torch"), getattr(args, "vae_precision", None))
    args.backend, args.device = resolve_backend(args.backend, args.model, args.device, args.precision, torch_options)
    return Pipeline.from_pretrained(
        args.model, backend=args.backend, device=args.device, precision=_precision(args),
        fast=getattr(args, "fast", None), compile=getattr(args, "compile", "none"),
        kernels=getattr(args, "kernels", "torch"), engine_cache=getattr(args, "engine_cache", None),
        vae_precision=getattr(args, "vae_precision", None), encoder=getattr(args, "encoder", None),
        threads=getattr(args, "threads", None),
    )


def _sampler_kwargs(args) -> dict:
    """The generate options that shape the sampler, as `Pipeline.generate` keywords."""
    return {
        "negative_prompt": args.negative_prompt, "solver": args.solver, "shift": args.shift,
        "use_curve": not args.no_curve, "curve_guidance": args.curve_guidance,
    }


def _check_sampler_options(args) -> None:
    """The sampler checks that join two options (each value alone is in `cli_support.CHECKS`)."""
    if args.no_curve and args.curve_guidance:
        raise InputError("curve guidance needs the curve: drop --no-curve or --curve-guidance")
    if args.negative_prompt is not None and args.text_embeddings:
        raise InputError("--negative-prompt needs the bundle's text encoder; it cannot be combined with --text-embeddings")


def format_timings(timings: dict[str, float], step_ms: list[float] | None = None) -> str:
    from .pipeline import STAGES

    total = sum(timings.values())
    lines = [f"{'stage':<10} {'seconds':>9} {'share':>7}"]
    for stage in STAGES:
        if stage in timings:
            s = timings[stage]
            lines.append(f"{stage:<10} {s:>9.3f} {100 * s / max(total, 1e-9):>6.1f}%")
    lines.append(f"{'total':<10} {total:>9.3f}")
    if step_ms:
        import numpy as np

        a = np.asarray(step_ms)
        lines.append(
            f"sampler step: median {np.median(a):.2f} ms, p10 {np.percentile(a, 10):.2f}, "
            f"p90 {np.percentile(a, 90):.2f} over {a.size} steps"
        )
    return "\n".join(lines)


# --- commands ----------------------------------------------------------------------------
def cmd_init_model(args) -> int:
    require("torch", what="`v2m init-model`")
    import torch

    from v2m.models.bundle import init_bundle

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    out = init_bundle(args.preset, args.output, seed=args.seed, dtype=dtype, overwrite=args.overwrite,
                      encoder=args.encoder)
    print(f"wrote {args.preset} bundle (random weights, seed {args.seed}, {args.encoder} encoder) to {out}")
    return 0


def _check_video_job(video_path: Path, output: Path, args) -> str:
    """Everything about one video and its output that can fail before any work: the output
    path, the video (readable, a video not a still, the stream) and, for a video output,
    what its container can hold (`--reencode`). Returns the output's kind."""
    from . import media, video

    kind = media.check_output_path(output, video_path)
    video.probe(video_path, args.video_stream)
    if kind == "video":
        media.plan_mux(video_path, output, args.reencode, args.video_stream)
    tempfiles.clean_stale(Path(output).parent)  # what a killed run left there
    return kind


def _progress_total(pipe, video_path: Path, args) -> int:
    """Sampler steps of the whole generation (windows of a long video included), from the header."""
    from . import curves, video, windows

    cfg = pipe.config
    steps = pipe.sampler_options(args.steps, args.cfg_scale).steps
    length = curves.latent_length(video.probe(video_path, args.video_stream).duration_s, cfg.latent_rate)
    if length <= cfg.sampler.max_frames:
        return steps
    overlap = windows.overlap_frames(cfg.sampler.max_frames, cfg.sampler.window_overlap)
    return steps * len(windows.plan_windows(length, cfg.sampler.max_frames, overlap))


def cmd_generate(args) -> int:
    if args.manifest or len(args.inputs) != 1 or Path(args.inputs[0]).is_dir() or getattr(args, "ray", None) is not None:
        return cmd_generate_batch(args)
    _check_sampler_options(args)
    video_path = Path(args.inputs[0])
    kind = _check_video_job(video_path, Path(args.output), args)  # before any heavy work
    if args.profile or args.trace:
        from .profiler import check_report_paths

        check_report_paths({"--profile": args.profile, "--trace": args.trace},
                           {args.output: "the output", video_path: "the input video"})
    t0 = time.perf_counter()
    pipe = _load_pipeline(args)
    t_load = time.perf_counter() - t0
    profiler = None
    if args.profile or args.trace:
        from .profiler import Profiler

        profiler = Profiler(device=pipe.backend.device, trace=bool(args.trace), clock=pipe.backend.step_clock())
    progress = StepProgress(_progress_total(pipe, video_path, args), enabled=False if args.quiet else None)
    try:
        result = pipe.generate(
            video_path,
            prompt=args.prompt,
            seed=args.seed,
            steps=args.steps,
            cfg_scale=args.cfg_scale,
            text_embeddings=args.text_embeddings,
            video_stream=args.video_stream,
            on_step=progress,
            profiler=profiler,
            **_sampler_kwargs(args),
        )
    finally:
        progress.close()
    with profiler.range("write") if profiler is not None else nullcontext():
        if kind == "video":
            result.mux(video_path, args.output, keep_audio_db=args.keep_audio, reencode=args.reencode)
        else:
            result.save(args.output)
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


def _result_json(args, video_path: Path, result, t_load: float) -> dict:
    """`v2m generate --json`: what was written, from what, and where the time went."""
    info = result.info
    timings = {k: round(v, 4) for k, v in result.timings.items()}
    return {
        "output": str(args.output),
        "video": str(video_path),
        "video_stream": info.get("video_stream"),
        "seed": result.seed,
        "prompt": result.prompt,
        "duration_s": round(result.duration_s, 4),
        "sample_rate": result.sample_rate,
        "backend": info.get("backend"),
        "device": info.get("device"),
        "precision": info.get("precision"),
        "steps": info.get("steps"),
        "cfg_scale": info.get("cfg_scale"),
        "video_lost_s": info.get("video_lost_s"),
        "timings": {"load": round(t_load, 4), **timings, "total": round(t_load + sum(result.timings.values()), 4)},
        "step_ms_median": round(sorted(result.step_ms)[len(result.step_ms) // 2], 3) if result.step_ms else None,
    }


def cmd_generate_batch(args) -> int:
    """Batch mode: a folder, several videos or --manifest; -o is a folder. Exit 2 when a video
    failed on its input (or output), 1 when one failed from a bug; 0 when none failed.

    --profile writes one report of the whole run (per-video stages, each sampled group's steps
    with its B and shapes, stage totals, wall time); --trace one Chrome trace of it. Both are
    also written when the run is interrupted (what ran until then).
    """
    from . import batch

    _check_sampler_options(args)
    if args.manifest and args.inputs:
        raise InputError("give either input videos or --manifest, not both")
    if not args.manifest and not args.inputs:
        raise InputError("give input videos, a folder, or --manifest")
    if args.video_stream is not None:
        raise InputError("--video-stream picks a stream of one video; in batch mode each video uses its default stream")
    out_dir = Path(args.output)
    if out_dir.suffix.lower() in (".mp4", ".mov", ".mkv", ".m4v", ".wav", ".flac") and not out_dir.is_dir():
        raise InputError(f"with several inputs -o is a folder, not {batch.show(out_dir)}")
    if args.manifest:
        jobs = batch.read_manifest(args.manifest, prompt=args.prompt, seed=args.seed)
    else:
        jobs = batch.collect_inputs(args.inputs, out_dir, prompt=args.prompt, seed=args.seed)
    batch.check_output_dir(out_dir)  # before loading the model
    batch.assign_outputs(jobs, out_dir, args.format)
    if args.reencode == "never" and args.format == "mp4":
        _refuse_reencodes(jobs)
    if getattr(args, "ray", None) is not None:  # the same jobs on a Ray cluster (v2m.serve.ray_batch)
        from v2m.serve.ray_batch import cmd_generate_ray

        return cmd_generate_ray(args, jobs, out_dir)
    profiling = bool(args.profile or args.trace)
    if profiling:  # before loading the model: a long run must not end in an unwritable report
        from .profiler import check_report_paths

        taken = {out_dir / batch.SUMMARY_NAME: "the batch summary"}
        for j in jobs:
            if j.output is not None:
                taken[j.output] = f"the output of {batch.show(j.video)}"
                taken[j.output.with_name(j.output.name + batch.SIDECAR_SUFFIX)] = f"the sidecar of {batch.show(j.output)}"
        check_report_paths({"--profile": args.profile, "--trace": args.trace}, taken)
    pipe = _load_pipeline(args)
    opts = batch.BatchOptions(
        out_dir, format=args.format, batch_size=args.batch_size, steps=args.steps, cfg_scale=args.cfg_scale,
        **_sampler_kwargs(args), overwrite=args.overwrite, keep_audio_db=args.keep_audio, text_embeddings=args.text_embeddings,
        progress=False if args.quiet else None,
    )
    profiler = None
    if profiling:
        from .profiler import Profiler, format_report, write_json_atomic

        profiler = Profiler(device=pipe.backend.device, trace=bool(args.trace), clock=pipe.backend.step_clock())

    def write_profile():
        """Write --profile / --trace; returns the report (None without --profile)."""
        report = None
        if args.profile:
            report = profiler.report()
            print(f"wrote profile report {write_json_atomic(args.profile, report)}")
        if args.trace:
            print(f"wrote Chrome trace {profiler.write_trace(args.trace)}")
        return report

    try:
        summary = batch.run_batch(pipe, jobs, opts, profiler=profiler)
    except KeyboardInterrupt:
        if profiler is not None:
            try:
                write_profile()  # what ran until the interrupt
            except OSError as e:
                log.warning("could not write the profile of the interrupted run: %s", e)
        raise
    counts = {s: summary.count(s) for s in ("ok", "failed", "skipped")}
    if args.json:
        print(json.dumps({"summary": batch.show(summary.path), **counts, "wall_s": round(summary.wall_s, 3)}))
    else:
        print(f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped "
              f"in {summary.wall_s:.1f} s; summary in {batch.show(summary.path)}")
    if profiler is not None:
        report = write_profile()
        if report is not None and not args.quiet and not args.json:
            print(format_report(report))
    return batch_exit_code(summary)


def batch_exit_code(summary) -> int:
    """0 when every video is ok or skipped; 1 when a failure was a bug; else 2 (bad input)."""
    failed = [j for j in summary.jobs if j.status == "failed"]
    if any((j.reason or "").startswith("internal error") for j in failed):
        return EXIT_INTERNAL
    return EXIT_USAGE if failed else 0


def _refuse_reencodes(jobs) -> None:
    """--reencode never in batch mode: fail (before the model loads) the videos whose codec
    their .mp4 output cannot hold; the others run, copied."""
    from . import media

    for j in jobs:
        if j.status != "pending" or j.output is None or not Path(j.video).is_file():
            continue
        try:
            media.plan_mux(j.video, j.output, "never")
        except V2MError as e:
            j.fail(str(e))


def cmd_curve(args) -> int:
    from . import video
    from .music import AUDIO_SUFFIXES

    if Path(args.video).suffix.lower() in AUDIO_SUFFIXES:
        return cmd_music_curve(args)
    video.probe(args.video, args.video_stream)  # before loading the model
    pipe = _load_pipeline(args)
    res = pipe.curve(args.video, video_stream=args.video_stream)
    if args.json:
        print(json.dumps({
            "video": str(args.video),
            "duration_s": res.duration_s,
            "curve_fps": res.curve_fps,
            "latent_rate": res.latent_rate,
            "frames": res.num_frames,
            "impl": res.curve_impl,
            "curve": [round(float(v), 6) for v in res.curve],
        }))
    else:
        from .curves import curve_peaks

        peaks = curve_peaks(res.curve, 5)
        print(f"{args.video}: {res.duration_s:.2f} s, {res.num_frames} frames at {res.curve_fps:.3f} fps, "
              f"curve of {res.curve.size} latent frames ({res.curve_impl})")
        print("strongest events at: " + ", ".join(f"{i / res.latent_rate:.2f} s" for i in peaks))
    if args.plot:
        from .evaluate import plot_curve

        path, source = plot_curve(args.video, res.curve, res.latent_rate, args.plot)
        print(f"wrote {path} (cuts from {source})", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_music_curve(args) -> int:
    """`v2m curve music.wav`: the music event curve, in the conventions of --model (default: demo)."""
    from .bundle import load_config
    from .curves import curve_peaks, latent_length
    from .demo import resolve_model
    from .music import MusicEncoder, load_audio, music_curve

    cfg = load_config(resolve_model(args.model))
    audio, sr = load_audio(args.video)
    duration = audio.shape[1] / sr
    curve = music_curve(audio, sr, latent_length(duration, cfg.latent_rate), cfg.latent_rate, cfg.curve.kernel)
    enc = MusicEncoder(sr)
    if args.json:
        print(json.dumps({
            "audio": str(args.video), "duration_s": duration, "curve_fps": enc.fps, "latent_rate": cfg.latent_rate,
            "frames": int(audio.shape[1] // enc.hop + 1), "impl": "numpy", "encoder": "music",
            "curve": [round(float(v), 6) for v in curve],
        }))
    else:
        peaks = curve_peaks(curve, 5)
        print(f"{args.video}: {duration:.2f} s of audio, music features at {enc.fps:.2f} frames/s, "
              f"curve of {curve.size} latent frames (numpy)")
        print("strongest events at: " + ", ".join(f"{i / cfg.latent_rate:.2f} s" for i in peaks))
    if args.plot:
        from .evaluate import plot_music_curve

        path = plot_music_curve(args.video, audio, sr, curve, cfg.latent_rate, args.plot)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_folder, format_side_by_side, require_eval

    require_eval("scenedetect")  # one line if the [eval] extra is missing, before any work: cuts for every measure
    sch = not args.no_curves  # SCH alone needs librosa; without it the curve measures still run
    if args.no_curves:
        require_eval("librosa")
    else:
        try:
            require_eval("librosa")
        except V2MError:
            sch = False
            log.warning("librosa is not installed: Scene Cut Hit is n/a (pip install 'v2m-runtime[eval]'); "
                        "curve correlation, cut hits and flatness need no extra")
    curve_fn = music_fn = None
    rate = 44100 / 3584
    if not args.no_curves:
        from .music import music_curve

        pipe = _load_pipeline(args)
        rate, kernel = pipe.config.latent_rate, pipe.config.curve.kernel
        curve_fn = lambda video: pipe.curve(video).curve
        music_fn = lambda audio, sr, n: music_curve(audio, sr, n, rate, kernel)
    kw = dict(tolerance=args.tolerance, curve_fn=curve_fn, music_fn=music_fn, latent_rate=rate,
              cut_tolerance=args.cut_tolerance, sch=sch)
    report = evaluate_folder(args.outputs, args.videos, **kw)
    if args.baseline:
        base = evaluate_folder(args.baseline, args.videos, **kw)
        if args.json:
            print(json.dumps({"with_curve": json.loads(report.to_json()), "no_curve": json.loads(base.to_json())}, indent=2))
        else:
            print(report.table())
            print(f"\n--baseline {args.baseline} (generated with --no-curve):")
            print(base.table())
            print()
            print(format_side_by_side(report, base))
        return 0
    print(report.to_json() if args.json else report.table())
    return 0


def cmd_info(args) -> int:
    import importlib.util
    import platform

    from .backends import available_backends

    info: dict = {"v2m": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for mod in ("numpy", "av", "soundfile", "safetensors", "torch", "onnx", "onnxruntime", "tensorrt", "triton"):
        if importlib.util.find_spec(mod) is None:
            info[mod] = None
            continue
        try:
            info[mod] = getattr(__import__(mod), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a broken optional install is reported, not fatal
            info[mod] = f"broken ({type(e).__name__})"
    info["backends"] = available_backends()
    devices = ["cpu"]
    if info.get("torch"):
        import torch

        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if info.get("onnxruntime"):
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    info["devices"] = devices
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:<22} {v if v is not None else '-'}")
    return 0


# Irregular cuts for the demo clip, in seconds (scaled to --duration): not on any beat grid.
DEMO_CUTS = (1.7, 3.9, 5.4, 8.1)


def cmd_demo(args) -> int:
    import os
    import tempfile

    from . import media, synth
    from .curves import curve_peaks
    from .music import music_curve

    # Before torch is imported: idle OpenMP threads sleep instead of spinning. The demo model
    # is small, so a step is many tiny parallel regions; on a busy CPU a spinning thread
    # waits out whole time slices (measured on a loaded 2-core machine: 484 ms a sampler
    # step spinning, 11 ms sleeping). An OMP_WAIT_POLICY already set is left alone.
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        log.info("demo: OMP_WAIT_POLICY=PASSIVE")

    out = Path(args.output)
    kind = media.check_output_path(out)  # a video (muxed) or .wav/.flac (the music alone)
    if args.plot:
        from .profiler import check_report_paths

        check_report_paths({"--plot": args.plot}, {args.output: "the output"})
    if args.preset:
        require("torch", what="`v2m demo --preset` (it makes a random-weight PyTorch bundle)")
        if args.backend == "onnxruntime":
            raise InputError("`v2m demo --preset` makes a PyTorch bundle; run it with --backend torch (or auto)")
    elif args.backend == "torch":
        require("torch", what="`v2m demo --backend torch`")
    tempfiles.clean_stale(out.parent)
    # The work folder (bundle, test clip) is removed at the end unless --workdir keeps it.
    keep = args.workdir is not None
    base = None
    with nullcontext(args.workdir) if keep else tempfile.TemporaryDirectory(prefix="v2m-demo-") as workdir:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if args.preset:  # a random-weight bundle: every stage with real shapes, structured noise out
            bundle = work / f"{args.preset}-bundle"
            if not (bundle / "config.json").is_file():
                import torch

                from v2m.models.bundle import init_bundle

                init_bundle(args.preset, bundle, seed=0, dtype=torch.float32)
            args.model = str(bundle)
            what = f"{args.preset} bundle with RANDOM weights (the music is noise until you load a trained checkpoint)"
        else:
            what = f"trained bundle {args.model}" + (" (installed with v2m; README: The demo model)"
                                                     if args.model == "demo" else "")
        clip = work / "clip.mp4"
        cuts = synth.make_test_video(clip, duration_s=args.duration,
                                     cuts=tuple(c * args.duration / 10.0 for c in DEMO_CUTS))
        t_setup = time.perf_counter() - t0
        print(f"demo: {what}")
        print(f"demo: test video {clip if keep else 'clip.mp4'} ({args.duration:.1f} s, scene cuts at "
              f"{', '.join(f'{c:.2f}' for c in cuts) or 'none'} s)")

        pipe = _load_pipeline(args)
        progress = StepProgress(pipe.sampler_options().steps)
        try:
            result = pipe.generate(clip, prompt=args.prompt, seed=args.seed, on_step=progress)
        finally:
            progress.close()
        if kind == "video":
            result.mux(clip, out)
        else:
            result.save(out)
        if args.plot:  # the figure of README's demo section: one more generation, without the curve
            base = pipe.generate(clip, prompt=args.prompt, seed=args.seed, use_curve=False, profile_steps=False)
    rate, kernel = pipe.config.latent_rate, pipe.config.curve.kernel
    music = music_curve(result.audio, result.sample_rate, result.curve.size, rate, kernel)
    print(f"demo: video event curve peaks at {', '.join(f'{i / rate:.2f}' for i in curve_peaks(result.curve, len(cuts)))} s")
    print(f"demo: music event curve peaks at {', '.join(f'{i / rate:.2f}' for i in curve_peaks(music, len(cuts)))} s")
    print(f"wrote {out} ({result.duration_s:.2f} s, seed {result.seed}, backend {result.info['backend']} "
          f"on {result.info['device']}, setup {t_setup:.2f} s)")
    print(format_timings(result.timings, result.step_ms))
    if base is not None:
        from .evaluate import curve_correlation, plot_alignment

        base_music = music_curve(base.audio, base.sample_rate, result.curve.size, rate, kernel)
        r, r0 = curve_correlation(music, result.curve), curve_correlation(base_music, result.curve)
        path = plot_alignment(result.curve, {f"music event curve of the output (r = {r:.2f})": music,
                                             f"the same without the curve, --no-curve (r = {r0:.2f})": base_music},
                              cuts, rate, args.plot,
                              title=f"v2m demo: {Path(args.model).name} bundle, {args.duration:g} s test video, "
                                    f"seed {args.seed}")
        print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    require("torch", "onnx", what="`v2m export`", extra="export")
    if not args.no_check:
        require("onnxruntime", what="`v2m export`'s check against PyTorch (or pass --no-check)", extra="export")
    if not Path(args.bundle).is_dir():
        raise InputError(f"bundle {args.bundle} is not a directory; pass a PyTorch bundle (v2m init-model)")
    from v2m.export.exporter import export_bundle

    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    bad = [p for p in precisions if p not in ("fp32", "fp16", "bf16", "int8")]
    if bad or not precisions:
        raise InputError(f"--precision {args.precision!r}: give fp32, fp16, bf16 and/or int8, comma-separated")
    res = export_bundle(
        args.bundle, args.output, opset=args.opset, check=not args.no_check, with_weights=args.with_weights,
        on_check=lambda r: print(r.line(), flush=True), precisions=precisions,
    )
    print(f"wrote {res.out_dir} ({', '.join(sorted(res.graphs))} graphs, {res.manifest.name}) "
          f"in {res.seconds['total']:.1f} s")
    return 0


def cmd_build(args) -> int:
    from v2m.export.tensorrt_build import build_engines

    kind, _, idx = args.device.partition(":")
    if kind != "cuda" or (idx and not idx.isdigit()):
        raise InputError(f"--device {args.device!r}: TensorRT engines are built on a CUDA device (cuda or cuda:N)")
    paths = build_engines(args.bundle, precision=args.precision, cache_dir=args.cache_dir,
                          device_id=int(idx or 0), force=args.force)
    for name, path in paths.items():
        print(f"{name:<8} {path}")
    return 0


# --- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="v2m", description="Zero-pair video-to-music generation (V2M-Zero) runtime.",
        examples=["v2m demo -o demo.mp4",
                  "v2m generate clip.mp4 -o clip_music.mp4 --model tiny-bundle --prompt 'warm synth pop'",
                  "v2m generate clip.mp4 --help"],
    )
    p.epilog += "\n\n" + EXIT_CODES_HELP
    p.add_argument("--version", action="version", version=f"v2m {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging: -v info, -vv debug (default: warnings and errors only)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="a test video with cuts, music from the trained demo bundle, muxed",
                       description="Make a test clip with scene cuts, generate music for it with the installed "
                                   "trained demo bundle (or --model, or a random-weight --preset), write the "
                                   "result. Runs with ONNX Runtime or PyTorch (--preset needs PyTorch).",
                       examples=["v2m demo -o demo.mp4", "v2m demo -o demo.wav --duration 6 --seed 3 --plot demo.png",
                                 "v2m demo --preset small --workdir demo-work -o demo.mkv"])
    d.add_argument("-o", "--output", default="demo.mp4",
                   help="the result: a video (.mp4/.mov/.mkv/.m4v, music muxed into the test clip) or "
                        "the music alone (.wav/.flac)")
    d.add_argument("--model", "-m", default="demo", help="bundle (default: demo, the installed trained one)")
    d.add_argument("--encoder", default=None, choices=ENCODER_KINDS,
                   help="frame encoder (default: the bundle's)")
    d.add_argument("--preset", default=None, choices=["tiny", "small", "full"],
                   help="instead of --model: a random-weight bundle of this preset (structured noise out) (default: none)")
    d.add_argument("--workdir", default=None,
                   help="keep the bundle and test clip in this folder (default: a temporary folder, removed)")
    d.add_argument("--duration", type=float, default=10.0, help="test clip length in seconds, in (0, 600]")
    d.add_argument("--prompt", default="medium 120 bpm major groove, backbeat drums, warm pad, bass", help="text prompt")
    d.add_argument("--plot", default=None, metavar="PNG",
                   help="also save the video curve, the output's music curve (with and without the curve) and "
                        "the cuts (matplotlib; a second generation with --no-curve) (default: none)")
    d.add_argument("--seed", type=int, default=0, help="noise seed, in [0, 2^63)")
    d.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "tensorrt"],
                   help="inference engine; auto: ONNX Runtime on a CPU for the demo bundle (it ships its "
                        "graphs), else PyTorch")
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    d.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                   help="compute precision (default: fp16 on CUDA, fp32 on CPU)")
    _add_threads_arg(d)
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("init-model", help="write a random-weight bundle of a preset",
                       description="Write a bundle of a preset with random weights (for tests and timing). "
                                   "Needs PyTorch.",
                       examples=["v2m init-model -o tiny-bundle",
                                 "v2m init-model --encoder cut -o tiny-cut-bundle",
                                 "v2m init-model --preset full --dtype fp16 --seed 1 -o full-bundle"])
    i.add_argument("--preset", default="tiny", choices=["tiny", "small", "full", *SAO_PRESET_NAMES], help="model size")
    i.add_argument("--seed", type=int, default=0, help="weight seed, in [0, 2^63)")
    i.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="weight precision on disk")
    i.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    i.add_argument("--encoder", default="dinov2", choices=ENCODER_KINDS,
                   help="frame encoder: dinov2 (random weights), or weight-free cut / motion (default: dinov2)")
    i.add_argument("-o", "--output", required=True, help="the bundle directory to write")
    i.set_defaults(func=cmd_init_model)

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
    _add_runtime_args(g)
    g.add_argument("--prompt", default="", help="text prompt (style, instruments, mood) (default: empty)")
    g.add_argument("--text-embeddings", default=None,
                   help="safetensors with precomputed 'embeddings' [S, E], used instead of the prompt (default: none)")
    g.add_argument("--seed", type=int, default=None,
                   help="noise seed, in [0, 2^63) (default: a random one, printed so the result can be replayed)")
    g.add_argument("--steps", type=int, default=None,
                   help="sampler steps, in [1, 10000] (default: the bundle's, 96)")
    g.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance weight on the prompt, finite (default: the bundle's)")
    g.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="what the music should not be: the unconditional branch of guidance uses this prompt "
                        "(default: zero embeddings with the prompt's mask)")
    g.add_argument("--solver", default=None, choices=["euler", "heun"],
                   help="euler, or heun (trapezoidal rule, two model evaluations a step) (default: the bundle's, euler)")
    g.add_argument("--shift", type=float, default=None, metavar="S",
                   help="SD3 timestep shift S > 0: S > 1 spends more steps near noise (default: the bundle's, 1)")
    g.add_argument("--no-curve", action="store_true",
                   help="text-only baseline: the event curve is zeros in every branch (the paper's appendix)")
    g.add_argument("--curve-guidance", type=float, default=None, metavar="W",
                   help="extra guidance on the curve: the prediction with the curve against the one without it; "
                        "costs a third model batch (default: the bundle's, 0 = off)")
    g.add_argument("--keep-audio", type=float, default=None, metavar="LEVEL_DB",
                   help="mix the original audio under the music at this level in dB, in [-60, 20] "
                        "(default: music only)")
    g.add_argument("--video-stream", type=int, default=None, metavar="N",
                   help="use the container's stream N (ffprobe's 'Stream #0:N') for the curve and the mux "
                        "(default: the stream marked default, else the largest that is not a cover picture)")
    g.add_argument("--reencode", default="auto", choices=["auto", "never"],
                   help="when the output container cannot hold the video's codec: auto re-encodes the picture "
                        "as H.264 (CRF 18, logged), never refuses before any work and names containers that can")
    g.add_argument("--json", action="store_true",
                   help="print the result (output, seed, duration, timings...) as one JSON object on stdout")
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
    g.set_defaults(func=cmd_generate)

    from v2m.serve.cli import add_ray_args, add_serve_parser

    add_ray_args(g)
    from .cli_bench import add_bench_parsers
    from .cli_convert import add_convert_parser
    from .cli_train import add_train_parsers

    add_bench_parsers(sub, _add_runtime_args)
    add_convert_parser(sub)
    add_serve_parser(sub, _add_runtime_args)
    add_train_parsers(sub)

    c = sub.add_parser("curve", help="print the event curve of a video, or of music (.wav, .flac, .mp3, ...)",
                       description="Print the event curve (when the video, or the music, changes) at the latent "
                                   "frame rate, in the conventions of --model.",
                       examples=["v2m curve clip.mp4 --model tiny-bundle --json > curve.json",
                                 "v2m curve clip.mp4 --encoder motion --plot curve.png",
                                 "v2m curve music.wav --json"])
    c.add_argument("video", help="a video, or an audio file (its music event curve)")
    _add_runtime_args(c, model_default="demo")
    c.add_argument("--video-stream", type=int, default=None, metavar="N",
                   help="use the container's stream N (default: the stream marked default, else the largest)")
    c.add_argument("--json", action="store_true", help="print the curve as one JSON object")
    c.add_argument("--plot", default=None, metavar="PNG",
                   help="save the curve with cuts and thumbnails (matplotlib) (default: none)")
    c.set_defaults(func=cmd_curve)

    e = sub.add_parser("eval", help="SCH, curve correlation, cut hits and flatness of generated music vs its videos",
                       description="Measure generated outputs against their source videos: Scene Cut Hit "
                                   "(needs the [eval] extra's librosa), curve correlation, cut hits and "
                                   "spectral flatness; --baseline puts a --no-curve run beside it.",
                       examples=["v2m eval out/ --videos videos/",
                                 "v2m eval out/ --videos videos/ --baseline base/",
                                 "v2m eval out/ --videos videos/ --tolerance 0.25 --json"])
    e.add_argument("outputs", help="folder of generated audio or muxed videos")
    e.add_argument("--videos", required=True, help="folder of the source videos (matched by file name)")
    e.add_argument("--tolerance", type=float, default=0.5,
                   help="seconds between a cut and a beat for an SCH hit, in (0, 10]")
    e.add_argument("--cut-tolerance", type=float, default=0.25,
                   help="seconds between a cut and a music-curve peak, in (0, 10]")
    e.add_argument("--baseline", default=None, metavar="DIR",
                   help="outputs generated with --no-curve: both are measured and printed side by side (default: none)")
    e.add_argument("--no-curves", action="store_true", help="SCH only (no curve correlation, cut hits, flatness)")
    _add_runtime_args(e, model_default="demo")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=cmd_eval)

    n = sub.add_parser("info", help="versions, devices, backends",
                       examples=["v2m info", "v2m info --json"])
    n.add_argument("--json", action="store_true", help="print as JSON")
    n.set_defaults(func=cmd_info)

    x = sub.add_parser("export", help="export a bundle's networks to ONNX (checked against PyTorch)",
                       description="Export a PyTorch bundle to ONNX graphs plus a manifest. Needs the [export] extra.",
                       examples=["v2m export tiny-bundle -o tiny-onnx",
                                 "v2m export full-bundle -o full-onnx --no-check --with-weights"])
    x.add_argument("bundle", help="a PyTorch bundle directory")
    x.add_argument("-o", "--output", required=True, help="the exported bundle (may be the bundle itself)")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or newer")
    x.add_argument("--precision", default="fp32", metavar="P[,P]",
                   help="graph sets to write, comma-separated: fp32 (ONNX Runtime on CPU), fp16, bf16 (strongly typed "
                        "graphs with fp32 islands for TensorRT and ONNX Runtime's CUDA provider), int8 (ONNX Runtime on "
                        "CPU, with fp32; refused below its accuracy gate) (default: fp32)")
    x.add_argument("--with-weights", action="store_true",
                   help="copy the .safetensors too (the torch backend can then run it)")
    x.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("build", help="build TensorRT engines for an exported bundle",
                       description="Build TensorRT engines for an exported bundle on this GPU. Needs the [trt] extra.",
                       examples=["v2m build tiny-onnx", "v2m build full-onnx --precision bf16 --device cuda:1"])
    b.add_argument("bundle", help="an exported bundle directory (v2m export)")
    b.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"], help="engine precision")
    b.add_argument("--cache-dir", default=None, help="where engines live (default: BUNDLE/engines)")
    b.add_argument("--device", default="cuda", help="cuda or cuda:N")
    b.add_argument("--force", action="store_true", help="rebuild even when a matching engine exists")
    b.set_defaults(func=cmd_build)
    return p


def _missing_module(e: ImportError) -> str | None:
    """The optional package an ImportError is about (torch, onnx...), else None."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    return name if name in EXTRAS else None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as e:
        print(f"v2m: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args.verbose, getattr(args, "quiet", False))
    # SIGTERM / SIGHUP unwind like Ctrl-C (every `finally` runs, temporary files go).
    with tempfiles.signals_as_interrupts():
        try:
            check_options(args)  # every option value, before any work
            return int(args.func(args) or 0)
        except V2MError as e:
            if args.debug:
                raise
            print(f"v2m: error: {e}", file=sys.stderr)
            return e.exit_code
        except KeyboardInterrupt as e:
            tempfiles.remove_live()
            print(f"v2m: interrupted ({e.args[0] if e.args else 'SIGINT'})", file=sys.stderr)
            return signal_exit_code(e)
        except MemoryError:
            print("v2m: error: out of memory; try a smaller preset, a shorter clip or a GPU", file=sys.stderr)
            return EXIT_USAGE
        except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
            if args.debug:
                raise
            module = _missing_module(e) if isinstance(e, ImportError) else None
            if module is not None:  # an optional package this command needs
                print(f"v2m: error: `v2m {args.command}` needs {module}, not installed here: "
                      f"{install_hint(module)}", file=sys.stderr)
                return EXIT_USAGE
            msg = str(e).splitlines()[0] if str(e) else ""
            print(f"v2m: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)",
                  file=sys.stderr)
            return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
