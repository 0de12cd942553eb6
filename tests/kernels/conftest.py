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


def _assert_close_report(actual, expected, atol: float, rtol: float, what: str = "") -> None:
    """allclose on two tensors, failing with how many elements differ, the worst one and both values."""
    a = actual.detach().float().cpu()
    e = expected.detach().float().cpu()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    assert torch.isfinite(a).all(), f"{what}: {int((~torch.isfinite(a)).sum())} non-finite values"
    err = (a.double() - e.double()).abs()
    limit = atol + rtol * e.double().abs()
    bad = err > limit
    if bad.any():
        worst = tuple(int(i) for i in torch.unravel_index(torch.argmax(err - limit), e.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} / {e.numel()} elements differ beyond atol={atol:g} rtol={rtol:g}; "
            f"worst at {worst}: got {a[worst].item()!r}, expected {e[worst].item()!r}; "
            f"max |diff| overall {err.max().item():.3g}"
        )


@pytest.fixture
def assert_close():
    """The kernels' allclose-with-a-report (see `_assert_close_report`)."""
    return _assert_close_report
