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


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", required=True, help="bundle directory (v2m init-model / v2m export)")
    p.add_argument("--backend", default="auto", help="torch, onnxruntime, tensorrt or auto (default: auto)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"], help="default: fp16 on CUDA, fp32 on CPU")


def _precision(args) -> str:
    if args.precision:
        return args.precision
    return "fp16" if str(args.device).startswith("cuda") else "fp32"


def _load_pipeline(args):
    from .pipeline import Pipeline

    device = args.device
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
        args.device = device
    return Pipeline.from_pretrained(args.model, backend=args.backend, device=device, precision=_precision(args))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


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
    out = init_bundle(args.preset, args.output, seed=args.seed, dtype=dtype, overwrite=args.overwrite)
    print(f"wrote {args.preset} bundle (random weights, seed {args.seed}) to {out}")
    return 0


def cmd_generate(args) -> int:
    from . import media

    if len(args.inputs) != 1:
        raise InputError("give exactly one input video (batches of videos come with `v2m generate DIR -o OUTDIR`)")
    video_path = Path(args.inputs[0])
    media.check_output_path(args.output, video_path)  # before any heavy work
    pipe = _load_pipeline(args)
    result = pipe.generate(
        video_path,
        prompt=args.prompt,
        seed=args.seed,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        text_embeddings=args.text_embeddings,
    )
    if media.check_output_path(args.output, video_path) == "video":
        result.mux(video_path, args.output, keep_audio_db=args.keep_audio)
    else:
        result.save(args.output)
    print(f"wrote {args.output} ({result.duration_s:.2f} s, seed {result.seed}, backend {result.info['backend']})")
    if not args.quiet:
        print(format_timings(result.timings, result.step_ms))
    return 0


def cmd_curve(args) -> int:
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


def cmd_demo(args) -> int:
    import tempfile

    from . import media, synth

    out = Path(args.output)
    media.check_output_path(out)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="v2m-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bundle = work / f"{args.preset}-bundle"
    if not (bundle / "config.json").is_file():
        import torch

        from v2m.models.bundle import init_bundle

        init_bundle(args.preset, bundle, seed=0, dtype=torch.float32)
    clip = work / "clip.mp4"
    cuts = synth.make_test_video(clip, duration_s=args.duration)
    t_setup = time.perf_counter() - t0
    print(f"demo: {args.preset} bundle with RANDOM weights (the music is noise until you load a trained checkpoint)")
    print(f"demo: test video {clip} ({args.duration:.1f} s, scene cuts at {', '.join(f'{c:.2f}' for c in cuts)} s)")

    args.model = str(bundle)
    pipe = _load_pipeline(args)
    result = pipe.generate(clip, prompt=args.prompt, seed=args.seed)
    result.mux(clip, out)
    from .curves import curve_peaks

    peaks = curve_peaks(result.curve, len(cuts))
    print(f"demo: event curve peaks at {', '.join(f'{i / pipe.config.latent_rate:.2f}' for i in peaks)} s")
    print(f"wrote {out} ({result.duration_s:.2f} s, seed {result.seed}, backend {result.info['backend']} "
          f"on {result.info['device']}, setup {t_setup:.2f} s)")
    print(format_timings(result.timings, result.step_ms))
    return 0


# --- parser ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="v2m", description="Zero-pair video-to-music generation (V2M-Zero) runtime.")
    p.add_argument("--version", action="version", version=f"v2m {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="make a tiny random bundle and a test video, generate, mux")
    d.add_argument("-o", "--output", default="demo.mp4")
    d.add_argument("--preset", default="tiny", choices=["tiny", "small", "full"])
    d.add_argument("--workdir", default=None, help="keep the bundle and test video here")
    d.add_argument("--duration", type=float, default=5.0)
    d.add_argument("--prompt", default="warm synth pop")
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
    i.add_argument("-o", "--output", required=True)
    i.set_defaults(func=cmd_init_model)

    g = sub.add_parser("generate", help="generate music for a video")
    g.add_argument("inputs", nargs="+", help="input video")
    g.add_argument("-o", "--output", required=True, help=".mp4/.mov/.mkv (muxed) or .wav/.flac (audio only)")
    _add_runtime_args(g)
    g.add_argument("--prompt", default="")
    g.add_argument("--text-embeddings", default=None, help="safetensors with precomputed 'embeddings' [S, E]")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--steps", type=int, default=None)
    g.add_argument("--cfg-scale", type=float, default=None)
    g.add_argument("--keep-audio", type=float, default=None, metavar="LEVEL_DB", help="mix the original audio under the music at this level")
    g.add_argument("--quiet", "-q", action="store_true")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("curve", help="print a video's event curve")
    c.add_argument("video")
    _add_runtime_args(c)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_curve)

    n = sub.add_parser("info", help="versions, devices, backends")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_info)
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
