"""Fixtures of the serve tests (helpers in _serve_util.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("httpx")
pytest.importorskip("fastapi")


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Two short clips of different latent lengths (1 s: 13 frames, 1.5 s: 19), one with sound."""
    from v2m.runtime.synth import make_test_video

    d = tmp_path_factory.mktemp("serve_clips")
    out = {"one": d / "one.mp4", "onehalf": d / "onehalf.mp4"}
    make_test_video(out["one"], duration_s=1.0, size=(96, 64), cuts=(0.5,), seed=1)
    make_test_video(out["onehalf"], duration_s=1.5, size=(96, 64), cuts=(0.5, 1.0), seed=2, with_audio=True)
    return out
