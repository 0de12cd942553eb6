"""The one place kernels import Triton: optional, and usable only on CUDA or under the interpreter."""

from __future__ import annotations

import os
from contextlib import nullcontext

try:  # the runtime never hard-requires triton; the kernels exist only when it is installed
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on installs without triton
    triton = None
    tl = None

__all__ = ["triton", "tl", "triton_available", "on_device"]


def on_device(t):
    """Make `t`'s CUDA device current for a launch: Triton launches on the current device and
    its current stream, so a kernel over cuda:1 tensors must run under cuda:1 (a no-op on CPU)."""
    if t.device.type != "cuda":
        return nullcontext()
    import torch

    return torch.cuda.device(t.device)


def triton_available() -> bool:
    """True when triton imports and can run: a CUDA device, or the CPU interpreter.

    The interpreter counts only when TRITON_INTERPRET=1 was set before triton was
    imported (tests do this in `tests/kernels/conftest.py`).
    """
    if triton is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
