"""The `v2m` command line.

Every user-caused failure ends with one line on stderr (`v2m: error: ...`) and a
non-zero exit code; `--debug` shows tracebacks. Results go to stdout, logs to
stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from . import __version__
from .errors import InputError, V2MError

log = logging.getLogger("v2m.cli")

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 1


# --- helpers -----------------------------------------------------------------------------
def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="v2m: %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _add_runtime_args(p: argparse.ArgumentParser, model_default: str | None = None) -> None:
    p.add_argument("--model", "-m", required=model_default is None, default=model_default,
                   help="bundle directory (v2m init-model / v2m export / v2m train), or `demo` (the installed "
                        "trained demo bundle)" + (f"; default {model_default}" if model_default else ""))
    p.add_argument("--encoder", default=None, choices=["dinov2", "cut", "motion"],
                   help="frame encoder of the event curve (default: the bundle's); cut and motion are weight-free")
    p.add_argument("--backend", default="auto", help="torch, onnxruntime, tensorrt or auto (default: auto)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=None,
                   help="torch backend: fast path (CUDA-graphed sampler step, chunked VAE); default: on for CUDA + fp16")
    p.add_argument("--compile", default="none", choices=["none", "inductor"], help="torch fast path: torch.compile the DiT backbone")
    p.add_argument("--kernels", default="torch", choices=["torch", "triton"],
                   help="torch fast path: fused Triton kernels for the DiT's norm/modulate/residual and RoPE "
                        "(an alternative to --compile)")
    p.add_argument("--vae-precision", default=None, choices=["fp16", "bf16", "fp32"],
                   help="torch fast path: VAE decoder precision if not --precision (fp32: exact Snake phases)")
    p.add_argument("--engine-cache", default=None, metavar="DIR",
                   help="tensorrt backend: where engines are built and found (default: BUNDLE/engines)")


def _precision(args) -> str:
    if args.precision:
        return args.precision
    return "fp16" if str(args.device).startswith("cuda") else "fp32"


def _load_pipeline(args):
    from .backends import resolve_backend
    from .pipeline import Pipeline

    # backend and device auto resolved without importing a framework (the CUDA driver says
    # whether there is a GPU): a torch-free install with onnxruntime-gpu or TensorRT uses it
    args.backend, args.device = resolve_backend(args.backend, args.model, args.device)
    return Pipeline.from_pretrained(
        args.model, backend=args.backend, device=args.device, precision=_precision(args),
        fast=getattr(args, "fast", None), compile=getattr(args, "compile", "none"),
        kernels=getattr(args, "kernels", "torch"), engine_cache=getattr(args, "engine_cache", None),
        vae_precision=getattr(args, "vae_precision", None), encoder=getattr(args, "encoder", None),
    )


def _sampler_kwargs(args) -> dict:
    """The generate options that shape the sampler, as `Pipeline.generate` keywords."""
    return {
        "negative_prompt": args.negative_prompt, "solver": args.solver, "shift": args.shift,
        "use_curve": not args.no_curve, "curve_guidance": args.curve_guidance,
    }


def _check_sampler_options(args) -> None:
    """Every sampler value checked before any video is decoded or model loaded (one line, exit 2)."""
    from .sampler import MAX_STEPS, SamplerOptions

    try:
        SamplerOptions(
            steps=96 if args.steps is None else args.steps,
            cfg_scale=4.0 if args.cfg_scale is None else args.cfg_scale,
            solver="euler" if args.solver is None else args.solver,
            shift=1.0 if args.shift is None else args.shift,
            use_curve=not args.no_curve,
            curve_guidance=0.0 if args.curve_guidance is None else args.curve_guidance,
        )
    except ValueError as e:
        raise InputError(f"{e} (steps in [1, {MAX_STEPS}])" if "steps" in str(e) else str(e)) from None
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise InputError(f"--seed must be in [0, 2^63), got {args.seed}")
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
    import torch

    from v2m.models.bundle import init_bundle

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    out = init_bundle(args.preset, args.output, seed=args.seed, dtype=dtype, overwrite=args.overwrite,
                      encoder=args.encoder)
    print(f"wrote {args.preset} bundle (random weights, seed {args.seed}, {args.encoder} encoder) to {out}")
    return 0


def cmd_generate(args) -> int:
    from . import media

    if args.manifest or len(args.inputs) != 1 or Path(args.inputs[0]).is_dir():
        return cmd_generate_batch(args)
    _check_sampler_options(args)
    video_path = Path(args.inputs[0])
    media.check_output_path(args.output, video_path)  # before any heavy work
    if args.profile or args.trace:
        from .profiler import check_report_paths

        check_report_paths({"--profile": args.profile, "--trace": args.trace},
                           {args.output: "the output", video_path: "the input video"})
    pipe = _load_pipeline(args)
    profiler = None
    if args.profile or args.trace:
        from .profiler import Profiler

        profiler = Profiler(device=pipe.backend.device, trace=bool(args.trace), clock=pipe.backend.step_clock())
    result = pipe.generate(
        video_path,
        prompt=args.prompt,
        seed=args.seed,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        text_embeddings=args.text_embeddings,
        profiler=profiler,
        **_sampler_kwargs(args),
    )
    with profiler.range("write") if profiler is not None else nullcontext():
        if media.check_output_path(args.output, video_path) == "video":
            result.mux(video_path, args.output, keep_audio_db=args.keep_audio)
        else:
            result.save(args.output)
    print(f"wrote {args.output} ({result.duration_s:.2f} s, seed {result.seed}, backend {result.info['backend']})")
    if profiler is not None:
        profiler.add_stage("write", result.timings["write"])
        if args.profile:
            print(f"wrote profile report {profiler.write_report(args.profile)}")
        if args.trace:
            print(f"wrote Chrome trace {profiler.write_trace(args.trace)}")
    if not args.quiet:
        print(format_timings(result.timings, result.step_ms))
    return 0


def cmd_generate_batch(args) -> int:
    """Batch mode: a folder, several videos or --manifest; -o is a folder. Exit 1 if any video failed.

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
    out_dir = Path(args.output)
    if out_dir.suffix.lower() in (".mp4", ".mov", ".mkv", ".m4v", ".wav", ".flac") and not out_dir.is_dir():
        raise InputError(f"with several inputs -o is a folder, not {batch.show(out_dir)}")
    if args.manifest:
        jobs = batch.read_manifest(args.manifest, prompt=args.prompt, seed=args.seed)
    else:
        jobs = batch.collect_inputs(args.inputs, out_dir, prompt=args.prompt, seed=args.seed)
    batch.check_output_dir(out_dir)  # before loading the model
    batch.assign_outputs(jobs, out_dir, args.format)
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
    print(f"{summary.count('ok')} ok, {summary.count('failed')} failed, {summary.count('skipped')} skipped "
          f"in {summary.wall_s:.1f} s; summary in {batch.show(summary.path)}")
    if profiler is not None:
        report = write_profile()
        if report is not None and not args.quiet:
            print(format_report(report))
    return 1 if summary.count("failed") else 0


def cmd_curve(args) -> int:
    from .music import AUDIO_SUFFIXES

    if Path(args.video).suffix.lower() in AUDIO_SUFFIXES:
        return cmd_music_curve(args)
    pipe = _load_pipeline(args)
    res = pipe.curve(args.video)
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

    # Before torch is imported: idle OpenMP threads sleep instead of spinning. The demo model
    # is small, so a step is many tiny parallel regions; on a busy CPU a spinning thread
    # waits out whole time slices (measured on a loaded 2-core machine: 484 ms a sampler
    # step spinning, 11 ms sleeping). An OMP_WAIT_POLICY already set is left alone.
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        log.info("demo: OMP_WAIT_POLICY=PASSIVE")

    out = Path(args.output)
    media.check_output_path(out)
    if not args.duration > 1.0:
        raise InputError(f"--duration must be more than 1 s, got {args.duration}")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="v2m-demo-"))
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
        what = f"trained bundle {args.model}" + (" (installed with v2m; README: The demo model)" if args.model == "demo" else "")
    clip = work / "clip.mp4"
    cuts = synth.make_test_video(clip, duration_s=args.duration,
                                 cuts=tuple(c * args.duration / 10.0 for c in DEMO_CUTS))
    t_setup = time.perf_counter() - t0
    print(f"demo: {what}")
    print(f"demo: test video {clip} ({args.duration:.1f} s, scene cuts at {', '.join(f'{c:.2f}' for c in cuts)} s)")

    pipe = _load_pipeline(args)
    result = pipe.generate(clip, prompt=args.prompt, seed=args.seed)
    result.mux(clip, out)
    from .curves import curve_peaks
    from .music import music_curve

    rate = pipe.config.latent_rate
    peaks = curve_peaks(result.curve, len(cuts))
    music = music_curve(result.audio, result.sample_rate, result.curve.size, rate, pipe.config.curve.kernel)
    print(f"demo: video event curve peaks at {', '.join(f'{i / rate:.2f}' for i in peaks)} s")
    print(f"demo: music event curve peaks at {', '.join(f'{i / rate:.2f}' for i in curve_peaks(music, len(cuts)))} s")
    print(f"wrote {out} ({result.duration_s:.2f} s, seed {result.seed}, backend {result.info['backend']} "
          f"on {result.info['device']}, setup {t_setup:.2f} s)")
    print(format_timings(result.timings, result.step_ms))
    if args.plot:  # the figure of README's demo section: one more generation, without the curve
        from .evaluate import curve_correlation, plot_alignment

        base = pipe.generate(clip, prompt=args.prompt, seed=args.seed, use_curve=False, profile_steps=False)
        base_music = music_curve(base.audio, base.sample_rate, result.curve.size, rate, pipe.config.curve.kernel)
        r, r0 = curve_correlation(music, result.curve), curve_correlation(base_music, result.curve)
        path = plot_alignment(result.curve, {f"music event curve of the output (r = {r:.2f})": music,
                                             f"the same without the curve, --no-curve (r = {r0:.2f})": base_music},
                              cuts, rate, args.plot,
                              title=f"v2m demo: {args.model} bundle, {args.duration:g} s test video, seed {args.seed}")
        print(f"wrote {path}")
    return 0


def cmd_export(args) -> int:
    import importlib.util

    from .errors import BackendUnavailable

    need = ("torch", "onnx") + (() if args.no_check else ("onnxruntime",))
    missing = [m for m in need if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(
            f"`v2m export` needs {', '.join(missing)}: pip install 'v2m-runtime[export]'"
            + (" (or pass --no-check to skip the ONNX Runtime check)" if missing == ["onnxruntime"] else "")
        )
    from v2m.export.exporter import export_bundle

    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    bad = [p for p in precisions if p not in ("fp32", "fp16", "bf16")]
    if bad or not precisions:
        raise InputError(f"--precision {args.precision!r}: give fp32, fp16 and/or bf16, comma-separated")
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
    p = argparse.ArgumentParser(prog="v2m", description="Zero-pair video-to-music generation (V2M-Zero) runtime.")
    p.add_argument("--version", action="version", version=f"v2m {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="a test video with cuts, music from the trained demo bundle, muxed")
    d.add_argument("-o", "--output", default="demo.mp4")
    d.add_argument("--model", "-m", default="demo", help="bundle (default: demo, the installed trained one)")
    d.add_argument("--encoder", default=None, choices=["dinov2", "cut", "motion"], help="frame encoder (default: the bundle's)")
    d.add_argument("--preset", default=None, choices=["tiny", "small", "full"],
                   help="instead of --model: a random-weight bundle of this preset")
    d.add_argument("--workdir", default=None, help="keep the bundle and test video here")
    d.add_argument("--duration", type=float, default=10.0)
    d.add_argument("--prompt", default="medium 120 bpm major groove, backbeat drums, warm pad, bass")
    d.add_argument("--plot", default=None, metavar="PNG",
                   help="also save the video curve, the output's music curve (with and without the curve) and the cuts")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--backend", default="torch")
    d.add_argument("--device", default="auto")
    d.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("init-model", help="write a random-weight bundle of a preset")
    i.add_argument("--preset", default="tiny", choices=["tiny", "small", "full"])
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    i.add_argument("--overwrite", action="store_true")
    i.add_argument("--encoder", default="dinov2", choices=["dinov2", "cut", "motion"],
                   help="frame encoder: dinov2 (random weights), or weight-free cut / motion")
    i.add_argument("-o", "--output", required=True)
    i.set_defaults(func=cmd_init_model)

    g = sub.add_parser("generate", help="generate music for a video")
    g.add_argument("inputs", nargs="*", help="input video; or several videos / a folder (batch mode, -o is a folder)")
    g.add_argument("-o", "--output", required=True, help=".mp4/.mov/.mkv (muxed) or .wav/.flac (audio only); a folder in batch mode")
    _add_runtime_args(g)
    g.add_argument("--prompt", default="")
    g.add_argument("--text-embeddings", default=None, help="safetensors with precomputed 'embeddings' [S, E]")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="what the music should not be: the unconditional branch of guidance uses this prompt "
                        "(default: zero embeddings)")
    g.add_argument("--steps", type=int, default=None, help="solver steps, 1..10000 (default: the bundle's, 96)")
    g.add_argument("--cfg-scale", type=float, default=None, help="guidance weight on the text (default: the bundle's, 4)")
    g.add_argument("--solver", default=None, choices=["euler", "heun"],
                   help="euler, or heun (trapezoidal rule, two model evaluations a step); default: the bundle's, euler")
    g.add_argument("--shift", type=float, default=None, metavar="S",
                   help="SD3 timestep shift S > 0: S > 1 spends more steps near noise (default: the bundle's, 1)")
    g.add_argument("--no-curve", action="store_true",
                   help="text-only baseline: the event curve is zeros in every branch (the paper's appendix)")
    g.add_argument("--curve-guidance", type=float, default=None, metavar="W",
                   help="extra guidance on the curve: the prediction with the curve against the one without it "
                        "(default: the bundle's, 0 = off; costs a third model batch)")
    g.add_argument("--keep-audio", type=float, default=None, metavar="LEVEL_DB", help="mix the original audio under the music at this level")
    g.add_argument("--quiet", "-q", action="store_true")
    g.add_argument("--manifest", default=None, help="JSONL, one {video, prompt, seed, output} per line (batch mode)")
    g.add_argument("--batch-size", type=int, default=8, help="videos of one length sampled together (batch mode)")
    g.add_argument("--format", default="mp4", choices=["mp4", "wav", "flac"], help="batch mode output kind (default: mp4)")
    g.add_argument("--overwrite", action="store_true", help="batch mode: redo outputs that are already complete")
    g.add_argument("--profile", default=None, metavar="REPORT.json",
                   help="write a per-stage / per-step profile report; in batch mode one report of the whole run "
                        "(per-video stages, each sampled group's steps with its batch size and shapes)")
    g.add_argument("--trace", default=None, metavar="TRACE.json",
                   help="write a Chrome trace (chrome://tracing, Perfetto); in batch mode one trace of the whole run")
    g.set_defaults(func=cmd_generate)

    from .cli_bench import add_bench_parsers
    from .cli_train import add_train_parsers

    add_bench_parsers(sub, _add_runtime_args)
    add_train_parsers(sub)

    c = sub.add_parser("curve", help="print the event curve of a video, or of music (.wav, .flac, .mp3, ...)")
    c.add_argument("video", help="a video, or an audio file (its music event curve)")
    _add_runtime_args(c, model_default="demo")
    c.add_argument("--json", action="store_true")
    c.add_argument("--plot", default=None, metavar="PNG", help="save the curve with cuts and thumbnails (matplotlib)")
    c.set_defaults(func=cmd_curve)

    e = sub.add_parser("eval", help="SCH, curve correlation, cut hits and flatness of generated music vs its videos")
    e.add_argument("outputs", help="folder of generated audio or muxed videos")
    e.add_argument("--videos", required=True, help="folder of the source videos (matched by file name)")
    e.add_argument("--tolerance", type=float, default=0.5, help="seconds between a cut and a beat for an SCH hit")
    e.add_argument("--cut-tolerance", type=float, default=0.25, help="seconds between a cut and a music-curve peak")
    e.add_argument("--baseline", default=None, metavar="DIR",
                   help="outputs generated with --no-curve: both are measured and printed side by side")
    e.add_argument("--no-curves", action="store_true", help="SCH only (no curve correlation, cut hits, flatness)")
    _add_runtime_args(e, model_default="demo")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    n = sub.add_parser("info", help="versions, devices, backends")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_info)

    x = sub.add_parser("export", help="export a bundle's networks to ONNX (checked against PyTorch)")
    x.add_argument("bundle", help="a PyTorch bundle directory")
    x.add_argument("-o", "--output", required=True, help="the exported bundle (may be the bundle itself)")
    x.add_argument("--opset", type=int, default=17)
    x.add_argument("--precision", default="fp32", metavar="P[,P]",
                   help="graph sets to write, comma-separated: fp32 (ONNX Runtime on CPU), fp16, bf16 (strongly typed "
                        "graphs with fp32 islands for TensorRT and ONNX Runtime's CUDA provider); default fp32")
    x.add_argument("--with-weights", action="store_true", help="copy the .safetensors too (the torch backend can then run it)")
    x.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    x.set_defaults(func=cmd_export)

    b = sub.add_parser("build", help="build TensorRT engines for an exported bundle")
    b.add_argument("bundle", help="an exported bundle directory (v2m export)")
    b.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    b.add_argument("--cache-dir", default=None, help="where engines live (default: BUNDLE/engines)")
    b.add_argument("--device", default="cuda", help="cuda or cuda:N")
    b.add_argument("--force", action="store_true", help="rebuild even when a matching engine exists")
    b.set_defaults(func=cmd_build)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except V2MError as e:
        if args.debug:
            raise
        print(f"v2m: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("v2m: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("v2m: error: out of memory; try a smaller preset, a shorter clip or a GPU", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"v2m: internal error: {type(e).__name__}: {msg} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
