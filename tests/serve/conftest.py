"""Fixtures of the serve tests (helpers in _serve_util.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread here and in every server the tests start (OMP_NUM_THREADS=1, _serve_util):
    the thread count changes CPU numerics, and the bit-identical checks compare across
    processes; on a loaded 2-core box, two spinning OpenMP threads also run 10-50x slower."""
    import os

    import torch

    before, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # the backends' default thread count (`backends.default_threads`) too
    yield
    torch.set_num_threads(before)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Two short clips of different latent lengths (1 s: 13 frames, 1.5 s: 19), one with sound."""
    from v2m.runtime.synth import make_test_video

    d = tmp_path_factory.mktemp("serve_clips")
    out = {"one": d / "one.mp4", "onehalf": d / "onehalf.mp4"}
    make_test_video(out["one"], duration_s=1.0, size=(96, 64), cuts=(0.5,), seed=1)
    make_test_video(out["onehalf"], duration_s=1.5, size=(96, 64), cuts=(0.5, 1.0), seed=2, with_audio=True)
    return out
