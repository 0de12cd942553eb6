"""Shared fixtures: small generated videos with known scene cuts.

The session-scoped clips are written once per test run (well under a second
each) by `v2m.runtime.synth.make_test_video`; treat them as read-only. Tests
that need their own variant (rotation, VFR, odd length) use `make_video`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from v2m.runtime.synth import make_test_video

# Kernel tests run under the Triton interpreter where there is no CUDA device. TRITON_INTERPRET
# must be set before triton is first imported, and some test modules import libraries that
# import it (diffusers, torch._dynamo) at collection: so here, before any test module loads.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:
    pass


@pytest.fixture(scope="session", autouse=True)
def _onnx_cache_dir(tmp_path_factory):
    """The ONNX graph cache (`--backend auto` exports a bundle on first use) in a session
    folder, never the user's ~/.cache; CLI subprocesses inherit it. Bundles of the same
    content (init-model with one seed) share entries across tests, as in real use."""
    old = os.environ.get("V2M_CACHE_DIR")
    os.environ["V2M_CACHE_DIR"] = str(tmp_path_factory.mktemp("onnx-cache"))
    yield
    if old is None:
        os.environ.pop("V2M_CACHE_DIR", None)
    else:
        os.environ["V2M_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _first_use_export_per_test():
    """The exporter handed to the runtime's ONNX cache (`v2m.export.enable_first_use_export`,
    which every CLI command calls) is process state: cleared after each test, so a Python-API
    test's `backend="auto"` does not depend on which tests ran before it."""
    yield
    from v2m.runtime.backends import onnx_cache

    onnx_cache._exporter.clear()


@dataclass(frozen=True)
class SynthVideo:
    """A generated clip and what it was made with."""

    path: Path
    duration_s: float
    fps: float
    size: tuple[int, int]  # (width, height) as displayed
    cuts: tuple[float, ...]  # scene cut times, seconds
    has_audio: bool


def _make(path: Path, duration_s: float, fps: float, cuts, with_audio: bool) -> SynthVideo:
    size = (160, 120)
    cuts = make_test_video(
        path, duration_s=duration_s, fps=fps, size=size, cuts=cuts, with_audio=with_audio
    )
    return SynthVideo(path, duration_s, fps, size, tuple(cuts), with_audio)


@pytest.fixture(scope="session")
def synth_video(tmp_path_factory) -> SynthVideo:
    """5 s, 24 fps, 160x120 H.264 .mp4, cuts at 1.25, 2.5, 3.75 s, no audio."""
    d = tmp_path_factory.mktemp("synth")
    return _make(d / "clip.mp4", 5.0, 24.0, (1.25, 2.5, 3.75), with_audio=False)


@pytest.fixture(scope="session")
def synth_video_audio(tmp_path_factory) -> SynthVideo:
    """The `synth_video` clip plus a 5 s stereo 44.1 kHz AAC sine track."""
    d = tmp_path_factory.mktemp("synth_audio")
    return _make(d / "clip_audio.mp4", 5.0, 24.0, (1.25, 2.5, 3.75), with_audio=True)


@pytest.fixture(scope="session")
def short_video(tmp_path_factory) -> SynthVideo:
    """2 s, 24 fps, 160x120 .mp4, cuts at 0.5 and 1.25 s, no audio: for end-to-end runs."""
    d = tmp_path_factory.mktemp("synth_short")
    return _make(d / "short.mp4", 2.0, 24.0, (0.5, 1.25), with_audio=False)


@pytest.fixture
def make_video(tmp_path) -> Callable[..., Path]:
    """Factory: `make_video("name.mp4", **make_test_video_kwargs)` -> path in tmp_path."""

    def make(name: str = "video.mp4", **kwargs) -> Path:
        path = tmp_path / name
        make_test_video(path, **kwargs)
        return path

    return make


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A random-weight tiny bundle (seed 0), made once per session. Tests must not modify it."""
    from v2m.models.bundle import init_bundle

    return init_bundle("tiny", tmp_path_factory.mktemp("bundles") / "tiny", seed=0)


@pytest.fixture
def tiny_bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle that a test may break."""
    import shutil

    return Path(shutil.copytree(tiny_bundle, tmp_path / "tiny-copy"))


@pytest.fixture(scope="session")
def windowed_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle with max_frames 16: a 2 s video (25 latent frames) runs in windows, 1 s (13) does not."""
    import json
    import shutil

    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("win") / "b16"))
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["sampler"]["max_frames"] = 16
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


SIX_HOURS = 6 * 3600.0


@pytest.fixture(scope="session")
def gaps(tmp_path_factory):
    """Two 24-frame .mkv files whose last frame sits 6 h later: one whose header says so
    ("honest"), one whose header hides it ("lying")."""
    from v2m.runtime.synth import make_gap_video

    d = tmp_path_factory.mktemp("gaps")
    honest, lying = d / "gap.mkv", d / "gap-live.mkv"
    make_gap_video(honest, SIX_HOURS)
    make_gap_video(lying, SIX_HOURS, honest_header=False)
    return {"honest": honest, "lying": lying}
