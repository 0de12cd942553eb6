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
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from .errors import InputError, NumericalError, OutputError
from .video import error_text, open_video

__all__ = [
    "AUDIO_SUFFIXES",
    "VIDEO_SUFFIXES",
    "MUX_SAMPLE_RATE",
    "check_output_path",
    "finalize_audio",
    "write_audio",
    "mux",
    "save",
]

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav": "WAV", ".flac": "FLAC"}  # suffix -> soundfile format
VIDEO_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}  # -> muxer
MUX_SAMPLE_RATE = 44100
AAC_BIT_RATE = 192_000  # transparent for stereo music at 44.1 kHz
_AAC_FRAME = 1024  # samples per AAC frame


def check_output_path(path: str | os.PathLike, video_path: str | os.PathLike | None = None) -> str:
    """Check that `path` can be written, before any heavy compute; return its kind.

    Args:
        path: the output file: .wav, .flac, or a video container (.mp4, .mov, .mkv, .m4v).
        video_path: the input video; the output may not be the same file.

    Returns:
        "wav", "flac" or "video".

    Raises:
        OutputError: unknown suffix, missing or read-only directory, a directory
            given as the output, or the output is the input video.
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
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable; choose another output path")
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
            f"the generated audio has {int(bad.sum())} NaN/Inf samples; nothing was written "
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


def _temp_path(path: Path) -> Path:
    """A fresh hidden file next to `path`, same suffix (muxers pick the format by it)."""
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            # Created with 0o666 so the umask applies, like a plain open().
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _quantize16(audio: np.ndarray) -> np.ndarray:
    """float [2, N] -> int16 [N, 2], clipped, round(x * 32767)."""
    return np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16).T  # (N, 2)


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> Path:
    """Atomically write stereo 16-bit PCM .wav or .flac.

    Args:
        path: output file ending in .wav or .flac.
        audio: float [2, N] in [-1, 1] (values outside are clipped).
        sample_rate: samples per second.

    Raises:
        OutputError: bad suffix or directory, or the write failed (no file is left).
        NumericalError: NaN/Inf in `audio` (nothing is written).
    """
    p = Path(path)
    kind = check_output_path(p)
    if kind not in ("wav", "flac"):
        raise OutputError(f"write_audio writes .wav or .flac, not {p.suffix}; use save() for video")
    a = _as_stereo(audio)
    _check_finite(a)
    data = _quantize16(a)
    tmp = _temp_path(p)
    try:
        with open(tmp, "wb") as f:  # a file object: libsndfile cannot open non-UTF-8 names
            sf.write(
                f,
                data,
                int(sample_rate),
                subtype="PCM_16",
                format=AUDIO_SUFFIXES[p.suffix.lower()],
            )
        os.replace(tmp, p)
    except (OSError, RuntimeError, sf.LibsndfileError) as e:
        raise OutputError(
            f"cannot write {p} ({error_text(e)}); check free space and permissions"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
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


def _video_span(container: av.container.InputContainer, stream) -> tuple[float, float]:
    """(first pts, duration) of the video stream in seconds, from its packets.

    duration = max(pts + packet duration) - min(pts): the same span VideoReader
    measures from decoded frames, read without decoding.
    """
    first, end = None, None
    fallback = 1.0 / float(stream.average_rate) if stream.average_rate else 0.0
    for packet in container.demux(stream):
        if packet.pts is None or packet.time_base is None:
            continue
        t = float(packet.pts * packet.time_base)
        d = float(packet.duration * packet.time_base) if packet.duration else fallback
        first = t if first is None else min(first, t)
        end = t + d if end is None else max(end, t + d)
    if first is None:
        raise InputError(f"{Path(container.name).name} has no timed video packets; re-encode it")
    return first, end - first


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
) -> Path:
    """Atomically write the input video's stream, copied bit for bit, plus the music as AAC.

    The music is resampled to 44.1 kHz if needed and trimmed or padded to the
    video stream's span, starting at the video's first frame.

    Args:
        video_path: the input video.
        audio: float [2, N] at `sample_rate` (see `finalize_audio`).
        sample_rate: samples per second of `audio`.
        out_path: output .mp4, .mov, .m4v or .mkv; not the input.
        keep_audio_db: if given and the input has sound, mix the original audio
            under the music at this gain in dB (e.g. -12).

    Raises:
        OutputError: bad output path, a codec the container cannot hold, or a failed write.
        NumericalError: NaN/Inf in `audio` (nothing is written).
        InputError: the input video cannot be read.
    """
    p = Path(out_path)
    if check_output_path(p, video_path) != "video":
        raise OutputError(
            f"mux writes a video container, not {p.suffix}; use .mp4, .mov, .mkv or .m4v"
        )
    music = _as_stereo(audio)
    _check_finite(music)
    name = Path(video_path).name

    with open_video(video_path) as inp:
        if not inp.streams.video:
            raise InputError(f"{name} has no video stream to mux the music into; pass a video")
        start_s, span_s = _video_span(inp, inp.streams.video[0])
    n = round(span_s * MUX_SAMPLE_RATE)
    music = _resample(music, int(sample_rate), MUX_SAMPLE_RATE)
    track = np.zeros((2, n), dtype=np.float32)
    track[:, : min(n, music.shape[1])] = music[:, :n]
    if keep_audio_db is not None:
        with open_video(video_path) as inp:
            has_audio = bool(inp.streams.audio)
            if has_audio:
                original = _original_audio(inp, start_s, n)
        if has_audio:
            gain = np.float32(10 ** (keep_audio_db / 20))
            track = np.clip(track + gain * original, -1.0, 1.0)
            logger.info("mixed the original audio under the music at %+.1f dB", keep_audio_db)
        else:
            logger.info("%s has no audio to keep; writing the music only", name)

    tmp = _temp_path(p)
    try:
        with open_video(video_path) as inp:
            _write_muxed(inp, track, start_s, tmp, VIDEO_SUFFIXES[p.suffix.lower()])
        os.replace(tmp, p)
    except (OSError, av.FFmpegError) as e:
        raise OutputError(
            f"cannot write {p} ({error_text(e)}); check free space and permissions"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    logger.info(
        "wrote %s (video stream copied, %.3f s of %d Hz stereo AAC)",
        p,
        n / MUX_SAMPLE_RATE,
        MUX_SAMPLE_RATE,
    )
    return p


def _write_muxed(inp, track: np.ndarray, start_s: float, tmp: Path, fmt: str) -> None:
    """Copy inp's first video stream packet for packet and encode `track` as AAC into `tmp`."""
    vin = inp.streams.video[0]
    with av.open(str(tmp), "w", format=fmt) as out:
        try:
            vout = out.add_stream_from_template(vin)
        except ValueError as e:  # the container cannot hold this codec
            raise OutputError(
                f"a {fmt} file cannot hold the input's {vin.codec_context.name} video; write .mkv instead"
            ) from e
        aout = out.add_stream("aac", rate=MUX_SAMPLE_RATE, layout="stereo")
        aout.bit_rate = AAC_BIT_RATE
        pending = _audio_frames(track, round(start_s * MUX_SAMPLE_RATE))
        audio_t = start_s  # time of the next audio frame to encode
        for packet in inp.demux(vin):
            if packet.dts is None:
                continue  # the demuxer's empty flush packet
            # Interleave: encode the music up to this video packet's time.
            t = float(packet.dts * packet.time_base)
            while audio_t <= t:
                frame = next(pending, None)
                if frame is None:
                    audio_t = float("inf")
                    break
                out.mux(aout.encode(frame))
                audio_t += frame.samples / MUX_SAMPLE_RATE
            packet.stream = vout
            out.mux(packet)
        for frame in pending:
            out.mux(aout.encode(frame))
        out.mux(aout.encode(None))


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
