"""Training data: the synthetic corpus or a folder of the user's own music, behind one interface.

A source is a numbered list of clips: `len(source)` and `source.clip(i)` giving
`(audio float32 [2, N] at 44.1 kHz, caption, events)`, events being the known
event times of a synthetic clip and None for real music (whose curve is all we
know). The sources:

- `SynthSource(seed, count, duration_s)`: `v2m.train.synth_music`, clip i a pure
  function of (seed, i).
- `ScoreSource(seed, count, duration_s, midi_folder=None)`: `v2m.train.score_music`,
  real music from the music21 corpus's scores (or the user's MIDI files) played by General
  MIDI instruments in FluidSynth, with arrangement-change events; clip i a pure function of (seed, i).
- `MixSource(seed, count, duration_s)`: the two corpora interleaved (even clips synthetic,
  odd clips scores).
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

from . import score_music, synth_music

__all__ = ["SAMPLE_RATE", "CORPORA", "Source", "SynthSource", "ScoreSource", "MixSource", "FolderSource", "load_audio",
           "open_source"]

log = logging.getLogger("v2m.train")

SAMPLE_RATE = synth_music.SAMPLE_RATE
AUDIO_SUFFIXES = music.AUDIO_SUFFIXES
CORPORA = ("synth", "scores", "mix")  # the generated corpora `open_source` knows by name


class Source:
    """A numbered list of training clips."""

    def __len__(self) -> int:
        raise NotImplementedError

    def clip(self, i: int) -> tuple[np.ndarray, str, list[float] | None]:
        raise NotImplementedError

    def describe(self) -> dict:
        raise NotImplementedError

    def resized(self, seed: int, count: int, duration_s: float) -> Source | None:
        """The same generated corpus with another seed, size and clip length (None: not generated)."""
        return None


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

    def resized(self, seed: int, count: int, duration_s: float) -> Source:
        return SynthSource(seed, count, duration_s)


@dataclass
class ScoreSource(Source):
    """Scores played by FluidSynth (`score_music`): the music21 corpus, or the user's MIDI folder.

    Picklable and small (the work list is cached per process), so worker pools get it cheaply.
    """

    seed: int = 0
    count: int = 1000
    duration_s: float = 12.0
    midi_folder: str | None = None

    def __post_init__(self):
        why = score_music.fluidsynth_available()
        if why:
            raise InputError(why)
        score_music.works(self.midi_folder)  # a missing folder or music21 is one line, before any work

    def __len__(self) -> int:
        return self.count

    def clip(self, i: int):
        c = score_music.make_clip(self.seed, i, self.duration_s, self.midi_folder)
        return c.audio, c.caption, [t for t, _ in c.events]

    def describe(self) -> dict:
        import music21

        d = {"kind": "scores", "seed": self.seed, "count": self.count, "duration_s": self.duration_s,
             "music21": music21.__version__, "soundfont": str(score_music.SOUNDFONT)}
        if self.midi_folder is not None:
            works = score_music.works(self.midi_folder)
            d["midi"] = {"folder": str(self.midi_folder), "files": [w.ref.rsplit("/", 1)[-1] for w in works]}
        return d

    def resized(self, seed: int, count: int, duration_s: float) -> Source:
        return ScoreSource(seed, count, duration_s, self.midi_folder)


@dataclass
class MixSource(Source):
    """Synthetic and score clips interleaved: clip 2k is synthetic clip k, clip 2k+1 score clip k."""

    seed: int = 0
    count: int = 1000
    duration_s: float = 12.0
    midi_folder: str | None = None

    def __post_init__(self):
        self._synth = SynthSource(self.seed, (self.count + 1) // 2, self.duration_s)
        self._scores = ScoreSource(self.seed, self.count // 2, self.duration_s, self.midi_folder)

    def __len__(self) -> int:
        return self.count

    def clip(self, i: int):
        return (self._scores if i % 2 else self._synth).clip(i // 2)

    def describe(self) -> dict:
        return {"kind": "mix", "synth": self._synth.describe(), "scores": self._scores.describe()}

    def resized(self, seed: int, count: int, duration_s: float) -> Source:
        return MixSource(seed, count, duration_s, self.midi_folder)


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


def open_source(spec: str, seed: int = 0, count: int = 1000, duration_s: float = 12.0,
                midi_folder: str | None = None) -> Source:
    """A corpus by name (`synth`, `scores`, `mix`) or a folder of audio files.

    Args:
        midi_folder: with `scores` or `mix`, the user's MIDI files instead of the music21 corpus.
    """
    if midi_folder is not None and spec not in ("scores", "mix"):
        raise InputError(f"a MIDI folder plays through the score corpus: pass --corpus scores or mix, not {spec!r}")
    if spec == "synth":
        return SynthSource(seed, count, duration_s)
    if spec == "scores":
        return ScoreSource(seed, count, duration_s, midi_folder)
    if spec == "mix":
        return MixSource(seed, count, duration_s, midi_folder)
    return FolderSource(spec, duration_s)
