"""Training data: the synthetic corpus or a folder of the user's own music, behind one interface.

A source is a numbered list of clips: `len(source)` and `source.clip(i)` giving
`(audio float32 [2, N] at 44.1 kHz, caption, events)`, events being the known
event times of a synthetic clip and None for real music (whose curve is all we
know). Two sources:

- `SynthSource(seed, count, duration_s)`: `v2m.train.synth_music`, clip i a pure
  function of (seed, i).
- `FolderSource(folder)`: audio files (anything FFmpeg reads: wav, flac, mp3, ogg,
  m4a) with a captions file in the folder, `captions.jsonl` (one
  `{"file": "a.wav", "caption": "..."}` per line) or `captions.tsv` (`file<TAB>caption`).
  Audio is decoded and resampled to stereo 44.1 kHz by PyAV; each file is cut into
  clips of `duration_s` (the last, shorter part is dropped unless it is the whole file).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from v2m.core.errors import InputError
from v2m.runtime import music

from . import synth_music

__all__ = ["SAMPLE_RATE", "Source", "SynthSource", "FolderSource", "load_audio", "open_source"]

log = logging.getLogger("v2m.train")

SAMPLE_RATE = synth_music.SAMPLE_RATE
AUDIO_SUFFIXES = music.AUDIO_SUFFIXES


class Source:
    """A numbered list of training clips."""

    def __len__(self) -> int:
        raise NotImplementedError

    def clip(self, i: int) -> tuple[np.ndarray, str, list[float] | None]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError


@dataclass
class SynthSource(Source):
    seed: int = 0
    count: int = 1000
    duration_s: float = 12.0

    def __len__(self) -> int:
        return self.count

    def clip(self, i: int):
        c = synth_music.make_clip(self.seed, i, self.duration_s)
        return c.audio, c.caption, [t for t, _ in c.events]

    def describe(self) -> dict:
        return {"kind": "synth", "seed": self.seed, "count": self.count, "duration_s": self.duration_s}


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode any audio file to float32 stereo [2, N] at `sample_rate` (PyAV, swresample)."""
    return music.load_audio(path, sample_rate)[0]


def _read_captions(folder: Path) -> dict[str, str]:
    jsonl, tsv = folder / "captions.jsonl", folder / "captions.tsv"
    captions: dict[str, str] = {}
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                captions[str(row["file"])] = str(row["caption"])
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{jsonl}:{n}: expected {{\"file\": ..., \"caption\": ...}}") from None
    elif tsv.is_file():
        for n, line in enumerate(tsv.read_text().splitlines(), 1):
            if not line.strip():
                continue
            name, sep, text = line.partition("\t")
            if not sep:
                raise InputError(f"{tsv}:{n}: expected FILE<TAB>CAPTION")
            captions[name.strip()] = text.strip()
    else:
        raise InputError(f"{folder}: no captions.jsonl or captions.tsv; write one caption per audio file")
    return captions


class FolderSource(Source):
    """The user's own music: audio files and a captions file, cut into clips of `duration_s`."""

    def __init__(self, folder: str | Path, duration_s: float = 12.0):
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"audio folder {folder} does not exist")
        captions = _read_captions(folder)
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith("."))
        missing = [p.name for p in files if p.name not in captions]
        if missing:
            raise InputError(f"{folder}: no caption for {', '.join(missing[:3])}"
                             f"{f' (+{len(missing) - 3} more)' if len(missing) > 3 else ''}")
        unknown = sorted(set(captions) - {p.name for p in files})
        if unknown:
            log.warning("%s: captions for missing files %s ignored", folder, ", ".join(unknown[:3]))
        if not files:
            raise InputError(f"{folder}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))})")
        self.folder, self.duration_s = folder, float(duration_s)
        n = int(round(self.duration_s * SAMPLE_RATE))
        self._clips: list[tuple[Path, int, int]] = []  # (file, start sample, length)
        for p in files:
            total = load_audio(p).shape[1]
            starts = list(range(0, total - n + 1, n)) or [0]
            self._clips += [(p, s, min(n, total)) for s in starts]
        self._captions = captions
        self._cache: tuple[Path, np.ndarray] | None = None
        log.info("%s: %d files, %d clips of %.1f s", folder, len(files), len(self._clips), self.duration_s)

    def __len__(self) -> int:
        return len(self._clips)

    def clip(self, i: int):
        path, start, n = self._clips[i]
        if self._cache is None or self._cache[0] != path:
            self._cache = (path, load_audio(path))
        return self._cache[1][:, start : start + n], self._captions[path.name], None

    def describe(self) -> dict:
        return {"kind": "folder", "path": str(self.folder), "clips": len(self), "duration_s": self.duration_s}


def open_source(spec: str, seed: int = 0, count: int = 1000, duration_s: float = 12.0) -> Source:
    """`synth` (the synthetic corpus) or a folder path."""
    if spec == "synth":
        return SynthSource(seed, count, duration_s)
    return FolderSource(spec, duration_s)
