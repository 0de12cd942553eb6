"""Video probing and streaming frame sampling (PyAV; no torch).

Sampling is by timestamp, never by frame index, so variable-frame-rate video and
odd containers come out right. Conventions (the event curve depends on them):

1. The clock starts at the first decoded frame: t = (pts - first_pts) * time_base.
2. Sample k sits at t_k = k / fps and shows the latest frame with t <= t_k + 1e-6.
3. The video lasts `duration = last_t + last_frame_duration` (the last frame's own
   duration, else 1 / average rate), and there are ceil(duration * fps) samples
   (at least one).
4. Frames are rotated upright by their display matrix, then the whole frame is
   resized to the target size (no crop) by swscale, to RGB uint8.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import InputError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VideoInfo",
    "VideoReader",
    "num_samples",
    "probe",
    "video_duration",
    "normalize",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EPS = 1e-6  # seconds; absorbs pts rounding so a frame exactly at t_k is taken


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns from the container headers and the first frame."""

    path: str
    duration_s: float  # of the video stream (headers; VideoReader refines it after decoding)
    fps: float  # average frame rate
    width: int  # as displayed, after rotation
    height: int
    rotation: int  # display rotation, degrees counter-clockwise, one of 0/90/180/270
    codec: str
    has_audio: bool
    audio_duration_s: float | None


def num_samples(duration_s: float, fps: float) -> int:
    """Samples covering `duration_s` at `fps`: ceil(duration * fps), at least 1."""
    # Round first so 5.0 s * 24 = 120.00000000000001 does not become 121.
    return max(1, math.ceil(round(duration_s * fps, 6)))


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise InputError(f"video not found: {p}; check the path")
    if p.is_dir():
        raise InputError(f"{p} is a directory, not a video file; pass a video file")
    if p.stat().st_size == 0:
        raise InputError(f"{p} is empty (0 bytes); pass a complete video file")
    return p


def open_video(p: str | Path) -> av.container.InputContainer:
    """Open a video for reading; an unreadable file is one `InputError` line."""
    p = Path(p)
    try:
        return av.open(str(p), "r")
    except av.FFmpegError as e:
        raise InputError(
            f"cannot read {p.name} as a video ({error_text(e)}); pass a complete video file"
        ) from e


def error_text(e: BaseException) -> str:
    """The error's text on one line."""
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(msg).split())


def _rotation(frame: av.VideoFrame) -> int:
    """The frame's display rotation snapped to 0/90/180/270 (counter-clockwise)."""
    deg = frame.rotation or 0
    snapped = int(round(deg / 90.0)) * 90 % 360
    if abs(((deg - snapped) + 180) % 360 - 180) > 1:
        logger.warning("display rotation %.1f deg is not a multiple of 90; using %d", deg, snapped)
    return snapped


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a video's headers and decode its first frame.

    Args:
        path: the video file.

    Raises:
        InputError: missing, empty or unreadable file, no video stream, or no frame decodes.
    """
    p = _check_file(path)
    with open_video(p) as container:
        if not container.streams.video:
            kind = "only audio" if container.streams.audio else "no video stream"
            raise InputError(f"{p.name} has {kind}; pass a file with a video stream")
        vs = container.streams.video[0]
        first = None
        try:
            for frame in container.decode(vs):
                first = frame
                break
        except av.FFmpegError as e:
            raise InputError(
                f"cannot decode {p.name} ({error_text(e)}); the file is corrupt or truncated"
            ) from e
        if first is None:
            raise InputError(f"no frame of {p.name} decodes; the file is corrupt or truncated")

        rotation = _rotation(first)
        fps = float(vs.average_rate or vs.guessed_rate or 0.0)
        duration = _seconds(vs.duration, vs.time_base)
        if duration is None and container.duration is not None:
            duration = container.duration / av.time_base
        if duration is None or duration <= 0:
            duration = 1.0 / fps if fps > 0 else 0.0
        audio_duration = None
        if container.streams.audio:
            aus = container.streams.audio[0]
            audio_duration = _seconds(aus.duration, aus.time_base)
            if audio_duration is None and container.duration is not None:
                audio_duration = container.duration / av.time_base
        w, h = first.width, first.height
        if rotation in (90, 270):
            w, h = h, w
        return VideoInfo(
            path=str(p),
            duration_s=float(duration),
            fps=fps,
            width=w,
            height=h,
            rotation=rotation,
            codec=vs.codec_context.name,
            has_audio=bool(container.streams.audio),
            audio_duration_s=audio_duration,
        )


def video_duration(path: str | os.PathLike) -> float:
    """The video stream's duration in seconds, from the headers (see `probe`)."""
    return probe(path).duration_s


class VideoReader:
    """Streams frames sampled by timestamp; never holds the whole video.

    ```
    reader = VideoReader("clip.mp4")
    for batch in reader.sample(fps=8, size=224):   # uint8 [n, 224, 224, 3]
        ...
    reader.duration_s, reader.num_samples          # exact, after iteration
    ```
    """

    def __init__(self, path: str | os.PathLike):
        self.info = probe(path)
        self.path = Path(self.info.path)
        self.duration_s: float | None = None  # set when a `sample` pass finishes
        self.num_samples: int | None = None
        self.frames_decoded: int | None = None

    def expected_samples(self, fps: float) -> int:
        """Sample count predicted from the headers; `num_samples` after iteration is exact."""
        return num_samples(self.info.duration_s, fps)

    def sample(
        self, fps: float, size: tuple[int, int] | int, batch_size: int = 32
    ) -> Iterator[np.ndarray]:
        """Yield RGB uint8 batches [n, H, W, 3] of frames sampled at `fps`.

        Args:
            fps: samples per second of video time.
            size: (width, height) of the output frames, or one int for a square.
            batch_size: frames per yielded batch (the last batch may be smaller).
        """
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if width < 1 or height < 1 or batch_size < 1:
            raise ValueError(f"bad size {size} or batch_size {batch_size}")
        self.duration_s = self.num_samples = self.frames_decoded = None

        batch = np.empty((batch_size, height, width, 3), dtype=np.uint8)
        n = 0
        converted, rgb = None, None  # a frame shown by several samples is converted once
        for frame in self._pick(fps):
            if frame is not converted:
                converted, rgb = frame, self._convert(frame, width, height)
            batch[n] = rgb
            n += 1
            if n == batch_size:
                yield batch
                batch, n = np.empty_like(batch), 0
        if n:
            yield batch[:n]

    def _pick(self, fps: float) -> Iterator[av.VideoFrame]:
        """The frame on screen at each t_k = k / fps; sets duration_s and num_samples at the end."""
        k = 0  # next sample index
        prev = None  # the latest frame at or before t_k
        last_t, last_dur = 0.0, 0.0
        for t, dur, frame in self._decode():
            # Every target time before this frame shows the previous one.
            while prev is not None and k / fps + _EPS < t:
                yield prev
                k += 1
            prev, last_t, last_dur = frame, t, dur

        duration = last_t + last_dur
        if duration < self.info.duration_s - max(0.5, 2 * last_dur):
            logger.warning(
                "%s: decoded %.2f s of the %.2f s the header promises; the file may be truncated",
                self.path.name,
                duration,
                self.info.duration_s,
            )
        total = num_samples(duration, fps)
        while k < total:
            yield prev
            k += 1
        self.duration_s, self.num_samples = duration, k
        logger.debug(
            "%s: %d frames decoded, %d samples at %g fps, %.4f s",
            self.path.name,
            self.frames_decoded,
            k,
            fps,
            duration,
        )

    def _decode(self) -> Iterator[tuple[float, float, av.VideoFrame]]:
        """(t, duration, frame) for each frame in presentation order, t from the first frame.

        A decode error after at least one frame ends the stream with a warning
        (a truncated file yields what it holds); before any frame it is an InputError.
        """
        decoded = 0
        with open_video(self.path) as container:
            vs = container.streams.video[0]
            vs.thread_type = "AUTO"
            default_dur = 1.0 / float(vs.average_rate) if vs.average_rate else None
            frames = container.decode(vs)
            start = None
            last_t, last_step = 0.0, None  # last_step: the latest inter-frame interval
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    break
                except av.FFmpegError as e:
                    if decoded == 0:
                        raise InputError(
                            f"cannot decode {self.path.name} ({error_text(e)}); "
                            "the file is corrupt or truncated"
                        ) from e
                    logger.warning(
                        "%s: decoding stopped after %d frames (%s); using the decoded part",
                        self.path.name,
                        decoded,
                        error_text(e),
                    )
                    break
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None or frame.time_base is None:
                    # No timestamp: continue the previous frame's clock.
                    t = last_t + (last_step or default_dur or 0.0) if decoded else 0.0
                else:
                    if start is None:
                        start = pts * frame.time_base
                    t = float(pts * frame.time_base - start)
                if decoded and t < last_t:
                    logger.debug("%s: pts going backwards at %.4f s; dropped", self.path.name, t)
                    continue
                if decoded:
                    last_step = t - last_t
                decoded += 1
                self.frames_decoded = decoded
                own = _seconds(frame.duration, frame.time_base) if frame.duration else None
                yield t, own or default_dur or last_step or 0.0, frame
                last_t = t
        if decoded == 0:
            raise InputError(
                f"no frame of {self.path.name} decodes; the file is corrupt or truncated"
            )

    def _convert(self, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
        """Upright RGB uint8 (height, width, 3) of the whole frame."""
        k = _rotation(frame) // 90
        # Resize in the coded orientation, then rotate: swapped target dims for 90/270.
        w, h = (height, width) if k % 2 else (width, height)
        rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()  # (h, w, 3)
        if k:
            rgb = np.rot90(rgb, k)  # counter-clockwise, as the display matrix says
        return rgb


def normalize(
    frames: np.ndarray,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """uint8 [n, H, W, 3] -> float32 [n, 3, H, W]: (x / 255 - mean) / std per channel."""
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [n, H, W, 3], got shape {frames.shape}")
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    x = frames.transpose(0, 3, 1, 2).astype(np.float32)  # (n, 3, H, W)
    x *= np.float32(1 / 255)
    x -= m
    x /= s
    return x
