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
5. The video stream (`select_video_stream`) is the one marked default, else the
   largest that is not a cover picture or thumbnail; `stream=N` (the container's
   stream index, ffprobe's `Stream #0:N`) overrides. Muxing uses the same choice.
6. Damage: a packet the demuxer or decoder refuses is skipped, and frames resume at
   the next keyframe (the frames in between reference the lost data); the last
   good frame is held over the gap, and one warning says how many seconds were
   lost. The clock and the duration then cover the stream's whole packet span.
   Still images (a PNG renamed .mp4, a one-frame GIF) are refused as videos.
7. Limits (`VideoReader(max_duration_s=..., cancel=...)`): a video whose header says it is
   longer than `max_duration_s` is refused before decoding, and, since a header can lie
   (a few frames and one hours later: a 3 KB file), so is any frame or damaged tail whose
   time passes it while decoding (`VideoTooLong`). `cancel` (a `threading.Event` or a
   callable returning True) is consulted at every decoded frame and every yielded batch;
   once set, iteration raises `Cancelled`.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from v2m.core.errors import Cancelled, InputError, VideoTooLong

from .demux import DecodeLog, decode_frames, error_text, packets

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VideoInfo",
    "VideoReader",
    "check_cancel",
    "either",
    "check_duration",
    "DecodeLog",
    "codec_name",
    "decode_frames",
    "frame_rotation",
    "packets",
    "num_samples",
    "probe",
    "repeat_runs",
    "select_video_stream",
    "video_duration",
    "normalize",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_EPS = 1e-6  # seconds; absorbs pts rounding so a frame exactly at t_k is taken
# AVStream dispositions (libavformat/avformat.h); ints, so any PyAV version reads them.
_DEFAULT, _ATTACHED_PIC, _TIMED_THUMBNAILS, _STILL_IMAGE = 0x1, 0x400, 0x800, 0x100000
# Image codecs: a stream of one of these with a single picture is a still image.
_IMAGE_CODECS = frozenset({
    "png", "apng", "mjpeg", "jpeg2000", "jpegls", "jpegxl", "bmp", "tiff", "webp", "gif",
    "qoi", "ppm", "pgm", "pgmyuv", "pbm", "pam", "sgi", "targa", "dpx", "exr", "pcx", "hdr",
})


@dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns from the container headers and the first frame."""

    path: str
    duration_s: float  # of the video stream (headers; VideoReader refines it after decoding)
    fps: float  # average frame rate
    width: int  # as displayed, after rotation
    height: int
    rotation: int  # display rotation, degrees counter-clockwise, one of 0/90/180/270
    codec: str  # the codec ("av1", "h264"), not the decoder's name ("libdav1d")
    has_audio: bool
    audio_duration_s: float | None
    stream_index: int = 0  # the container's index of the video stream used


def check_cancel(cancel: threading.Event | Callable[[], bool] | None) -> None:
    """Raise `Cancelled` once `cancel` (a `threading.Event`, or a callable returning True) is set."""
    if cancel is not None and (cancel.is_set() if isinstance(cancel, threading.Event) else cancel()):
        raise Cancelled("the work was cancelled (the request was abandoned or the server is stopping)")


def either(*cancels: threading.Event | Callable[[], bool] | None) -> Callable[[], bool]:
    """One cancel that is set once any of `cancels` is (None entries ignored)."""
    live = [c for c in cancels if c is not None]

    def cancelled() -> bool:
        return any(c.is_set() if isinstance(c, threading.Event) else c() for c in live)

    return cancelled


def check_duration(seconds: float, max_duration_s: float | None, name: str, where: str = "lasts") -> None:
    """Raise `VideoTooLong` when `seconds` passes `max_duration_s` (None or 0: no limit).
    `where`: how the time was learned ("lasts", "has a frame at"), for the message."""
    if max_duration_s and seconds > max_duration_s:
        raise VideoTooLong(f"{name} {where} {seconds:.1f} s; the limit is {max_duration_s:g} s "
                           "(--max-duration); cut the video or raise the limit")


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


def frame_rotation(frame: av.VideoFrame) -> int:
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


def codec_name(stream) -> str:
    """The stream's codec ("av1", "h264"): not its decoder's name ("libdav1d"), which
    muxers do not know."""
    ctx = stream.codec_context
    return ctx.codec.canonical_name if ctx is not None else "unknown"


def _area(stream) -> int:
    ctx = stream.codec_context
    return (ctx.width * ctx.height) if ctx is not None else 0


def _describe_streams(container) -> str:
    """The video streams for a message: `0 (h264 160x120, default), 1 (png 64x48, cover)`."""
    parts = []
    for s in container.streams.video:
        flags = int(s.disposition)
        tags = ["default"] * bool(flags & _DEFAULT) + ["cover"] * bool(flags & (_ATTACHED_PIC | _TIMED_THUMBNAILS))
        size = f"{s.codec_context.width}x{s.codec_context.height}" if s.codec_context is not None else "?"
        parts.append(f"{s.index} ({codec_name(s)} {size}{''.join(', ' + t for t in tags)})")
    return ", ".join(parts)


def select_video_stream(container: av.container.InputContainer, index: int | None = None, name: str = ""):
    """The video stream to decode and mux.

    Args:
        container: an open input.
        index: the container's stream index to use (ffprobe's `Stream #0:N`); None picks the
            stream marked default, else the largest that is not a cover picture or thumbnail.
        name: the file's name, for messages.

    Raises:
        InputError: no video stream, only a cover picture, or `index` is not a video stream.
    """
    name = name or Path(container.name).name
    videos = list(container.streams.video)
    if index is not None:
        if not 0 <= index < len(container.streams):
            what = f"{name} has no stream {index}"
        elif container.streams[index].type != "video":
            what = f"stream {index} of {name} is {container.streams[index].type}, not video"
        else:
            return container.streams[index]
        have = f"its video streams: {_describe_streams(container)}" if videos else "it has no video stream"
        raise InputError(f"{what}; {have} (pass one of them to --video-stream)")
    if not videos:
        kind = "only audio" if container.streams.audio else "no video stream"
        raise InputError(f"{name} has {kind}; pass a file with a video stream")
    real = [s for s in videos if not int(s.disposition) & (_ATTACHED_PIC | _TIMED_THUMBNAILS)]
    if not real:
        raise InputError(f"{name} holds only a cover picture, no video; pass a video file")
    marked = [s for s in real if int(s.disposition) & _DEFAULT]
    return max(marked or real, key=lambda s: (_area(s), -s.index))


def _check_still(container, stream, path: Path) -> None:
    """Refuse a still image: an image demuxer, or an image codec holding one picture."""
    fmt = container.format.name
    codec = codec_name(stream)
    if fmt == "image2" or fmt.endswith("_pipe") or int(stream.disposition) & _STILL_IMAGE:
        raise InputError(f"{path.name} is a still image ({codec}), not a video; pass a video file")
    if codec in _IMAGE_CODECS:
        count = 0
        with open_video(path) as c:  # a second reader: `container` stays at the start
            for packet in packets(c, c.streams[stream.index]):
                count += bool(packet.size)
                if count > 1:
                    return
        raise InputError(f"{path.name} is a single {codec} picture, not a video; pass a video file")


def probe(path: str | os.PathLike, stream: int | None = None) -> VideoInfo:
    """Read a video's headers and decode its first frame.

    Args:
        path: the video file.
        stream: the container's index of the video stream to use (see `select_video_stream`).

    Raises:
        InputError: missing, empty or unreadable file, no video stream, a still image, or no
            frame decodes.
    """
    p = _check_file(path)
    with open_video(p) as container:
        return probe_open(container, p, stream)


def probe_open(container: av.container.InputContainer, p: Path, stream: int | None = None) -> VideoInfo:
    """`probe` of an open container (its first frame is decoded; seek to 0 to read it again)."""
    vs = select_video_stream(container, stream, p.name)
    if len(container.streams.video) > 1:
        logger.info("%s: using video stream %d of %s", p.name, vs.index, _describe_streams(container))
    _check_still(container, vs, p)
    log = DecodeLog()
    first = None
    for frame, _ in decode_frames(container, vs, log):
        first = frame
        break
    if first is None:
        why = f" ({log.first_error})" if log.first_error else ""
        raise InputError(f"no frame of {p.name} decodes{why}; the file is corrupt or truncated")

    rotation = frame_rotation(first)
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
        codec=codec_name(vs),
        has_audio=bool(container.streams.audio),
        audio_duration_s=audio_duration,
        stream_index=vs.index,
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
    reader.damage.lost_s                           # seconds held over damaged parts
    ```
    """

    def __init__(self, path: str | os.PathLike, stream: int | None = None, max_duration_s: float | None = None,
                 cancel: threading.Event | Callable[[], bool] | None = None, info: VideoInfo | None = None):
        """Args: path: the video; stream: the container's index of the video stream (None: see
        `select_video_stream`); max_duration_s: refuse a longer video (None or 0: no limit);
        cancel: stop decoding once set (see the module docstring, 7); info: its `probe`, when
        the caller has it (not probed again)."""
        self.info = info if info is not None and (stream is None or stream == info.stream_index) else probe(path, stream)
        self.path = Path(self.info.path)
        self.max_duration_s, self.cancel = max_duration_s, cancel
        check_duration(self.info.duration_s, max_duration_s, self.path.name)
        self.duration_s: float | None = None  # set when a `sample` pass finishes
        self.num_samples: int | None = None
        self.frames_decoded: int | None = None
        self.damage = DecodeLog()
        self._tail_end = 0.0  # a damaged tail's end, when packets outlast the last good frame
        self.packet_log = None  # (records, time_base, average_rate) of the last full pass

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
        width, height = self._check_sample_args(fps, size, batch_size)
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
                check_cancel(self.cancel)
                yield batch
                batch, n = np.empty_like(batch), 0
        if n:
            yield batch[:n]

    def sample_runs(
        self, fps: float, size: tuple[int, int] | int, batch_size: int = 32, max_samples: int | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Like `sample`, but each source frame once: yield (frames [n, H, W, 3] uint8, counts [n]).

        A video slower than `fps` shows one frame at several consecutive sample times; here it
        comes once with `counts[i]`, the number of consecutive samples that show it, so a
        per-frame encoder runs once per distinct frame and `repeat_runs` expands its output
        to one row per sample (exactly `sample`'s rows). A batch holds at most `batch_size`
        frames and `max_samples` samples (default 8 * batch_size, so a long still shot does
        not expand into an unbounded batch; a run longer than that is split across batches).
        """
        width, height = self._check_sample_args(fps, size, batch_size)
        max_samples = max_samples or 8 * batch_size
        frames = np.empty((batch_size, height, width, 3), dtype=np.uint8)
        counts = np.zeros(batch_size, dtype=np.int64)
        n = total = 0
        for rgb, count in self._runs(fps, width, height):
            while count:
                take = min(count, max_samples - total)
                frames[n], counts[n] = rgb, take
                n, total, count = n + 1, total + take, count - take
                if n == batch_size or total == max_samples:
                    check_cancel(self.cancel)
                    yield frames[:n], counts[:n]
                    frames, counts, n, total = np.empty_like(frames), np.zeros_like(counts), 0, 0
        if n:
            yield frames[:n], counts[:n]

    def _runs(self, fps: float, width: int, height: int) -> Iterator[tuple[np.ndarray, int]]:
        """(upright RGB frame, consecutive samples showing it) for each distinct picked frame."""
        self.duration_s = self.num_samples = self.frames_decoded = None
        current, count = None, 0
        for frame in self._pick(fps):
            if frame is current:
                count += 1
                continue
            if current is not None:
                yield self._convert(current, width, height), count
            current, count = frame, 1
        if current is not None:
            yield self._convert(current, width, height), count

    def _check_sample_args(self, fps: float, size: tuple[int, int] | int, batch_size: int) -> tuple[int, int]:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        width, height = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if width < 1 or height < 1 or batch_size < 1:
            raise ValueError(f"bad size {size} or batch_size {batch_size}")
        return width, height

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

        duration = max(last_t + last_dur, self._tail_end)
        check_duration(self._tail_end, self.max_duration_s, self.path.name, "has damaged packets until")
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
        """(t, duration, frame) for each good frame in presentation order.

        t counts from the first frame, or from the first packet when damage came before
        the first good frame (so the music stays in step with the muxed video). Damage
        is skipped (see `decode_frames`) and recorded in `self.damage`, with one warning at the end.
        """
        decoded = 0
        self.damage = log = DecodeLog()
        self._tail_end = 0.0
        with open_video(self.path) as container:
            vs = select_video_stream(container, self.info.stream_index, self.path.name)
            vs.thread_type = "AUTO"
            default_dur = 1.0 / float(vs.average_rate) if vs.average_rate else None
            start = None
            last_t, last_step, last_end = 0.0, None, 0.0  # last_step: the latest inter-frame interval
            errors_seen = 0  # log.errors at the last good frame
            for frame, after_damage in decode_frames(container, vs, log):
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None or frame.time_base is None:
                    # No timestamp: continue the previous frame's clock.
                    t = last_t + (last_step or default_dur or 0.0) if decoded else 0.0
                else:
                    if start is None:
                        start = pts * frame.time_base
                        if log.errors and log.start_s is not None:
                            start = min(start, log.start_s)
                    t = float(pts * frame.time_base - start)
                if decoded and t < last_t:
                    logger.debug("%s: pts going backwards at %.4f s; dropped", self.path.name, t)
                    continue
                check_cancel(self.cancel)
                check_duration(t, self.max_duration_s, self.path.name, "has a frame at")  # the header may lie
                if after_damage and t > last_end:
                    log.gaps.append((last_end, t))
                if decoded:
                    last_step = t - last_t
                decoded += 1
                self.frames_decoded = decoded
                own = _seconds(frame.duration, frame.time_base) if frame.duration else None
                dur = own or default_dur or last_step or 0.0
                yield t, dur, frame
                last_t, last_end, errors_seen = t, t + dur, log.errors
            # the packets as read, for the mux (`media.timeline_of`): it need not read them again
            self.packet_log = (log.records, vs.time_base, vs.average_rate)
        if decoded == 0:
            why = f" ({log.first_error})" if log.first_error else ""
            raise InputError(f"no frame of {self.path.name} decodes{why}; the file is corrupt or truncated")
        if log.errors > errors_seen and log.end_s is not None and start is not None:
            # Damage after the last good frame: hold it to the end of the stream's packets.
            self._tail_end = float(log.end_s - start)
            if self._tail_end > last_end:
                log.gaps.append((last_end, self._tail_end))
        if log.errors:
            where = ", ".join(f"{a:.2f}-{b:.2f} s" for a, b in log.gaps[:3]) + (" ..." if len(log.gaps) > 3 else "")
            logger.warning(
                "%s: skipped %d damaged packet%s (first: %s); %.2f s of video lost%s, the last good frame held there",
                self.path.name,
                log.errors,
                "s" * (log.errors != 1),
                log.first_error,
                log.lost_s,
                f" at {where}" if where else "",
            )

    def _convert(self, frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
        """Upright RGB uint8 (height, width, 3) of the whole frame."""
        k = frame_rotation(frame) // 90
        # Resize in the coded orientation, then rotate: swapped target dims for 90/270.
        w, h = (height, width) if k % 2 else (width, height)
        rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()  # (h, w, 3)
        if k:
            rgb = np.rot90(rgb, k)  # counter-clockwise, as the display matrix says
        return rgb


def repeat_runs(rows, counts: np.ndarray):
    """Row i of `rows` (numpy array or torch tensor, [n, ...]) repeated counts[i] times:
    per-distinct-frame results of `VideoReader.sample_runs` -> one row per sample."""
    if isinstance(rows, np.ndarray):
        return np.repeat(rows, counts, axis=0)
    import torch  # device features of the torch backend; torch is already loaded then

    return torch.repeat_interleave(rows, torch.as_tensor(counts, device=rows.device), dim=0)


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
