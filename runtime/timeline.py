"""A video stream's packet timeline: what the mux needs to copy every packet of it.

The decode pass (`video.VideoReader`) records every packet's (pts, dts, duration) as it demuxes
them (`DecodeLog.records`), so the mux builds the timeline from them instead of reading the
input again (`timeline_of`); `read_timeline` reads it from a container when no pass did.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from v2m.core.errors import InputError

from . import video

__all__ = ["Timeline", "timeline_of", "read_timeline", "decode_timestamps"]

logger = logging.getLogger("v2m.media")


@dataclass
class Timeline:
    """The video stream's packets as read in pass one: what pass two needs to copy them."""

    start_s: float  # earliest presentation time, seconds
    span_s: float  # max(pts + duration) - start: the span VideoReader measures from frames
    dts: list[int] | None  # decode timestamps for every packet with data, when the source lacks some


def decode_timestamps(pts: list[int], step: int) -> list[int]:
    """Decode timestamps for packets in decode order, from their presentation times.

    The reorder delay d is the least that lets every packet be decoded before it is
    shown: d = max(i - rank(pts_i)). Then dts_i = the (i - d)-th smallest pts, which is
    <= pts_i and non-decreasing; the first d packets count back from the smallest by
    `step`, and equal neighbours (duplicate pts) are pushed apart by one tick.
    """
    n = len(pts)
    order = sorted(range(n), key=lambda i: (pts[i], i))
    rank = [0] * n
    for r, i in enumerate(order):
        rank[i] = r
    delay = max([0] + [i - rank[i] for i in range(n)])
    ordered = [pts[i] for i in order]
    dts = [ordered[i - delay] if i >= delay else ordered[0] - (delay - i) * step for i in range(n)]
    for i in range(1, n):
        dts[i] = max(dts[i], dts[i - 1] + 1)
    return dts


def read_timeline(container, stream) -> Timeline:
    """Read the video stream's packets once (no decoding): see `timeline_of`."""
    log = video.DecodeLog()
    for _ in video.packets(container, stream, log):
        pass
    return timeline_of(log.records, stream.time_base, stream.average_rate, os.path.basename(container.name))


def timeline_of(records: list[tuple[int | None, int | None, int]], tb, average_rate, name: str) -> Timeline:
    """The span of a video stream's packets (pts, dts, duration), as a pass over them recorded
    them (`DecodeLog.records`: the decode pass keeps them, so the mux need not read them again),
    and decode timestamps when the demuxer left some out (Matroska gives the first packets of a
    stream with B-frames no dts; muxers need one on every packet)."""
    default = round(1 / (average_rate * tb)) if average_rate and tb else 1
    pts: list[int | None] = []
    dts: list[int | None] = []
    first, end = None, None
    for p, d_ts, dur in records:
        pts.append(p)
        dts.append(d_ts)
        ts = p if p is not None else d_ts
        if ts is None:
            continue
        t = float(ts * tb)
        d = float(dur * tb) if dur else float(default * tb)
        first = t if first is None else min(first, t)
        end = t + d if end is None else max(end, t + d)
    if first is None:
        raise InputError(f"{name} has no timed video packets; re-encode it")
    fixed = None
    if any(d is None for d in dts):
        filled, prev = [], None
        for p, d in zip(pts, dts):  # a packet without pts shows when it decodes, or next
            prev = p if p is not None else d if d is not None else (prev + default if prev is not None else 0)
            filled.append(prev)
        steps = sorted({b - a for a, b in zip(sorted(filled), sorted(filled)[1:]) if b > a})
        fixed = decode_timestamps(filled, steps[0] if steps else default)
        logger.debug("%s: %d of %d video packets had no dts; derived from pts", name, sum(d is None for d in dts), len(dts))
    return Timeline(first, end - first, fixed)
