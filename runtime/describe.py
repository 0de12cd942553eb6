"""Prompts from the video without any model: what v2m measures about a clip, in words its bundle knows.

The weight-free describer samples the video at 4 frames/s as 64 x 64 RGB thumbnails and
measures (all in [0, 1] units of the 8-bit range):

- cuts per minute: a cut is a step whose mean absolute thumbnail change exceeds 0.2 and
  is 3 times the clip's median change (a hard scene change, not a pan);
- motion: the median change between consecutive samples (cuts excluded);
- brightness: the mean luma (Rec. 601); warmth: mean(R - B); saturation: the mean of
  (max - min) / max over the pixels (HSV saturation);
- pace = cuts per minute + 400 x motion (a cut every 2 s and a steady slow pan count alike).

They become the words of the demo bundle's captions (`v2m.train.synth_music.caption`):
tempo = 80 + 0.6 x pace bpm (80..160; slow < 100 <= medium < 130 <= fast), major when the
clip is bright (brightness >= 0.4), else minor; a warm pad for warm or dark colours (warmth
> 0.03 or brightness < 0.3), else bright; the drum pattern by pace (sparse < 20 <= half
time < 45 <= backbeat < 90 <= four on the floor); and the number of cuts as events.

Results are cached by the video's content (sha256 of its bytes and this describer's
version) in `$XDG_CACHE_HOME/v2m/prompts/` (default `~/.cache/v2m/prompts/`), never beside
the video: v2m writes only what it is asked to write.

```python
from v2m.runtime.describe import auto_prompt
prompt, traits = auto_prompt("clip.mp4")     # "medium 100 bpm minor groove, half time drums, ..."
```
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import video

__all__ = ["VideoTraits", "measure_frames", "describe_video", "prompt_from_traits", "auto_prompt", "cache_dir",
           "file_sha256", "DESCRIBER_VERSION"]

log = logging.getLogger("v2m.describe")

DESCRIBER_VERSION = 1  # part of the cache key: a change of the rules invalidates old entries
SAMPLE_FPS = 4.0
THUMB = 64
CUT_LEVEL = 0.2  # mean |change| of a hard scene cut (a pan of the same scene stays well under)
CUT_RATIO = 3.0
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class VideoTraits:
    """What the describer measured (see the module docstring)."""

    duration_s: float
    cuts: int
    cuts_per_min: float
    motion: float
    brightness: float
    warmth: float
    saturation: float

    @property
    def pace(self) -> float:
        return self.cuts_per_min + 400.0 * self.motion

    def to_json(self) -> dict:
        return {**{k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()},
                "pace": round(self.pace, 3)}


def measure_frames(frames: np.ndarray, fps: float, duration_s: float) -> VideoTraits:
    """Traits of uint8 RGB frames [T, H, W, 3] sampled at `fps` from a clip of `duration_s`."""
    x = np.asarray(frames, dtype=np.float32) / 255.0
    if x.shape[0] == 0:
        return VideoTraits(duration_s, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
    change = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3)) if x.shape[0] > 1 else np.zeros(0)
    median = float(np.median(change)) if change.size else 0.0
    is_cut = (change > CUT_LEVEL) & (change > CUT_RATIO * max(median, 1e-3))
    cuts = int(is_cut.sum())
    motion = float(np.median(change[~is_cut])) if (~is_cut).any() else 0.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    sat = np.where(mx > 1e-6, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    minutes = max(duration_s, 1.0 / fps) / 60.0
    return VideoTraits(duration_s=float(duration_s), cuts=cuts, cuts_per_min=cuts / minutes, motion=motion,
                       brightness=float((0.299 * r + 0.587 * g + 0.114 * b).mean()), warmth=float((r - b).mean()),
                       saturation=float(sat.mean()))


def describe_video(path, video_stream: int | None = None) -> VideoTraits:
    """Decode `path` once at 4 frames/s, 64 x 64, and measure it."""
    reader = video.VideoReader(path, video_stream)
    frames = [b for b in reader.sample(SAMPLE_FPS, THUMB, batch_size=64)]
    arr = np.concatenate(frames) if frames else np.zeros((0, THUMB, THUMB, 3), np.uint8)
    return measure_frames(arr, SAMPLE_FPS, float(reader.duration_s or reader.info.duration_s))


def prompt_from_traits(t: VideoTraits) -> str:
    """The traits in the words of the demo bundle's captions (see the module docstring)."""
    bpm = int(round(min(160.0, max(80.0, 80.0 + 0.6 * t.pace))))
    tempo = "slow" if bpm < 100 else "medium" if bpm < 130 else "fast"
    mode = "major" if t.brightness >= 0.4 else "minor"
    timbre = "warm" if t.warmth > 0.03 or t.brightness < 0.3 else "bright"
    pattern = ("sparse" if t.pace < 20 else "half time" if t.pace < 45 else "backbeat" if t.pace < 90
               else "four on the floor")
    n = min(t.cuts, 10)
    return f"{tempo} {bpm} bpm {mode} groove, {pattern} drums, {timbre} pad, bass, {_NUMBERS[n]} event{'s' * (n != 1)}"


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/v2m/prompts` (default `~/.cache/v2m/prompts`)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "v2m" / "prompts"


def file_sha256(path) -> str:
    """The hex sha256 of a file's bytes (the cache keys' content part)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def auto_prompt(path, video_stream: int | None = None, use_cache: bool = True,
                writer: Callable[[VideoTraits], str] | None = None, writer_key: str = "",
                content_hash: str | None = None) -> tuple[str, VideoTraits]:
    """(prompt, traits) of a video, from the cache when its content was described before.

    Args:
        writer: what turns the traits into the prompt (default `prompt_from_traits`; a model
            stage such as `describe_models.summarize`), `writer_key` naming it in the cache key.
        content_hash: the video's `file_sha256`, when the caller has it (not read again).
    A cache that cannot be read or written is skipped (logged), never an error."""
    video.probe(path, video_stream)  # a missing or broken video: one line, before hashing it
    digest = content_hash or file_sha256(path)
    key = f"{digest}-s{video_stream if video_stream is not None else 'd'}-v{DESCRIBER_VERSION}"
    if writer is not None:
        key += "-w" + hashlib.sha256(writer_key.encode()).hexdigest()[:16]
    entry = cache_dir() / f"{key}.json" if use_cache else None
    if entry is not None and entry.is_file():
        try:
            data = json.loads(entry.read_text())
            return data["prompt"], VideoTraits(**{k: data["traits"][k] for k in VideoTraits.__dataclass_fields__})
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.info("prompt cache entry %s unreadable (%s); describing again", entry, e)
    traits = describe_video(path, video_stream)
    prompt = (writer or prompt_from_traits)(traits)
    if entry is not None:
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            tmp = entry.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"prompt": prompt, "traits": asdict(traits), "video": str(path)}))
            os.replace(tmp, entry)
        except OSError as e:
            log.info("prompt cache %s not written (%s)", entry, e)
    return prompt, traits
