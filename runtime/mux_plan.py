"""How a video's picture goes into an output container, decided before any work.

`inspect` probes a video and, for a video output, plans its mux in one opening of the input:
the stream is copied packet for packet when the container can hold its codec (a header, its
first packet and a trailer written to memory tell), else re-encoded as H.264 (`reencode="auto"`)
or refused in one line naming the containers that can hold it (`reencode="never"`).
"""

from __future__ import annotations

import io
import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import av

from v2m.core.errors import OutputError

from . import video
from .video import open_video

__all__ = ["VIDEO_SUFFIXES", "REENCODE_MODES", "MUX_SAMPLE_RATE", "MuxPlan", "Source", "inspect", "plan_mux"]

logger = logging.getLogger("v2m.media")

VIDEO_SUFFIXES = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}  # -> muxer
MUX_SAMPLE_RATE = 44100
REENCODE_MODES = ("auto", "never")
_WRITTEN = {".mkv": "matroska", ".mp4": "mp4", ".mov": "mov"}  # containers named in advice


@dataclass(frozen=True)
class MuxPlan:
    """How the picture goes into the output, decided before any work (`plan_mux`)."""

    stream_index: int  # the container's index of the video stream (decoded and muxed)
    codec: str  # the source's video codec
    fmt: str  # the output muxer
    reencode: bool  # False: copied packet for packet; True: re-encoded as H.264
    holders: tuple[str, ...] = ()  # output suffixes that hold the codec as it is


def _can_copy(path: Path, stream_index: int, fmt: str, inp=None) -> bool:
    """Whether a `fmt` file can hold the stream as it is: a header, its first packet and a
    trailer written to memory (a cheap probe; some muxers refuse a codec only there).
    `inp`: the input already open (read from its start), else it is opened."""
    try:
        with (nullcontext(inp) if inp is not None else open_video(path)) as src, \
                av.open(io.BytesIO(), "w", format=fmt) as out:
            vin = src.streams[stream_index]
            vout = out.add_stream_from_template(vin, opaque=True)  # opaque: the codec, not an encoder
            out.add_stream("aac", rate=MUX_SAMPLE_RATE, layout="stereo")
            for packet in video.packets(src, vin):
                if packet.size:
                    if packet.dts is None:
                        packet.dts = packet.pts if packet.pts is not None else 0
                    if packet.pts is None:
                        packet.pts = packet.dts
                    packet.stream = vout
                    out.mux(packet)
                    break
    except (ValueError, av.FFmpegError, OSError):
        return False
    return True


def h264_encoder() -> str | None:
    for name in ("libx264", "h264"):
        try:
            av.codec.Codec(name, "w")
        except (ValueError, av.FFmpegError):
            continue
        return name
    return None


def plan_mux(
    video_path: str | os.PathLike,
    out_path: str | os.PathLike,
    reencode: str = "auto",
    video_stream: int | None = None,
) -> MuxPlan:
    """Decide how to write the picture of `video_path` into `out_path`, before any work.

    The stream is copied packet for packet when the output container can hold its
    codec; otherwise, with `reencode="auto"`, the picture is re-encoded as H.264 at
    near-source quality (CRF 18; logged), and with `reencode="never"` this refuses.

    Args:
        video_path: the input video.
        out_path: the output .mp4, .m4v, .mov or .mkv.
        reencode: "auto" or "never".
        video_stream: the container's index of the video stream (None: see
            `video.select_video_stream`).

    Raises:
        OutputError: `reencode="never"` and the container cannot hold the codec (the
            message names containers that can), or no H.264 encoder to re-encode with.
        InputError: the input cannot be read or has no such video stream.
    """
    src = Path(video_path)
    with open_video(src) as inp:
        vs = video.select_video_stream(inp, video_stream, src.name)
        return _plan_open(inp, src, out_path, reencode, vs.index, video.codec_name(vs))


def _plan_open(inp, src: Path, out_path: str | os.PathLike, reencode: str, index: int, codec: str) -> MuxPlan:
    """`plan_mux` with the input open at its start (its first packet is muxed to memory)."""
    if reencode not in REENCODE_MODES:
        raise OutputError(f"reencode must be one of {', '.join(REENCODE_MODES)}, got {reencode!r}")
    p = Path(out_path)
    fmt = VIDEO_SUFFIXES[p.suffix.lower()]
    if _can_copy(src, index, fmt, inp):
        return MuxPlan(index, codec, fmt, False, (p.suffix.lower(),))
    holders = tuple(s for s, f in _WRITTEN.items() if f != fmt and _can_copy(src, index, f))
    keep = f"write {' or '.join(holders)} to keep it bit for bit" if holders else "no container v2m writes holds it"
    if reencode == "never":
        raise OutputError(
            f"a {p.suffix} file cannot hold the {codec} video of {src.name}; {keep} "
            "(or drop --reencode never to re-encode the picture as H.264)"
        )
    if h264_encoder() is None:
        raise OutputError(f"a {p.suffix} file cannot hold the {codec} video of {src.name}, and this FFmpeg "
                          f"has no H.264 encoder to re-encode it; {keep}")
    return MuxPlan(index, codec, fmt, True, holders)


@dataclass(frozen=True)
class Source:
    """A video input as `inspect` found it: the probe and, for a video output, the mux plan."""

    info: video.VideoInfo
    plan: MuxPlan | None = None
    output: Path | None = None  # the output the plan is for


def inspect(video_path: str | os.PathLike, out_path: str | os.PathLike | None = None, reencode: str = "auto",
            video_stream: int | None = None) -> Source:
    """`video.probe` and, when `out_path` is a video container, `plan_mux`, in one opening of
    the input (the probe decodes the first frame, then the input is read again from its start)."""
    src = video._check_file(video_path)
    with open_video(src) as inp:
        info = video.probe_open(inp, src, video_stream)
        if out_path is None or Path(out_path).suffix.lower() not in VIDEO_SUFFIXES:
            return Source(info)
        try:
            inp.seek(0)
        except (av.FFmpegError, OSError, ValueError):  # not seekable: plan on a fresh opening
            return Source(info, plan_mux(src, out_path, reencode, info.stream_index), Path(out_path))
        return Source(info, _plan_open(inp, src, out_path, reencode, info.stream_index, info.codec), Path(out_path))
