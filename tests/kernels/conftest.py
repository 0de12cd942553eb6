"""Kernel tests run on CUDA when present, else on CPU under the Triton interpreter.

TRITON_INTERPRET must be set before triton is first imported, so it is set here,
at conftest import time, and only when torch sees no CUDA device.
"""

import os

import pytest

try:
    import torch
except ImportError:  # the test modules skip themselves (importorskip)
    torch = None

if torch is not None and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    """The device the kernels run on: "cuda" when available, else "cpu" (interpreter)."""
    return "cuda" if torch.cuda.is_available() else "cpu"
