"""Reading a video stream's packets and frames through damage: the demuxer's and the decoder's
errors are counted and skipped, decoding resumes at the next keyframe (`video.VideoReader`
builds on these; the mux reads packets with them too)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av

__all__ = ["DecodeLog", "packets", "decode_frames", "error_text"]

logger = logging.getLogger("v2m.video")

_MAX_DEMUX_ERRORS = 64  # demuxer errors in a row before the rest of a file is given up
_RESYNC_MAX_S = 5.0  # after damage, this long without a keyframe and any clean frame resumes


def error_text(e: BaseException) -> str:
    """The error's text on one line."""
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return " ".join(str(msg).split())


@dataclass
class DecodeLog:
    """What reading a stream met: packets skipped for damage, and the packets' time span."""

    errors: int = 0  # packets the demuxer or decoder refused, and frames flagged corrupt
    first_error: str | None = None
    start_s: Fraction | None = None  # earliest packet time (pts, else dts), seconds (exact)
    end_s: Fraction | None = None  # latest packet time + duration
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (from, to) s, held over
    # every packet with data, in file order: (pts, dts, duration), for `Timeline` (the mux)
    records: list[tuple[int | None, int | None, int]] = field(default_factory=list)

    @property
    def lost_s(self) -> float:
        """Seconds of video replaced by the last good frame."""
        return sum(b - a for a, b in self.gaps)

    def note_error(self, e: BaseException | None = None) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = error_text(e) if e is not None else "corrupt frame"

    def note_packet(self, packet: av.Packet, default_dur: Fraction) -> None:
        if packet.size:
            self.records.append((packet.pts, packet.dts, packet.duration or 0))
        ts = packet.pts if packet.pts is not None else packet.dts
        if ts is None or packet.time_base is None or not packet.size:
            return
        t = ts * packet.time_base
        end = t + (packet.duration * packet.time_base if packet.duration else default_dur)
        self.start_s = t if self.start_s is None else min(self.start_s, t)
        self.end_s = end if self.end_s is None else max(self.end_s, end)


def packets(container: av.container.InputContainer, stream, log: DecodeLog | None = None) -> Iterator[av.Packet]:
    """Every packet of `stream` in file order, the demuxer's final empty one included.

    A demuxer error is counted in `log` and reading resumes after it (the demuxer
    looks for the next readable packet); after many in a row the rest is given up.
    """
    default_dur = 1 / Fraction(stream.average_rate) if stream.average_rate else Fraction(0)
    in_row = 0
    while True:
        try:
            for packet in container.demux(stream):
                in_row = 0
                if log is not None:
                    log.note_packet(packet, default_dur)
                yield packet
            return
        except av.FFmpegError as e:
            in_row += 1
            if log is not None:
                log.note_error(e)
            if in_row >= _MAX_DEMUX_ERRORS:
                logger.warning("%s: the demuxer gave up (%s); using what was read", Path(container.name).name, error_text(e))
                return


def decode_frames(container, stream, log: DecodeLog) -> Iterator[tuple[av.VideoFrame, bool]]:
    """Decoded frames that do not depend on damaged data, in presentation order, each with
    whether damage was skipped just before it.

    A packet the decoder refuses (or a frame it flags corrupt) is skipped; frames resume
    at the next keyframe, or at any clean frame once `_RESYNC_MAX_S` passed without one.
    """
    damaged, last_time = False, None
    for packet in packets(container, stream, log):
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            log.note_error(e)
            damaged = True
            continue
        for frame in frames:
            if frame.is_corrupt:
                log.note_error()
                damaged = True
                continue
            t = frame.time
            if damaged and not frame.key_frame:
                waited = t is not None and last_time is not None and t - last_time > _RESYNC_MAX_S
                if not waited:
                    continue
            yield frame, damaged
            damaged, last_time = False, t if t is not None else last_time
