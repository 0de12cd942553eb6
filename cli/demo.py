"""`v2m demo`: a test video with cuts, music from the trained demo bundle, muxed."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from v2m.core import tempfiles
from v2m.core.bundle import ENCODER_KINDS
from v2m.core.errors import InputError, require
from v2m.runtime.backends import BACKENDS, normalize_backend
from v2m.runtime.request import Request

from .common import add_threads_arg, format_timings, load_pipeline
from .support import StepProgress

log = logging.getLogger("v2m.cli")


DEMO_CUTS = (1.7, 3.9, 5.4, 8.1)


def _check(args, out: Path) -> None:
    """Everything about the options that can fail before any work."""
    from v2m.runtime import media

    media.check_output_path(out)  # a video (muxed) or .wav/.flac (the music alone)
    if args.plot:
        from v2m.runtime.profiler import check_report_paths

        require("matplotlib", what="`v2m demo --plot`")  # before any work, not after the generation
        check_report_paths({"--plot": args.plot}, {args.output: "the output"})
    if args.preset:
        require("torch", what="`v2m demo --preset` (it makes a random-weight PyTorch bundle)")
        if args.backend == "onnxruntime":
            raise InputError("`v2m demo --preset` makes a PyTorch bundle; run it with --backend torch (or auto)")
    elif args.backend == "torch":
        require("torch", what="`v2m demo --backend torch`")


def _bundle(args, work: Path) -> str:
    """Point `args.model` at the demo's bundle (a random one of --preset, made in `work`); what it is."""
    if not args.preset:
        return f"trained bundle {args.model}" + (" (installed with v2m; docs/demo-model.md)" if args.model == "demo" else "")
    bundle = work / f"{args.preset}-bundle"  # a random-weight bundle: every stage with real shapes, structured noise out
    if not (bundle / "config.json").is_file():
        import torch

        from v2m.models.bundle import init_bundle

        init_bundle(args.preset, bundle, seed=0, dtype=torch.float32)
    args.model = str(bundle)
    return f"{args.preset} bundle with RANDOM weights (the music is noise until you load a trained checkpoint)"


def _plot(args, result, base, cuts, rate: float, kernel: int) -> None:
    """The figure of docs/demo-model.md: the video curve, the music curves with and without it, the cuts."""
    from v2m.eval.evaluate import curve_correlation, plot_alignment
    from v2m.runtime.music import music_curve

    music = music_curve(result.audio, result.sample_rate, result.curve.size, rate, kernel)
    base_music = music_curve(base.audio, base.sample_rate, result.curve.size, rate, kernel)
    r, r0 = curve_correlation(music, result.curve), curve_correlation(base_music, result.curve)
    path = plot_alignment(result.curve, {f"music event curve of the output (r = {r:.2f})": music,
                                         f"the same without the curve, --no-curve (r = {r0:.2f})": base_music},
                          cuts, rate, args.plot,
                          title=f"v2m demo: {Path(args.model).name} bundle, {args.duration:g} s test video, seed {args.seed}")
    print(f"wrote {path}")


def cmd_demo(args) -> int:
    import os
    import tempfile

    from v2m.core.curves import curve_peaks
    from v2m.runtime import synth
    from v2m.runtime.music import music_curve

    # Before torch is imported: idle OpenMP threads sleep instead of spinning. The demo model
    # is small, so a step is many tiny parallel regions; on a busy CPU a spinning thread
    # waits out whole time slices (measured on a loaded 2-core machine: 484 ms a sampler
    # step spinning, 11 ms sleeping). An OMP_WAIT_POLICY already set is left alone.
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        log.info("demo: OMP_WAIT_POLICY=PASSIVE")
    out = Path(args.output)
    _check(args, out)
    tempfiles.clean_stale(out.parent)
    keep = args.workdir is not None  # the work folder (bundle, test clip) is removed unless --workdir keeps it
    base = None
    with nullcontext(args.workdir) if keep else tempfile.TemporaryDirectory(prefix="v2m-demo-") as workdir:
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        what = _bundle(args, work)
        clip = work / "clip.mp4"
        cuts = synth.make_test_video(clip, duration_s=args.duration,
                                     cuts=tuple(c * args.duration / 10.0 for c in DEMO_CUTS))
        t_setup = time.perf_counter() - t0
        print(f"demo: {what}")
        kept = f"test video {clip}" if keep else "a temporary test video (--workdir DIR keeps it)"
        print(f"demo: {kept}, {args.duration:.1f} s, scene cuts at {', '.join(f'{c:.2f}' for c in cuts) or 'none'} s")
        pipe = load_pipeline(args)
        progress = StepProgress(pipe.sampler_options().steps)
        try:
            result = pipe.generate(clip, request=Request(prompt=args.prompt, seed=args.seed), on_step=progress)
        finally:
            progress.close()
        pipe.write(result.prepared, result.audio, out)
        if args.plot:  # the same video and seed again, without the curve
            base = pipe.generate(clip, prepared=result.prepared, profile_steps=False,
                                 request=result.prepared.request.replace(seed=result.seed, use_curve=False))
    rate, kernel = pipe.config.latent_rate, pipe.config.curve.kernel
    music = music_curve(result.audio, result.sample_rate, result.curve.size, rate, kernel)
    print(f"demo: video event curve peaks at {', '.join(f'{i / rate:.2f}' for i in curve_peaks(result.curve, len(cuts)))} s")
    print(f"demo: music event curve peaks at {', '.join(f'{i / rate:.2f}' for i in curve_peaks(music, len(cuts)))} s")
    print(f"wrote {out} ({result.duration_s:.2f} s, seed {result.seed}, backend {result.info['backend']} "
          f"on {result.info['device']}, setup {t_setup:.2f} s)")
    print(format_timings(result.timings, result.step_ms))
    if base is not None:
        _plot(args, result, base, cuts, rate, kernel)
    return 0


def register(sub) -> None:
    """Add the command's parser to the CLI's subparsers."""
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
    d.add_argument("--prompt", default="a calm piano and strings piece", help="text prompt (free text; \"\" for none)")
    d.add_argument("--plot", default=None, metavar="PNG",
                   help="also save the video curve, the output's music curve (with and without the curve) and "
                        "the cuts (matplotlib; a second generation with --no-curve) (default: none)")
    d.add_argument("--seed", type=int, default=0, help="noise seed, in [0, 2^63)")
    d.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], type=normalize_backend,
                   help="inference engine (ort: ONNX Runtime); auto: ONNX Runtime on a CPU for the demo bundle "
                        "(it ships its graphs), else PyTorch")
    d.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    d.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                   help="compute precision (default: fp16 on CUDA, fp32 on CPU)")
    add_threads_arg(d)
    d.set_defaults(func=cmd_demo)
