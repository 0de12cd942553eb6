"""Editing the event curve: hit points, a given curve, suppressed ranges (numpy only).

The edits act on the video's raw dissimilarity sequence d (sample i at time i / fps, the
curve encoder's rate), before `v2m.core.curves.curve_from_dissimilarity` standardizes,
resamples and smooths it, so an edited curve follows every convention of a measured one.
They apply in this order:

1. A given curve (`points`: (time s, value) pairs, linearly interpolated at the sample
   times and held past both ends) is blended in: d' = (1 - mix) * std(d) + mix * std(g),
   where std is `curves.standardize` (the two are in different units, so each is
   standardized first). mix = 1 replaces the video's curve; a flat d (no video) is zeros.
2. Each suppressed range [a, b] s: the samples with a <= i / fps <= b are set to the
   lowest value of the curve ("no change").
3. Each hit (time t, weight w) adds w * H at the sample nearest t, H = max(max(d'), 0.5):
   a weight-1 hit is as strong as the strongest change of the clip (at least 0.5, about a
   hard cut's dissimilarity, so a hit on a still clip still stands out).

```python
edit = CurveEdit(hits=((2.0, 1.0),), suppress=((5.0, 6.0),))
curve = curves.event_curve(features, length, fps, latent_rate, kernel, edit=edit)
```

Inputs: `parse_hit("12.5:2")`, `parse_range("3-5")`, `read_hits(path)` (CSV, JSON, an EDL
or marker list), `read_curve(path)` (JSON or CSV of time, value).
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from v2m.core import curves
from v2m.core.errors import InputError

__all__ = ["CurveEdit", "HIT_FLOOR", "parse_hit", "parse_hits", "parse_range", "parse_ranges", "read_hits",
           "read_curve", "parse_curve_json", "timecode_seconds"]

HIT_FLOOR = 0.5  # a hit's unit height when the clip's strongest change is smaller (about a hard cut)
MAX_TIME_S = 24 * 3600.0


def _finite(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise InputError(f"{what} must be a finite number, got {x!r}")
    return float(x)


@dataclass(frozen=True)
class CurveEdit:
    """Edits of one video's curve (see the module docstring). Validated in the constructor.

    Args:
        hits: (time s >= 0, weight > 0) pairs.
        points: a given curve as (time s, value) pairs, times increasing (empty: none).
        mix: the given curve's share in [0, 1] (1: it replaces the video's).
        suppress: (start s, end s) ranges with start < end.
    """

    hits: tuple[tuple[float, float], ...] = ()
    points: tuple[tuple[float, float], ...] = ()
    mix: float = 1.0
    suppress: tuple[tuple[float, float], ...] = ()

    def __post_init__(self):
        for t, w in self.hits:
            if not 0.0 <= _finite(t, "a hit's time") <= MAX_TIME_S:
                raise InputError(f"a hit's time must be in [0, {MAX_TIME_S:g}] s, got {t!r}")
            if _finite(w, "a hit's weight") <= 0:
                raise InputError(f"a hit's weight must be > 0, got {w!r}")
        times = [_finite(t, "a curve point's time") for t, v in self.points]
        for _, v in self.points:
            _finite(v, "a curve point's value")
        if any(b <= a for a, b in zip(times, times[1:])):
            raise InputError("the given curve's times must increase")
        if not 0.0 <= _finite(self.mix, "curve mix") <= 1.0:
            raise InputError(f"curve mix must be in [0, 1], got {self.mix!r}")
        for a, b in self.suppress:
            if not 0.0 <= _finite(a, "a suppressed range's start") < _finite(b, "a suppressed range's end"):
                raise InputError(f"a suppressed range must be START-END with 0 <= START < END, got {a!r}-{b!r}")

    def __bool__(self) -> bool:
        return bool(self.hits or self.points or self.suppress)

    def __call__(self, d: np.ndarray, fps: float) -> np.ndarray:
        """The edited dissimilarities: float64 [T] (T = len(d))."""
        d = np.asarray(d, dtype=np.float64).copy()
        if d.size == 0:
            return d
        t = np.arange(d.size, dtype=np.float64) / fps
        if self.points:
            pt = np.array([p[0] for p in self.points])
            pv = np.array([p[1] for p in self.points])
            given = curves.standardize(np.interp(t, pt, pv))
            d = (1.0 - self.mix) * curves.standardize(d) + self.mix * given
        if self.suppress:
            low = d.min()
            for a, b in self.suppress:
                d[(t >= a - 1e-9) & (t <= b + 1e-9)] = low
        if self.hits:
            height = max(float(d.max()), HIT_FLOOR)
            for ht, w in self.hits:
                i = min(int(round(ht * fps)), d.size - 1)
                d[i] += w * height
        return d

    def to_json(self) -> dict:
        return {"hits": [list(h) for h in self.hits], "curve_points": len(self.points), "curve_mix": self.mix,
                "suppress": [list(r) for r in self.suppress]}


# --- parsing ----------------------------------------------------------------------------
_TC = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})(?:[:;](\d{1,3})|(\.\d+))?$")


def timecode_seconds(text: str, fps: float = 25.0) -> float:
    """Seconds of "12.5", "MM:SS(.s)", "HH:MM:SS(.s)" or an SMPTE "HH:MM:SS:FF" (FF at `fps`)."""
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    m = re.fullmatch(r"(\d+):(\d{1,2}(?:\.\d+)?)", s)
    if m:
        return int(m[1]) * 60 + float(m[2])
    m = _TC.match(s)
    if not m:
        raise InputError(f"not a time: {text!r}; give seconds (12.5), MM:SS, HH:MM:SS or HH:MM:SS:FF")
    sec = int(m[1]) * 3600 + int(m[2]) * 60 + int(m[3])
    if m[4] is not None:
        return sec + int(m[4]) / fps
    return sec + (float(m[5]) if m[5] else 0.0)


def parse_hit(text: str) -> tuple[float, float]:
    """"TIME[:WEIGHT]" -> (seconds, weight): "12.5" -> (12.5, 1.0), "12.5:2" -> (12.5, 2.0).
    A timecode TIME ("00:01:02.5") takes its weight after '@' ("00:01:02.5@2")."""
    s = str(text).strip()
    head, sep, tail = s.rpartition(":")
    if sep and ":" not in head:  # "T:W" (a timecode "MM:SS" would be ambiguous: use seconds or "@W")
        pair = (timecode_seconds(head), _number(tail, "a hit's weight"))
    elif "@" in s:
        t, w = s.split("@", 1)
        pair = (timecode_seconds(t), _number(w, "a hit's weight"))
    else:
        pair = (timecode_seconds(s), 1.0)
    CurveEdit(hits=(pair,))  # checked
    return pair


def _number(text: str, what: str) -> float:
    try:
        return _finite(float(text), what)
    except ValueError:
        raise InputError(f"{what} must be a number, got {text!r}") from None


def parse_hits(text: str) -> tuple[tuple[float, float], ...]:
    """Comma-separated hits: "2, 5.5:2, 8" (a form field)."""
    return tuple(parse_hit(h) for h in str(text).split(",") if h.strip())


def parse_range(text: str) -> tuple[float, float]:
    """"A-B" in seconds -> (A, B)."""
    m = re.fullmatch(r"\s*([0-9.:]+)\s*-\s*([0-9.:]+)\s*", str(text))
    if not m:
        raise InputError(f"a suppressed range must be START-END in seconds (e.g. 3-5.5), got {text!r}")
    pair = (timecode_seconds(m[1]), timecode_seconds(m[2]))
    CurveEdit(suppress=(pair,))
    return pair


def parse_ranges(text: str) -> tuple[tuple[float, float], ...]:
    """Comma-separated ranges: "3-5, 8-9.5"."""
    return tuple(parse_range(r) for r in str(text).split(",") if r.strip())


def _read_text(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"file not found: {path}; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path} ({e}); give a text file") from None


def _rows(text: str) -> list[list[str]]:
    """CSV rows (comma, semicolon or tab), blank lines and '#' comments dropped."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    dialect = "excel-tab" if lines and "\t" in lines[0] else "excel"
    return [[c.strip() for c in row] for row in csv.reader(lines, dialect)] if lines else []


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


_EDL_EVENT = re.compile(r"^\s*\d{3,}\s+\S+\s+\S+\s+\S+.*?((?:\d{2}:){3}\d{2})\s+((?:\d{2}:){3}\d{2})\s+"
                        r"((?:\d{2}:){3}\d{2})\s+((?:\d{2}:){3}\d{2})\s*$")
_EDL_FPS = re.compile(r"FCM:\s*(DROP|NON-DROP)", re.I)


def _edl_hits(text: str, fps: float) -> tuple[tuple[float, float], ...]:
    """The record-in timecodes of an EDL's events (a marker export lists one event per marker).
    A timeline that starts at 01:00:00:00 (the editors' default) is read from there."""
    times = [timecode_seconds(m[3], fps) for m in map(_EDL_EVENT.match, text.splitlines()) if m]
    if not times:
        raise InputError("the EDL has no events with record timecodes")
    start = 3600.0 if min(times) >= 3600.0 else 0.0
    return tuple((t - start, 1.0) for t in times)


def read_hits(path, fps: float = 25.0) -> tuple[tuple[float, float], ...]:
    """Hit points from a file: JSON (a list of seconds, of [time, weight], or of {"time", "weight"}
    objects, or {"hits": [...]}), CSV (time[, weight] per row; a header row is skipped; times
    may be timecodes), or an EDL / marker export (.edl: each event's record-in timecode, frames
    at `fps`)."""
    text = _read_text(path)
    if Path(path).suffix.lower() == ".edl" or text.lstrip().upper().startswith("TITLE:"):
        hits = _edl_hits(text, fps)
    elif Path(path).suffix.lower() == ".json" or text.lstrip()[:1] in "[{":
        hits = _json_hits(_json(text, path))
    else:
        hits = tuple(_csv_hit(row) for row in _rows(text) if row and row[0] and (_is_number(row[0]) or ":" in row[0]))
    if not hits:
        raise InputError(f"{path}: no hit points found; give one time (seconds) per line or a JSON list")
    CurveEdit(hits=hits)
    return hits


def _csv_hit(row: list[str]) -> tuple[float, float]:
    return timecode_seconds(row[0]), (_number(row[1], "a hit's weight") if len(row) > 1 and row[1] else 1.0)


def _json(text: str, path) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None


def _json_hits(data) -> tuple[tuple[float, float], ...]:
    if isinstance(data, dict):
        data = data.get("hits", data.get("markers"))
    if not isinstance(data, list):
        raise InputError("hit points in JSON must be a list (or {\"hits\": [...]})")
    out = []
    for h in data:
        if isinstance(h, dict):
            t, w = h.get("time", h.get("t")), h.get("weight", 1.0)
        elif isinstance(h, (list, tuple)) and 1 <= len(h) <= 2:
            t, w = h[0], (h[1] if len(h) > 1 else 1.0)
        else:
            t, w = h, 1.0
        t = timecode_seconds(t) if isinstance(t, str) else _finite(t, "a hit's time")
        out.append((t, _finite(w, "a hit's weight")))
    return tuple(out)


def parse_curve_json(data) -> tuple[tuple[float, float], ...]:
    """(time, value) pairs of a JSON curve: [[t, v], ...], [{"time", "value"}, ...], or
    {"times": [...], "values": [...]} / {"curve": [...], "rate": Hz} (a `v2m curve --json` result,
    with its "latent_rate")."""
    if isinstance(data, dict):
        if "times" in data and "values" in data:
            pairs = list(zip(data["times"], data["values"]))
        elif "curve" in data:
            rate = data.get("rate", data.get("latent_rate"))
            if rate is None or _finite(rate, "the curve's rate") <= 0:
                raise InputError("a JSON curve given as {\"curve\": [...]} needs a \"rate\" (samples per second) > 0")
            pairs = [(i / rate, v) for i, v in enumerate(data["curve"])]
        else:
            raise InputError("a JSON curve must be a list of [time, value] or have times/values or curve/rate")
    elif isinstance(data, list):
        pairs = [(p.get("time"), p.get("value")) if isinstance(p, dict) else tuple(p) for p in data]
    else:
        raise InputError("a JSON curve must be a list of [time, value] pairs")
    if len(pairs) < 2 or any(len(p) != 2 for p in pairs):
        raise InputError("a curve needs at least two (time, value) points")
    out = tuple((_finite(t, "a curve point's time"), _finite(v, "a curve point's value")) for t, v in pairs)
    CurveEdit(points=out)
    return out


def read_curve(path) -> tuple[tuple[float, float], ...]:
    """A curve file: JSON (see `parse_curve_json`) or CSV of time, value rows (a header is skipped)."""
    text = _read_text(path)
    if Path(path).suffix.lower() == ".json" or text.lstrip()[:1] in "[{":
        return parse_curve_json(_json(text, path))
    rows = [r for r in _rows(text) if len(r) >= 2 and _is_number(r[0]) and _is_number(r[1])]
    return parse_curve_json([[float(r[0]), float(r[1])] for r in rows])
