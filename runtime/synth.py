"""Synthetic test videos with known hard cuts.

`make_test_video` writes a short clip whose scenes differ sharply (colour, stripe
direction, gradient) with a little motion inside each scene, so frame features
change a lot at the cuts and a little elsewhere. `v2m demo` and the tests use it;
it needs only PyAV and numpy and writes 5 s at 160x120 in well under a second.
Any container and encoder PyAV has can be asked for (.mp4, .mov, .m4v, .mkv, .webm,
.ts, .avi, .gif; libx264 with B-frames, libx265, VP8/VP9, AV1, GIF...), so tests
make the real-world variants they need instead of shipping binary fixtures.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from v2m.core.errors import OutputError

__all__ = ["make_gap_video", "make_test_video", "scene_palette"]

logger = logging.getLogger(__name__)

# Distinct, saturated scene colours (RGB); scene i uses entry i % len.
_PALETTE = np.array(
    [
        (220, 40, 40),
        (40, 200, 60),
        (40, 70, 230),
        (235, 210, 40),
        (200, 50, 210),
        (40, 210, 220),
        (240, 140, 30),
        (120, 120, 120),
    ],
    dtype=np.float32,
)

_CONTAINERS = {
    ".mp4": "mp4", ".mov": "mov", ".m4v": "mp4", ".mkv": "matroska", ".webm": "webm",
    ".ts": "mpegts", ".avi": "avi", ".gif": "gif",
}
# Pixel formats of encoders that do not take yuv420p.
_PIX_FMTS = {"gif": "rgb8", "png": "rgb24", "mjpeg": "yuvj420p"}
_VFR_TIME_BASE = Fraction(1, 90000)  # the MPEG clock: fine enough for irregular pts


def scene_palette() -> np.ndarray:
    """The scene base colours, uint8 [8, 3] RGB (scene i uses row i % 8)."""
    return _PALETTE.astype(np.uint8)


def _render(t: float, scene: int, width: int, height: int) -> np.ndarray:
    """One upright RGB frame (H, W, 3) uint8 of `scene` at time `t` seconds."""
    y = np.arange(height, dtype=np.float32)[:, None]
    x = np.arange(width, dtype=np.float32)[None, :]
    base = _PALETTE[scene % len(_PALETTE)]
    # Left-to-right gradient makes every scene asymmetric, so a wrong rotation shows.
    shade = 0.55 + 0.45 * (x / max(width - 1, 1))  # (1, W)
    # Stripes whose direction depends on the scene; they drift slowly over time.
    angle = (scene * 0.7) % math.pi
    period = 10.0 + 4.0 * (scene % 3)
    phase = 2 * math.pi * (x * math.cos(angle) + y * math.sin(angle) + 6.0 * t) / period
    stripes = 0.85 + 0.15 * np.sin(phase)  # (H, W)
    img = base[None, None, :] * (shade * stripes)[:, :, None]  # (H, W, 3)
    # A small bright square moving across the frame: motion inside a scene.
    side = max(4, min(width, height) // 6)
    cx = int((0.1 + 0.8 * ((t * 0.4) % 1.0)) * (width - side))
    cy = int((0.5 + 0.3 * math.sin(2 * math.pi * 0.5 * t)) * (height - side))
    img[cy : cy + side, cx : cx + side, :] = 250.0
    return np.clip(img, 0, 255).astype(np.uint8)


def _frame_times(duration_s: float, fps: float, vfr: bool, seed: int) -> list[float]:
    """Presentation times of the frames: regular 1/fps, or jittered in [0.5, 1.5]/fps."""
    if not vfr:
        return [i / fps for i in range(max(1, round(duration_s * fps)))]
    rng = np.random.default_rng(seed)
    times, t = [], 0.0
    while t < duration_s - 1e-9:
        times.append(t)
        t += float(rng.uniform(0.5, 1.5)) / fps
    return times


def make_test_video(
    path: str | os.PathLike,
    duration_s: float = 5.0,
    fps: float = 24.0,
    size: tuple[int, int] = (160, 120),
    cuts: tuple[float, ...] = (1.25, 2.5, 3.75),
    codec: str = "libx264",
    with_audio: bool = False,
    rotation: int = 0,
    vfr: bool = False,
    seed: int = 0,
    options: dict[str, str] | None = None,
    fade_s: float = 0.0,
) -> list[float]:
    """Write a short video with hard scene cuts at `cuts` (seconds) and return them.

    Args:
        path: output file; .mp4, .mov, .m4v, .mkv, .webm, .ts, .avi or .gif.
        duration_s: video duration in seconds.
        fps: frame rate (the mean rate when `vfr`).
        size: (width, height) as displayed, both even.
        cuts: cut times in seconds; a frame at time t >= cut shows the next scene.
        codec: video encoder, e.g. "libx264", "mpeg4", "libvpx-vp9", "libsvtav1", "gif".
        with_audio: add a stereo 44.1 kHz AAC sine track of the same duration.
        rotation: display rotation in degrees counter-clockwise (0, 90, 180, 270).
            The pixels are stored rotated the other way, so a player (or
            `VideoReader`) that applies the rotation shows the same upright
            `size` picture as `rotation=0`.
        vfr: irregular frame timestamps (variable frame rate).
        seed: seeds the VFR jitter.
        options: encoder options over the defaults, e.g. {"bf": "2"} for B-frames.
        fade_s: > 0 turns each cut into a cross-fade of this many seconds centred on it
            (the two scenes blended linearly); keep it under the gap between cuts.
    """
    path = Path(path)
    fmt = _CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"cannot write a test video to {path.name}: use one of {', '.join(_CONTAINERS)}")
    width, height = int(size[0]), int(size[1])
    if width % 2 or height % 2 or width < 16 or height < 16:
        raise ValueError(f"size must be even and at least 16x16, got {size}")
    if rotation % 90:
        raise ValueError(f"rotation must be a multiple of 90 degrees, got {rotation}")
    k = (rotation // 90) % 4
    cuts = sorted(float(c) for c in cuts)
    times = _frame_times(duration_s, fps, vfr, seed)

    coded_w, coded_h = (height, width) if k % 2 else (width, height)
    with _scheduling_kept(), av.open(str(path), "w", format=fmt) as out:
        rate = Fraction(fps).limit_denominator(1001)
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = coded_w, coded_h, _PIX_FMTS.get(codec, "yuv420p")
        opts = {"g": "12"}  # a keyframe every 12th frame keeps seeks and damage tests meaningful
        if codec == "libx264":
            opts.update(preset="ultrafast", crf="20")
        elif codec.startswith("libvpx"):
            opts.update(deadline="realtime", **{"cpu-used": "8"})
        elif codec == "libx265":
            opts.update(preset="ultrafast", **{"x265-params": "log-level=none"})
        elif codec == "libsvtav1":
            opts.update(preset="12", **{"svtav1-params": "keyint=12"})
        vs.options = {**opts, **(options or {})}
        time_base = _VFR_TIME_BASE if vfr else 1 / rate
        vs.codec_context.time_base = time_base
        if rotation:
            vs.set_display_rotation(rotation)
        aus = out.add_stream("aac", rate=44100, layout="stereo") if with_audio else None

        for i, t in enumerate(times):
            scene = sum(t >= c - 1e-9 for c in cuts)
            img = _render(t, scene, width, height)
            for j, c in enumerate(cuts if fade_s > 0 else ()):
                a = (t - (c - fade_s / 2)) / fade_s  # 0 -> 1 across the fade
                if 0.0 < a < 1.0:
                    mix = (1.0 - a) * _render(t, j, width, height).astype(np.float32) \
                        + a * _render(t, j + 1, width, height).astype(np.float32)
                    img = np.clip(np.round(mix), 0, 255).astype(np.uint8)
            if k:
                # Store rotated clockwise by `rotation`; display undoes it (CCW).
                img = np.ascontiguousarray(np.rot90(img, -k))
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = round(t / time_base) if vfr else i
            frame.time_base = time_base
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))

        if aus is not None:
            _write_sine(out, aus, duration_s)
    logger.debug("wrote test video %s (%d frames, cuts %s)", path, len(times), cuts)
    return cuts


def make_gap_video(path: str | os.PathLike, last_at_s: float, frames: int = 24, fps: int = 24,
                   honest_header: bool = True) -> None:
    """A hostile video: `frames` frames at 1 / `fps` s, then one more at `last_at_s` (hours
    later, in a file of a few KB). H.264 in Matroska (.mkv) or MPEG-TS (.ts).

    honest_header: False writes Matroska as a live stream, whose header then claims only the
    first frame's duration (the decoder meets the late frame only when it gets there).
    """
    path = Path(path)
    fmt = _CONTAINERS[path.suffix.lower()]
    opts = {} if honest_header or fmt != "matroska" else {"live": "1"}
    tb = Fraction(1, fps)
    with _scheduling_kept(), av.open(str(path), "w", format=fmt, options=opts) as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        vs.options = {"preset": "ultrafast", "g": "12"}
        vs.codec_context.time_base = tb
        for i, pts in enumerate([*range(frames), round(last_at_s * fps)]):
            frame = av.VideoFrame.from_ndarray(_render(i / fps, i // 12, 64, 48), format="rgb24")
            frame.pts, frame.time_base = pts, tb
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))


@contextmanager
def _scheduling_kept() -> Iterator[None]:
    """Undo what an encoder does to the calling thread's scheduling policy. SVT-AV1, run as
    root, raises its threads to SCHED_FIFO, the caller's included, and everything the
    process starts afterwards inherits it: two spinning real-time workers then starve the
    threads they wait for (a test suite hung so)."""
    get = getattr(os, "sched_getscheduler", None)
    if get is None:  # not Linux
        yield
        return
    policy, param = get(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if (get(0), os.sched_getparam(0).sched_priority) != (policy, param.sched_priority):
            logger.debug("restoring the scheduling policy an encoder changed")
            os.sched_setscheduler(0, policy, param)


def _write_sine(out: av.container.OutputContainer, stream, duration_s: float) -> None:
    """A 440/660 Hz stereo sine of exactly `duration_s`, encoded in 1024-sample frames."""
    sr = 44100
    n = round(duration_s * sr)
    t = np.arange(n, dtype=np.float64) / sr
    audio = np.stack([0.2 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)])
    audio = audio.astype(np.float32)  # (2, N)
    for start in range(0, n, 1024):
        chunk = np.ascontiguousarray(audio[:, start : start + 1024])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
