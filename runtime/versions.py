"""Versions of the libraries v2m uses, read from package metadata: nothing is imported.

`v2m info` used to import torch, onnx and triton to print their `__version__` (3.2 s
and 342 MiB on a 2-core CPU, for a command that prints a dozen lines). The installed
distribution's metadata (`importlib.metadata`) carries the same version string, and
`importlib.util.find_spec` says whether a module is there without running it.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata

__all__ = ["LIBRARIES", "library_versions", "library_version"]

# Import name -> the distributions that install it, the usual one first (GPU and vendor
# builds install the same module under another distribution name).
LIBRARIES: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "av": ("av",),
    "soundfile": ("soundfile",),
    "safetensors": ("safetensors",),
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
                    "onnxruntime-training"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"),
    "triton": ("triton", "pytorch-triton", "pytorch-triton-rocm"),
}


def library_version(module: str, distributions: tuple[str, ...] | None = None) -> str | None:
    """The installed version of `module`: None when it is not importable, "?" when it is
    but no known distribution's metadata names a version (a source checkout on sys.path)."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):  # a broken parent package or a half-installed module
        return None
    for dist in distributions or LIBRARIES.get(module, (module,)):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "?"


def library_versions(modules: tuple[str, ...] | None = None) -> dict[str, str | None]:
    """{import name: version or None} for `modules` (default: every entry of LIBRARIES)."""
    return {m: library_version(m) for m in (modules or tuple(LIBRARIES))}
