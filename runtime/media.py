"""Writing the result: audio files, and the input video with the music muxed in.

Every write is atomic: the data goes to a hidden temporary file in the output's
directory, which replaces the output only once it is complete; on any failure
the temporary file is removed and no output file appears.

- .wav and .flac are 16-bit PCM. 16 bits (96 dB of range) is more than the
  model's output resolves, every player reads it, and it is half the size of
  float WAV; the audio is clipped to [-1, 1] first anyway, so float's headroom
  buys nothing. We quantize ourselves (round(x * 32767)) so the bytes do not
  depend on libsndfile's float conversion.
- Video outputs copy the input's video stream packet for packet (no re-encode)
  and add one stereo 44.1 kHz AAC track, optionally over the original sound.
  Every packet is copied, with or without a decode timestamp from the demuxer.
  The stream is `video.select_video_stream`'s (the same the music was made for).
- When the output container cannot hold the source's codec (VP8 in .mp4, GIF in
  .mkv...), `plan_mux` says so before any work: the picture is re-encoded as
  H.264 at near-source quality (`reencode="auto"`, logged) or refused in one line
  naming the containers that can hold it (`reencode="never"`).
- A write that fails (full disk, no permission, a folder that vanished) is one
  `OutputError` line and leaves no file (see `tempfiles`).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from v2m.core.errors import InputError, NumericalError, OutputError
from v2m.core.tempfiles import atomic_output, check_name_length, is_special

from . import video
from .mux_plan import (
    MUX_SAMPLE_RATE,
    REENCODE_MODES,
    VIDEO_SUFFIXES,
    MuxPlan,
    Source,
    h264_encoder,
    inspect,
    plan_mux,
)
from .timeline import Timeline, read_timeline
from .video import error_text, open_video

__all__ = [
    "AUDIO_SUFFIXES",
    "VIDEO_SUFFIXES",
    "MUX_SAMPLE_RATE",
    "REENCODE_MODES",
    "MuxPlan",
    "Source",
    "check_output_path",
    "inspect",
    "plan_mux",
    "finalize_audio",
    "write_audio",
    "mux",
    "save",
]

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav": "WAV", ".flac": "FLAC"}  # suffix -> soundfile format
AAC_BIT_RATE = 192_000  # transparent for stereo music at 44.1 kHz
_AAC_FRAME = 1024  # samples per AAC frame
_REENCODE_CRF = 18  # x264's "visually lossless" quality: close to any source


def check_output_path(path: str | os.PathLike, video_path: str | os.PathLike | None = None) -> str:
    """Check that `path` can be written, before any heavy compute; return its kind.

    Args:
        path: the output file: .wav, .flac, or a video container (.mp4, .mov, .mkv, .m4v).
        video_path: the input video; the output may not be the same file.

    Returns:
        "wav", "flac" or "video".

    Raises:
        OutputError: unknown suffix, missing or read-only directory, a directory
            given as the output, a name too long for its folder, or the output is the
            input video.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in AUDIO_SUFFIXES:
        kind = suffix[1:]
    elif suffix in VIDEO_SUFFIXES:
        kind = "video"
    else:
        allowed = ", ".join(list(AUDIO_SUFFIXES) + list(VIDEO_SUFFIXES))
        raise OutputError(f"cannot write {p.name!r}: the output must end in one of {allowed}")
    parent = p.parent
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist; create it first")
    if not is_special(p):  # a device or FIFO is written in place, its folder untouched
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"output directory {parent} is not writable; choose another output path")
        check_name_length(p)
    if p.is_dir():
        raise OutputError(f"output {p} is a directory; give a file name")
    if video_path is not None and _same_file(p, Path(video_path)):
        raise OutputError(f"output {p} is the input video; write to a different file")
    return kind


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _as_stereo(audio: np.ndarray) -> np.ndarray:
    """[N], [1, N] or [2, N] -> float32 [2, N]."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] not in (1, 2):
        raise ValueError(f"audio must be [2, N] (or mono [N] / [1, N]), got shape {a.shape}")
    if a.shape[0] == 1:
        a = np.repeat(a, 2, axis=0)  # (2, N)
    return a


def _check_finite(audio: np.ndarray) -> None:
    bad = ~np.isfinite(audio)
    if bad.any():
        raise NumericalError(
            f"the generated audio has {int(bad.sum())} non-finite samples (NaN or infinity); nothing was written "
            "(try another seed, or the fp32 backend)"
        )


def finalize_audio(
    audio: np.ndarray, duration_s: float, sample_rate: int, fade_out_s: float = 0.05
) -> np.ndarray:
    """Fit generated audio to the video: trim or zero-pad, fade out, check, clip.

    Args:
        audio: float [2, N] (mono [N] or [1, N] is duplicated to stereo).
        duration_s: the video's duration; the result has round(duration_s * sample_rate) samples.
        sample_rate: samples per second of `audio`.
        fade_out_s: length of the raised-cosine fade to silence at the end.

    Raises:
        NumericalError: the audio holds NaN or Inf.
    """
    a = _as_stereo(audio)
    _check_finite(a)
    n = max(1, round(duration_s * sample_rate))
    out = np.zeros((2, n), dtype=np.float32)
    m = min(n, a.shape[1])
    out[:, :m] = a[:, :m]
    if a.shape[1] < n:
        logger.debug("audio %d samples short of the video; padded with silence", n - a.shape[1])
    fade = min(n, round(fade_out_s * sample_rate))
    if fade > 1:
        # Raised cosine from 1 to exactly 0 at the last sample.
        out[:, n - fade :] *= (0.5 * (1 + np.cos(np.linspace(0, np.pi, fade)))).astype(np.float32)
    clipped = np.abs(out) > 1.0
    if clipped.any():
        logger.warning(
            "audio clipped to [-1, 1] at %d of %d samples (peak %.2f)",
            int(clipped.sum()),
            out.size,
            float(np.abs(out).max()),
        )
        np.clip(out, -1.0, 1.0, out=out)
    return out


def _quantize16(audio: np.ndarray) -> np.ndarray:
    """float [2, N] -> int16 [N, 2], clipped, round(x * 32767)."""
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16).T  # (N, 2)


class _CheckedFile:
    """A file for libsndfile's virtual IO that keeps the first I/O error.

    soundfile calls `write`, `seek`, `tell` and `flush` from C callbacks, where an
    exception is only printed (a traceback per call: a buffered file that cannot flush
    onto a full disk fails in every later `seek`); libsndfile then sees a short write
    (or none: FLAC carries on) and the file is silently truncated. Here the first error
    is kept, every later call does nothing, and the error is raised after `sf.write`.
    """

    def __init__(self, f):
        self.f, self.error = f, None

    def _call(self, name: str, *args):
        if self.error is not None:
            return 0
        try:
            return getattr(self.f, name)(*args)
        except OSError as e:
            self.error = e
            return 0

    def write(self, data) -> int:
        return self._call("write", data)

    def seek(self, *args) -> int:
        return self._call("seek", *args)

    def tell(self) -> int:
        return self._call("tell")

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name):  # read, mode, name...: the real file's
        return getattr(self.f, name)


def _open_for_write(path: Path):
    """The binary file an audio writer writes into (tests replace it to simulate a full disk)."""
    return open(path, "wb")


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Atomically write stereo 16-bit PCM .wav or .flac.

    Args:
        path: output file ending in .wav or .flac.
        audio: float [2, N] in [-1, 1] (values outside are clipped).
        sample_rate: samples per second.

    Raises:
        OutputError: bad suffix or directory, or the write failed (a full disk, a vanished
            folder, no permission): one line, and no file is left.
        NumericalError: non-finite values in `audio` (nothing is written).
    """
    p = Path(path)
    kind = check_output_path(p)
    if kind not in ("wav", "flac"):
        raise OutputError(f"write_audio writes .wav or .flac, not {p.suffix}; use save() for video")
    a = _as_stereo(audio)
    _check_finite(a)
    data = _quantize16(a)
    with atomic_output(p, errors=(RuntimeError, sf.LibsndfileError)) as tmp:
        with _open_for_write(tmp) as f:  # a file object: libsndfile cannot open non-UTF-8 names
            checked = _CheckedFile(f)
            try:
                sf.write(checked, data, int(sample_rate), subtype="PCM_16", format=AUDIO_SUFFIXES[p.suffix.lower()])
            except Exception:  # noqa: BLE001 - after a failed write soundfile asserts; the cause is kept
                if checked.error is None:
                    raise
            if checked.error is not None:
                raise checked.error
    logger.info("wrote %s (%.2f s, %d Hz, PCM_16)", p, a.shape[1] / sample_rate, sample_rate)
    return p


def _resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """float32 [2, N] at rate_in -> float32 [2, M] at rate_out (swresample)."""
    if rate_in == rate_out:
        return audio
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=rate_out)
    chunks = []
    step = rate_in  # one second at a time
    for start in range(0, audio.shape[1] + 1, step):
        if start < audio.shape[1]:
            chunk = np.ascontiguousarray(audio[:, start : start + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate = rate_in
            frame.pts = start
            frame.time_base = Fraction(1, rate_in)
            out_frames = resampler.resample(frame)
        else:
            out_frames = resampler.resample(None)  # flush
        chunks += [f.to_ndarray() for f in out_frames]
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((2, 0), np.float32)


def _original_audio(container: av.container.InputContainer, start_s: float, n: int) -> np.ndarray:
    """The input's first audio stream as float32 [2, n] at 44.1 kHz, aligned to `start_s`."""
    stream = container.streams.audio[0]
    resampler = av.AudioResampler(format="fltp", layout="stereo", rate=MUX_SAMPLE_RATE)
    out = np.zeros((2, n), dtype=np.float32)
    pos = None
    try:
        for frame in itertools.chain(container.decode(stream), [None]):
            for rf in resampler.resample(frame):
                if pos is None:
                    t0 = (
                        float(frame.time)
                        if frame is not None and frame.time is not None
                        else start_s
                    )
                    pos = round((t0 - start_s) * MUX_SAMPLE_RATE)
                x = rf.to_ndarray()  # (2, samples)
                lo, hi = max(pos, 0), min(pos + x.shape[1], n)
                if hi > lo:
                    out[:, lo:hi] = x[:, lo - pos : hi - pos]
                pos += x.shape[1]
    except av.FFmpegError as e:
        logger.warning("original audio stopped decoding (%s); keeping what decoded", error_text(e))
    return out


def _audio_frames(audio: np.ndarray, pts0: int) -> Iterator[av.AudioFrame]:
    for start in range(0, audio.shape[1], _AAC_FRAME):
        chunk = np.ascontiguousarray(audio[:, start : start + _AAC_FRAME])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
        frame.sample_rate = MUX_SAMPLE_RATE
        frame.pts = pts0 + start
        frame.time_base = Fraction(1, MUX_SAMPLE_RATE)
        yield frame


def mux(
    video_path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    out_path: str | os.PathLike,
    keep_audio_db: float | None = None,
    reencode: str = "auto",
    video_stream: int | None = None,
    plan: MuxPlan | None = None,
    timeline: Timeline | None = None,
) -> Path:
    """Atomically write the input's video stream, copied bit for bit, plus the music as AAC.

    Every packet of the video stream is copied, whether or not the source gave it a
    decode timestamp. When the output container cannot hold the codec, see
    `plan_mux` (re-encoded as H.264 by default). The music is resampled to 44.1 kHz
    if needed and trimmed or padded to the video stream's span, starting at its first frame.

    Args:
        video_path: the input video.
        audio: float [2, N] at `sample_rate` (see `finalize_audio`).
        sample_rate: samples per second of `audio`.
        out_path: output .mp4, .mov, .m4v or .mkv; not the input.
        keep_audio_db: if given and the input has sound, mix the original audio
            under the music at this gain in dB (e.g. -12).
        reencode: "auto" (re-encode the picture as H.264 only when the container cannot
            hold its codec) or "never" (refuse instead).
        video_stream: the container's index of the video stream (None: the default one).
        plan: `plan_mux`'s (or `inspect`'s) plan for this input and output, when the caller has it.
        timeline: the stream's `timeline_of`, when the decode pass recorded it (`VideoReader.timeline`).

    Raises:
        OutputError: bad output path, a codec the container cannot hold with
            `reencode="never"`, or a failed write (no file is left).
        NumericalError: non-finite values in `audio` (nothing is written).
        InputError: the input video cannot be read.
    """
    p = Path(out_path)
    if check_output_path(p, video_path) != "video":
        raise OutputError(
            f"mux writes a video container, not {p.suffix}; use .mp4, .mov, .mkv or .m4v"
        )
    music = _as_stereo(audio)
    _check_finite(music)
    if keep_audio_db is not None and not math.isfinite(keep_audio_db):
        raise InputError(f"keep_audio_db must be a finite level in dB, got {keep_audio_db}")
    name = Path(video_path).name
    if plan is None or plan.fmt != VIDEO_SUFFIXES[p.suffix.lower()]:
        plan = plan_mux(video_path, p, reencode, video_stream)
    if plan.reencode:
        logger.warning(
            "a %s file cannot hold %s's %s video: re-encoding the picture as H.264 (CRF %d)%s",
            p.suffix, name, plan.codec, _REENCODE_CRF,
            f"; write {' or '.join(plan.holders)} to keep it bit for bit" if plan.holders else "",
        )

    if timeline is None:
        with open_video(video_path) as inp:
            timeline = read_timeline(inp, inp.streams[plan.stream_index])
    n = round(timeline.span_s * MUX_SAMPLE_RATE)
    track = _music_track(music, int(sample_rate), n, video_path, timeline.start_s, keep_audio_db)
    with atomic_output(p, errors=(av.FFmpegError,)) as tmp, open_video(video_path) as inp:
        _write_muxed(inp, plan, timeline, track, tmp)
    logger.info(
        "wrote %s (video stream %s, %.3f s of %d Hz stereo AAC)",
        p,
        "re-encoded as H.264" if plan.reencode else "copied",
        n / MUX_SAMPLE_RATE,
        MUX_SAMPLE_RATE,
    )
    return p


def _music_track(music: np.ndarray, sample_rate: int, n: int, video_path, start_s: float,
                 keep_audio_db: float | None) -> np.ndarray:
    """The AAC track [2, n] at 44.1 kHz: the music trimmed or padded to the video stream's span,
    with the source's own audio mixed under it at `keep_audio_db` when asked and present."""
    music = _resample(music, sample_rate, MUX_SAMPLE_RATE)
    track = np.zeros((2, n), dtype=np.float32)
    track[:, : min(n, music.shape[1])] = music[:, :n]
    if keep_audio_db is None:
        return track
    with open_video(video_path) as inp:
        original = _original_audio(inp, start_s, n) if inp.streams.audio else None
    if original is None:
        logger.info("%s has no audio to keep; writing the music only", Path(video_path).name)
        return track
    logger.info("mixed the original audio under the music at %+.1f dB", keep_audio_db)
    return np.clip(track + np.float32(10 ** (keep_audio_db / 20)) * original, -1.0, 1.0)


class _Interleaver:
    """Encodes the music up to each video packet's time, so the file interleaves the two."""

    def __init__(self, out, track: np.ndarray, start_s: float):
        self.out = out
        self.aout = out.add_stream("aac", rate=MUX_SAMPLE_RATE, layout="stereo")
        self.aout.bit_rate = AAC_BIT_RATE
        self.pending = _audio_frames(track, round(start_s * MUX_SAMPLE_RATE))
        self.audio_t = start_s  # time of the next audio frame to encode

    def until(self, t: float) -> None:
        while self.audio_t <= t:
            frame = next(self.pending, None)
            if frame is None:
                self.audio_t = float("inf")
                return
            self.out.mux(self.aout.encode(frame))
            self.audio_t += frame.samples / MUX_SAMPLE_RATE

    def finish(self) -> None:
        for frame in self.pending:
            self.out.mux(self.aout.encode(frame))
        self.out.mux(self.aout.encode(None))


def _write_muxed(inp, plan: MuxPlan, timeline: Timeline, track: np.ndarray, tmp: Path) -> None:
    """Write `tmp`: the plan's video stream (copied, or re-encoded) and `track` as AAC."""
    vin = inp.streams[plan.stream_index]
    with av.open(str(tmp), "w", format=plan.fmt) as out:
        if plan.reencode:
            _write_reencoded(inp, vin, out, track, timeline.start_s)
            return
        vout = out.add_stream_from_template(vin, opaque=True)  # opaque: the codec, not an encoder
        music = _Interleaver(out, track, timeline.start_s)
        i = 0
        for packet in video.packets(inp, vin):
            if not packet.size:
                continue  # the demuxer's empty flush packet
            if timeline.dts is not None and i < len(timeline.dts):
                packet.dts = timeline.dts[i]
            i += 1
            ts = packet.dts if packet.dts is not None else packet.pts
            if ts is not None:
                music.until(float(ts * packet.time_base))
            packet.stream = vout
            out.mux(packet)
        music.finish()


def _write_reencoded(inp, vin, out, track: np.ndarray, start_s: float) -> None:
    """Decode the stream (damage skipped, see `video`) and encode it as H.264 yuv420p at
    the source's timestamps and display rotation; odd sizes lose their last row/column."""
    frames = (f for f, _ in video.decode_frames(inp, vin, video.DecodeLog()) if f.pts is not None)
    first = next(frames, None)
    if first is None:
        raise InputError(f"no frame of {Path(inp.name).name} decodes; the file is corrupt or truncated")
    vout = out.add_stream(h264_encoder(), rate=vin.average_rate or vin.guessed_rate or 25)
    vout.width, vout.height = first.width - first.width % 2, first.height - first.height % 2
    vout.pix_fmt = "yuv420p"
    vout.codec_context.time_base = vin.time_base
    vout.options = {"crf": str(_REENCODE_CRF), "preset": "veryfast"}
    rotation = video.frame_rotation(first)
    if rotation:
        vout.set_display_rotation(rotation)
    music = _Interleaver(out, track, start_s)  # after the video: stream 0 is the picture, as when copied
    last_pts = None
    for frame in itertools.chain([first], frames):
        if last_pts is not None and frame.pts <= last_pts:
            continue  # an encoder needs rising timestamps
        last_pts = frame.pts
        pic = frame.reformat(width=vout.width, height=vout.height, format="yuv420p")
        pic.pts, pic.time_base = frame.pts, vin.time_base
        for packet in vout.encode(pic):
            music.until(float(packet.dts * packet.time_base) if packet.dts is not None else start_s)
            out.mux(packet)
    for packet in vout.encode(None):
        out.mux(packet)
    music.finish()


def save(
    path: str | os.PathLike,
    audio: np.ndarray,
    sample_rate: int,
    video_path: str | os.PathLike | None = None,
    keep_audio_db: float | None = None,
) -> Path:
    """Write `audio` as .wav/.flac, or muxed into a copy of `video_path` for video suffixes.

    Args:
        path: the output file; its suffix picks the kind (see `check_output_path`).
        audio: float [2, N] at `sample_rate`.
        sample_rate: samples per second.
        video_path: the input video (required for video outputs).
        keep_audio_db: for video outputs, mix the original audio under the music at this gain.
    """
    kind = check_output_path(path, video_path)
    if kind == "video":
        if video_path is None:
            raise OutputError(
                f"{Path(path).name} is a video output but no input video was given; write .wav or .flac"
            )
        return mux(video_path, audio, sample_rate, path, keep_audio_db=keep_audio_db)
    return write_audio(path, audio, sample_rate)
