"""What the commands share: the runtime options, loading a pipeline, the request of a command line,
the timing table."""

from __future__ import annotations

import argparse
import logging

from v2m.core.bundle import ENCODER_KINDS
from v2m.runtime.backends import BACKENDS, normalize_backend
from v2m.runtime.request import MAX_DURATION_S, Request

from .creator import creator_request_fields

log = logging.getLogger("v2m.cli")



def add_runtime_args(p: argparse.ArgumentParser, model_default: str | None = None) -> None:
    p.add_argument("--model", "-m", required=model_default is None, default=model_default,
                   help="bundle directory (v2m init-model / v2m export / v2m train), or `demo` (the installed "
                        "trained demo bundle)" + (f" (default: {model_default})" if model_default else ""))
    p.add_argument("--encoder", default=None, choices=ENCODER_KINDS,
                   help="frame encoder of the event curve (default: the bundle's); cut and motion are weight-free")
    p.add_argument("--backend", default="auto", choices=["auto", *BACKENDS], type=normalize_backend,
                   help="inference engine (ort and trt name ONNX Runtime and TensorRT too); auto: TensorRT on a GPU "
                        "for an exported bundle; on a CPU ONNX Runtime for every bundle (one without graphs exported "
                        "on first use into $V2M_CACHE_DIR, default ~/.cache/v2m/onnx); else PyTorch")
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
    add_threads_arg(p)


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the model's operators, >= 1 (default: OMP_NUM_THREADS if set, else the "
                        "physical cores this process may use)")


def request_from_args(args, **overrides) -> Request:
    """The one `Request` of a `v2m generate` (or demo) command line, validated once."""
    fields = {
        "prompt": args.prompt, "negative_prompt": getattr(args, "negative_prompt", None), "seed": args.seed,
        "steps": getattr(args, "steps", None), "cfg_scale": getattr(args, "cfg_scale", None),
        "solver": getattr(args, "solver", None), "shift": getattr(args, "shift", None),
        "use_curve": not getattr(args, "no_curve", False), "curve_guidance": getattr(args, "curve_guidance", None),
        "video_stream": getattr(args, "video_stream", None), "keep_audio_db": getattr(args, "keep_audio", None),
        "reencode": getattr(args, "reencode", "auto"),
        "text_embeddings": None if getattr(args, "text_embeddings", None) is None else str(args.text_embeddings),
        **creator_request_fields(args),
    }
    return Request(**{**fields, **overrides})


def format_timings(timings: dict[str, float], step_ms: list[float] | None = None) -> str:
    from v2m.runtime.pipeline import STAGES

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


RUNTIME_OPTIONS = ("model", "backend", "device", "precision", "encoder", "fast", "compile", "kernels", "vae_precision",
                   "engine_cache", "threads")


def pipeline_options(args) -> dict:
    """The runtime options of `add_runtime_args`, as plain data (Ray workers load from it too)."""
    return {k: getattr(args, k, None) for k in RUNTIME_OPTIONS}


def load_pipeline(args):
    """The command line's pipeline (`Pipeline.load`: auto backend, device and precision resolved)."""
    from v2m.export import enable_first_use_export
    from v2m.runtime.pipeline import Pipeline

    enable_first_use_export()  # auto on a CPU: ONNX Runtime for any bundle, its graphs exported on first use
    return Pipeline.load(**pipeline_options(args))


def max_duration(args) -> float | None:
    """--max-duration in seconds (None: no limit); the default is `request.MAX_DURATION_S`."""
    limit = MAX_DURATION_S if args.max_duration is None else args.max_duration
    return limit or None
