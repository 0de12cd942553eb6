"""Backends: one small interface (`base.Backend`), engines imported lazily.

`create_backend("auto", ...)` picks the best that can run here: TensorRT on an
NVIDIA GPU with engines or ONNX graphs; on a CPU ONNX Runtime for every bundle (one
without graphs is exported on first use into a content-keyed cache, `onnx_cache`);
else PyTorch. `resolve_backend` makes the same choice and resolves
`--device auto` without importing any framework (`v2m.core.devices` asks the CUDA
driver): the CLI uses it to pick the default precision before anything loads. The
log says which one ran.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from v2m.core import devices
from v2m.core.bundle import BundleConfig
from v2m.core.errors import BackendUnavailable

from .base import Backend, default_threads

__all__ = ["Backend", "BACKENDS", "BACKEND_ALIASES", "normalize_backend", "create_backend", "resolve_backend",
           "available_backends", "default_threads", "torch_options_asked"]

log = logging.getLogger("v2m.backend")

BACKENDS = ("torch", "onnxruntime", "tensorrt")
# the names of the extras that install them (`pip install 'v2m-runtime[ort]'`), accepted as backend names
BACKEND_ALIASES = {"ort": "onnxruntime", "trt": "tensorrt"}


def normalize_backend(name: str) -> str:
    """A backend name as the API and the CLI take it: case-insensitive, `ort` and `trt` for their engines."""
    name = str(name).strip().lower()
    return BACKEND_ALIASES.get(name, name)


def _has(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> dict[str, bool]:
    """Which backends' engines are importable here (not whether a bundle has graphs for them)."""
    return {"torch": _has("torch"), "onnxruntime": _has("onnxruntime"), "tensorrt": _has("tensorrt")}


def _is_exported(bundle_dir: Path) -> bool:
    return (bundle_dir / "manifest.json").is_file()


def _has_graphs(bundle_dir: Path, precision: str) -> bool:
    """Whether the bundle's manifest lists a graph set of `precision` (a bundle with weights
    that lacks it gets one from the ONNX cache)."""
    import json

    try:
        return precision in json.loads((bundle_dir / "manifest.json").read_text()).get("graphs", {})
    except (OSError, ValueError, AttributeError):
        return _is_exported(bundle_dir)  # a broken manifest: the backend says what is wrong


def create_backend(
    name: str,
    bundle_dir: str | Path,
    cfg: BundleConfig,
    device: str = "cpu",
    precision: str = "fp32",
    fast: bool | None = None,
    compile: str = "none",
    kernels: str = "torch",
    engine_cache: str | Path | None = None,
    vae_precision: str | None = None,
    threads: int | None = None,
) -> Backend:
    """Instantiate backend `name` (torch, onnxruntime, tensorrt or auto) for a bundle.

    Args:
        fast: torch only: the fast path (static buffers, CUDA-graphed step, chunked VAE);
            None = on for CUDA + fp16, off otherwise. The log says which path runs.
        compile: torch fast path only: "none" or "inductor" (torch.compile of the backbone).
        kernels: torch fast path only: "torch" or "triton" (fused glue kernels; an
            alternative to compile).
        engine_cache: tensorrt only: where engines are built and found (default BUNDLE/engines).
        vae_precision: torch fast path only: the VAE decoder's precision when it should
            differ from `precision` (e.g. "fp32" beside an fp16 DiT).
        threads: CPU threads of the engine's operators (torch: `torch.set_num_threads`, process
            wide; ONNX Runtime: intra-op threads of each session); None = `default_threads()`.
    """
    bundle_dir = Path(bundle_dir)
    asked = torch_options_asked(fast, compile, kernels, vae_precision)
    name, device = resolve_backend(name, bundle_dir, device, precision, torch_options=asked)
    threads = threads or default_threads()
    if precision == "int8" and (name != "onnxruntime" or device != "cpu"):
        raise BackendUnavailable(f"int8 runs on ONNX Runtime on a CPU (got {name} on {device}); use --backend auto "
                                 "--device cpu, or another precision")
    if name == "torch":
        if not _has("torch"):
            raise BackendUnavailable("the torch backend needs PyTorch (pip install torch); or export the bundle and use --backend onnxruntime")
        fast_options = {"compile": compile, "kernels": kernels, "vae_precision": vae_precision}
        return _torch_backend(bundle_dir, cfg, device, precision, fast, fast_options, threads)
    if name == "onnxruntime":
        if not _has("onnxruntime"):
            raise BackendUnavailable("the onnxruntime backend needs ONNX Runtime: pip install 'v2m-runtime[ort]' (or [ort-gpu])")
        from .ort_backend import OrtBackend

        graphs = bundle_dir
        if not _has_graphs(bundle_dir, precision) and (bundle_dir / "dit.safetensors").is_file():
            from .base import runtime_graphs
            from .onnx_cache import cached_export

            graphs = cached_export(bundle_dir, cfg, precision, names=runtime_graphs(cfg))
        return OrtBackend(graphs, cfg, device=device, precision=precision, threads=threads)
    if name == "tensorrt":
        if not _has("tensorrt"):
            raise BackendUnavailable("the tensorrt backend needs TensorRT 10 and an NVIDIA GPU: pip install 'v2m-runtime[trt]'")
        from .trt_backend import TensorRTBackend

        return TensorRTBackend(bundle_dir, cfg, device=device, precision=precision, cache_dir=engine_cache)
    raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or auto")


_FAST_DEFAULTS = {"compile": "none", "kernels": "torch", "vae_precision": None}


def torch_options_asked(fast: bool | None = None, compile: str = "none", kernels: str = "torch",
                        vae_precision: str | None = None) -> bool:
    """Whether options only the torch backend has were asked for (backend auto then stays on torch)."""
    return bool(fast) or compile != "none" or kernels != "torch" or vae_precision is not None


def _torch_backend(bundle_dir, cfg, device, precision, fast, fast_options: dict, threads: int) -> Backend:
    import os
    import sys

    # Before torch is imported: idle OpenMP threads sleep instead of spinning (a spinning thread
    # on a busy CPU waits out whole time slices: 12x slower measured on a loaded 2-core box).
    # An OMP_WAIT_POLICY already set is left alone.
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        log.info("torch: OMP_WAIT_POLICY=PASSIVE")
    from .torch_backend import TorchBackend, resolve_device

    dev = resolve_device(device)
    if dev.type == "cpu":
        import torch

        torch.set_num_threads(threads)
        log.info("torch: %d CPU threads", threads)
    if fast is None:
        fast = dev.type == "cuda" and precision == "fp16"
        why = "auto: CUDA + fp16" if fast else f"auto: off for {dev.type} + {precision}"
    else:
        why = "asked for"
    asked = {k: v for k, v in fast_options.items() if v != _FAST_DEFAULTS[k]}
    if asked and not fast:
        what = ", ".join(f"{k}={v!r}" for k, v in asked.items())
        raise BackendUnavailable(f"{what} {'is a fast-path option' if len(asked) == 1 else 'are fast-path options'}; "
                                 "pass fast=True (CLI --fast)")
    if fast:
        from .torch_fast import FastConfig, TorchFastBackend

        log.info("torch backend: fast path (%s)", why)
        return TorchFastBackend(bundle_dir, cfg, device=str(dev), precision=precision, config=FastConfig(**fast_options))
    log.info("torch backend: eager reference path (%s)", why)
    return TorchBackend(bundle_dir, cfg, device=str(dev), precision=precision)


def _has_ort_cuda() -> bool:
    if not _has("onnxruntime"):
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _cpu_ort_ok(precision: str | None) -> tuple[bool, str]:
    """Whether auto may pick ONNX Runtime on a CPU for this precision, and why not."""
    if precision not in (None, "fp32", "int8"):
        return False, f"ONNX Runtime on a CPU runs fp32 or int8 graphs, not {precision}"
    return True, ""


def resolve_backend(name: str, bundle_dir: str | Path, device: str, precision: str | None = None,
                    torch_options: bool = False) -> tuple[str, str]:
    """(backend, device) with "auto" resolved, without importing torch, onnxruntime's CUDA
    libraries or TensorRT: a GPU is what the CUDA driver reports.

    Backend auto: TensorRT for an exported bundle on a GPU; on a CPU ONNX Runtime for an
    exported bundle, and for a bundle with weights when this install can export it (on
    first use, into `onnx_cache`); else torch for a bundle with weights; else ONNX Runtime
    for an exported bundle; else torch. `precision` (None: the default) keeps auto off ONNX
    Runtime on a CPU for precisions it does not run there, `torch_options` (the torch fast
    path's options were asked for) on torch. Device auto: cuda when a GPU is visible and the
    backend can use it.
    """
    from ..demo import resolve_model

    bundle_dir = resolve_model(bundle_dir)  # `demo`: the installed demo bundle
    name = normalize_backend(name)
    kind, _ = devices.parse_device(device)
    if name not in (*BACKENDS, "auto"):
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or auto")
    gpu = kind == "cuda" or (kind == "auto" and devices.cuda_device_count() > 0)
    if name == "auto":
        have = available_backends()
        exported = _is_exported(bundle_dir)
        weights = (bundle_dir / "dit.safetensors").is_file()
        ort_ok, why_not = _cpu_ort_ok(precision)
        if torch_options:
            ort_ok, why_not = False, "torch fast-path options asked for"
        if not gpu and have["onnxruntime"] and weights and not exported and ort_ok:
            from .onnx_cache import can_export

            missing = can_export()
            why_not = f"the bundle has no ONNX graphs and this process cannot export them: {missing}" if missing else ""
            ort_ok = not missing
        if exported and gpu and have["tensorrt"]:
            name = "tensorrt"
        elif not gpu and have["onnxruntime"] and ort_ok and (exported or weights):
            name = "onnxruntime"
        elif have["torch"] and weights and (gpu or not (exported and have["onnxruntime"])):
            if not gpu and have["onnxruntime"] and why_not:  # ONNX Runtime is ~2x faster on a CPU: say why not
                (log.warning if "export" in why_not else log.info)("backend auto: PyTorch, not ONNX Runtime (%s)", why_not)
            name = "torch"
        elif exported and have["onnxruntime"]:
            name = "onnxruntime"
        elif have["torch"]:
            name = "torch"
        else:
            raise BackendUnavailable(
                f"no backend can run {bundle_dir}: install torch for a PyTorch bundle, or export it "
                "(`v2m export`) and install onnxruntime"
            )
        log.info("backend auto -> %s", name)
    if kind == "auto":
        can_gpu = {"tensorrt": True, "onnxruntime": _has_ort_cuda(), "torch": True}[name]
        device = "cuda" if gpu and can_gpu else "cpu"
        if gpu and not can_gpu:
            log.warning("a GPU is visible but this onnxruntime has no CUDA provider; running on the CPU "
                        "(pip install 'v2m-runtime[ort-gpu]' for the GPU)")
        log.info("device auto -> %s", device)
    return name, device
