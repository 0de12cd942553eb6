"""What the engine core's stages hand each other, and what `generate` returns.

`Pipeline.prepare` makes a `Prepared` (one video's conditioning, from one probe), `sample`
turns a list of them into `Sampled` latents, `render` makes audio; `GenerationResult` is the
three in a row for one video.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from v2m.core.errors import InputError

from . import media
from .request import Request
from .sampler import SamplerOptions

__all__ = ["Prepared", "Sampled", "GenerationResult", "CurveResult"]


@dataclass(eq=False)  # compared by identity: it holds arrays
class Prepared:
    """One video made ready to sample: computed once by `Pipeline.prepare`, reused by variants.

    The video part (probe, curve) is shared by every variant of the same video
    (`Pipeline.variant`: another seed, prompt or sampler option); the rest is the request's.
    """

    request: Request
    options: SamplerOptions  # the request's, resolved against the bundle's defaults
    seed: int  # resolved (a drawn one when the request had none)
    video: Path | None  # the source (None: no video)
    info: Any  # the probe's `video.VideoInfo` (None without a video)
    duration_s: float
    curve: np.ndarray  # [L] float32 at the latent rate
    curve_frames: int  # curve samples at the curve rate (frames encoded)
    curve_impl: str  # "numpy" or "triton"
    emb: np.ndarray  # [S, E] prompt embeddings
    mask: np.ndarray  # [S]
    neg: np.ndarray | None = None  # [S', E] negative prompt embeddings
    neg_mask: np.ndarray | None = None
    null_prompt: bool = False  # no prompt, conditioned on the null branch (`SamplingStage.null_prompt`)
    lost_s: float = 0.0  # seconds of damaged video held over
    windowed: bool = False  # longer than the model's window: sampled in overlapping windows
    source: Any = None  # `media.Source` of the CLI's pre-check (probe and mux plan), if any
    packet_log: Any = None  # the decode pass's packets (`VideoReader.packet_log`), for the mux
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    info_extra: dict[str, Any] = field(default_factory=dict)  # callers' own notes (batch size...)
    dissim: np.ndarray | None = None  # [T] raw dissimilarities at the curve rate (variants re-edit the curve)

    @property
    def length(self) -> int:
        """Latent frames of the output."""
        return int(self.curve.shape[0])

    def group_key(self) -> tuple:
        """Prepared videos with equal keys can be sampled in one backend call."""
        if self.windowed:
            return ("windows", id(self))
        o = self.options
        neg = None if self.neg is None else self.neg.shape[0]
        return (self.length, self.mask.shape[-1], neg, self.null_prompt, o.steps, o.cfg_scale, o.solver, o.shift, o.use_curve,
                o.curve_guidance, self.request.loop)


@dataclass(eq=False)
class Sampled:
    """One video's latents from `Pipeline.sample`.

    Args:
        latents: [C, L] (a long video: each frame from the last window that sampled it).
        windows: a long video's windows, each (window, its own latents [C, w]), decoded one by
            one by `render` (None for a video sampled whole).
        batch_size: how many videos the backend call that made it sampled together.
    """

    latents: np.ndarray
    windows: list[tuple[Any, np.ndarray]] | None = None
    batch_size: int = 1


@dataclass
class CurveResult:
    curve: np.ndarray  # [L] float32, at latent_rate
    duration_s: float
    num_frames: int  # video frames sampled at curve_fps (not the video's own frame count)
    curve_fps: float
    latent_rate: float
    curve_impl: str  # "numpy" or "triton"
    timings: dict[str, float] = field(default_factory=dict)
    video_fps: float | None = None  # the video's own average frame rate

    def to_json(self) -> dict:
        """The curve as `v2m curve --json` and the server's /v1/curve give it, every count named
        with its rate: the video's frames per second, the frames sampled from it for the curve
        (at curve_fps), and the curve's length in latent frames (at latent_rate)."""
        return {
            "duration_s": self.duration_s, "video_fps": self.video_fps, "curve_fps": self.curve_fps,
            "sampled_frames": self.num_frames, "latent_rate": self.latent_rate,
            "latent_frames": int(self.curve.size), "impl": self.curve_impl,
            "curve": [round(float(v), 6) for v in self.curve],
        }


@dataclass
class GenerationResult:
    """What `Pipeline.generate` returns. `audio` is float32 [2, N] at `sample_rate`."""

    audio: np.ndarray
    sample_rate: int
    curve: np.ndarray
    seed: int
    prompt: str
    duration_s: float
    latents: np.ndarray  # [C, L] float32
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    step_ms: list[float] = field(default_factory=list)  # per sampler step (CPU clock or CUDA events)
    info: dict[str, Any] = field(default_factory=dict)
    prepared: Prepared | None = None  # what it was made from (reuse it for variants)

    def save(self, path: str | Path) -> Path:
        """Write the audio to .wav or .flac (atomically)."""
        t0 = time.perf_counter()
        kind = media.check_output_path(path)
        if kind == "video":
            raise InputError(f"{path}: saving music to a video needs the source video; use result.mux(video, path)")
        media.write_audio(path, self.audio, self.sample_rate)
        self.timings["write"] = time.perf_counter() - t0
        return Path(path)

    def mux(
        self, video_path: str | Path, path: str | Path, keep_audio_db: float | None = None, reencode: str = "auto"
    ) -> Path:
        """Write `path`: the video stream of `video_path` (the one the music was made for) copied
        bit-for-bit, or re-encoded when the container cannot hold it (see `media.mux`), plus this
        music as AAC."""
        t0 = time.perf_counter()
        media.check_output_path(path, video_path)
        media.mux(video_path, self.audio, self.sample_rate, path, keep_audio_db=keep_audio_db,
                  reencode=reencode, video_stream=self.info.get("video_stream"))
        self.timings["write"] = time.perf_counter() - t0
        return Path(path)
