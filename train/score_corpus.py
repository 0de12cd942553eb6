"""Scores to play: the works of the music21 corpus and a folder of MIDI files, as note arrays.

`v2m.train.score_music` arranges and renders these; this file only finds works and reads
their notes:

- `corpus_works()`: the music21 corpus's works (Bach chorales, Irish, Scottish and German
  folk tunes, Palestrina, Josquin and Monteverdi, trecento pieces, classical string quartets,
  a few romantic and baroque pieces), each with a category and caption words for its style.
  The list is sorted and cached in memory and on disk per music21 version, so clip i of a
  seed picks the same work every time.
- `midi_works(folder)`: a user's `.mid`/`.midi` files, sorted by name.
- `load_notes(work)`: the work's notes (onset and duration in quarter notes, MIDI pitch,
  velocity, part), ties merged, grace notes dropped; cached in memory (a few works) and on
  disk (`$V2M_CACHE_DIR/scores`, else `~/.cache/v2m/scores`), because a string quartet
  movement takes music21 up to 15 s to parse.

Analyses (`.rntxt`), demos, exercises and lead sheets are left out.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from v2m.core.errors import InputError

__all__ = ["Work", "Notes", "CATEGORIES", "corpus_works", "midi_works", "load_notes", "window", "cache_dir"]

log = logging.getLogger("v2m.train.scores")

MIDI_SUFFIXES = (".mid", ".midi")
MAX_PARTS = 8  # MIDI channels 0-8 (9 is the GM drum channel)

# Corpus folder -> (category, caption words for its style). Folders not named here are left out.
_FOLDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "bach": ("chorale", ("Bach chorale", "chorale harmonization", "Lutheran chorale in four parts")),
    "palestrina": ("renaissance", ("Palestrina mass movement", "piece of renaissance polyphony", "sacred renaissance piece")),
    "josquin": ("renaissance", ("Josquin motet", "piece of renaissance polyphony", "renaissance piece")),
    "lusitano": ("renaissance", ("renaissance motet", "piece of renaissance polyphony")),
    "luca": ("renaissance", ("renaissance piece", "early polyphonic piece")),
    "monteverdi": ("renaissance", ("Monteverdi madrigal", "late renaissance madrigal", "Italian madrigal")),
    "trecento": ("medieval", ("medieval trecento piece", "fourteenth-century polyphonic piece", "medieval song")),
    "ciconia": ("medieval", ("medieval piece", "fourteenth-century polyphonic piece")),
    "ryansMammoth": ("folk", ("Irish fiddle tune", "folk tune", "traditional reel", "old dance tune")),
    "oneills1850": ("folk", ("Irish folk tune", "folk tune", "traditional Irish melody")),
    "essenFolksong": ("folk", ("German folk song", "folk tune", "old European folk melody")),
    "airdsAirs": ("folk", ("Scottish air", "folk tune", "traditional Scottish melody")),
    "miscFolk": ("folk", ("folk tune", "traditional melody")),
    "beethoven": ("classical", ("Beethoven string quartet", "classical string quartet", "classical chamber piece")),
    "mozart": ("classical", ("Mozart quartet", "classical string quartet", "Viennese classical piece")),
    "haydn": ("classical", ("Haydn quartet", "classical string quartet", "classical chamber piece")),
    "schubert": ("classical", ("Schubert piece", "classical-romantic piece")),
    "corelli": ("baroque", ("Corelli trio sonata", "baroque chamber piece", "baroque piece")),
    "handel": ("baroque", ("Handel piece", "baroque piece")),
    "cpebach": ("baroque", ("C. P. E. Bach piece", "galant baroque piece")),
    "chopin": ("romantic", ("Chopin mazurka", "romantic piano piece", "nineteenth-century dance")),
    "schumann_robert": ("romantic", ("Schumann song", "romantic piece", "nineteenth-century song")),
    "schumann_clara": ("romantic", ("Clara Schumann song", "romantic piece")),
    "beach": ("romantic", ("romantic song", "late romantic piece")),
    "verdi": ("romantic", ("Verdi aria", "romantic opera tune")),
    "weber": ("romantic", ("romantic piece", "early romantic piece")),
    "liliuokalani": ("romantic", ("Hawaiian song", "nineteenth-century song")),
    "joplin": ("romantic", ("ragtime piece", "Joplin rag", "piano rag")),
    "schoenberg": ("modern", ("atonal twentieth-century piece", "modernist piece")),
    "webern": ("modern", ("atonal twentieth-century piece", "modernist miniature")),
}
CATEGORIES = tuple(sorted({c for c, _ in _FOLDERS.values()}))
# Score files bigger than this (not the ABC collections, read one tune at a time) are left out:
# parsing a 78 KB compressed string quartet took music21 about 100 s on a 2-core machine, which
# would make rendering a corpus take hours. It drops most of Beethoven, the trecento files, and a
# few long songs; 1 in 8 corpus works.
MAX_SCORE_BYTES = 60_000
_SKIP_SUFFIXES = (".rntxt",)


@dataclass(frozen=True)
class Work:
    """One piece: `ref` is `corpus:<path>[#<number>]` or `midi:<absolute path>`."""

    ref: str
    category: str  # CATEGORIES or "midi"
    style: tuple[str, ...]  # caption words, any one of them
    title: str = ""


@dataclass
class Notes:
    """A work's notes, sorted by onset; times in quarter notes."""

    onset: np.ndarray  # float64 [N]
    duration: np.ndarray  # float64 [N]
    pitch: np.ndarray  # int16 [N], MIDI
    velocity: np.ndarray  # int16 [N], 1-127
    part: np.ndarray  # int16 [N], 0 .. parts - 1
    length_q: float  # the work's length (>= the last note's end)

    @property
    def parts(self) -> int:
        return int(self.part.max()) + 1 if self.part.size else 0


def cache_dir() -> Path:
    """`$V2M_CACHE_DIR/scores`, else `~/.cache/v2m/scores`."""
    env = os.environ.get("V2M_CACHE_DIR")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "v2m") / "scores"


def _music21():
    try:
        import music21
    except ImportError:
        raise InputError("the score corpus needs music21: pip install 'v2m-runtime[train]'") from None
    return music21


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:  # a read-only cache costs time, not correctness
        log.warning("could not cache %s: %s", path, e)
    finally:
        tmp.unlink(missing_ok=True)


def _abc_numbers(path: Path) -> list[int | None]:
    """The tune numbers (X: fields) of an ABC file holding several tunes; [None] for one tune."""
    numbers = [int(m) for m in re.findall(r"^X:\s*(\d+)", path.read_text(errors="replace"), flags=re.M)]
    return numbers if len(numbers) > 1 else [None]


@functools.lru_cache(maxsize=1)
def corpus_works() -> tuple[Work, ...]:
    """The corpus's works, sorted by ref (cached on disk per music21 version).

    The files come from `music21.corpus.getPaths()`; an ABC file of several tunes is one work
    per tune (its X: numbers). Reading music21's metadata bundle instead took 2 minutes here.
    """
    m21 = _music21()
    path = cache_dir() / f"works-music21-{m21.__version__}-max{MAX_SCORE_BYTES}.json"
    if path.is_file():
        try:
            return tuple(Work(r["ref"], r["category"], tuple(r["style"]), r["title"])
                         for r in json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            log.warning("%s is unreadable; listing the corpus again", path)
    works = []
    for file in m21.corpus.getPaths():
        file = Path(file)
        rel = file.as_posix().rsplit("/corpus/", 1)[-1]
        folder = rel.split("/")[0]
        if folder not in _FOLDERS or rel.endswith(_SKIP_SUFFIXES):
            continue
        if not rel.endswith(".abc") and file.stat().st_size > MAX_SCORE_BYTES:
            continue
        category, style = _FOLDERS[folder]
        for number in _abc_numbers(file) if rel.endswith(".abc") else [None]:
            ref = f"corpus:{rel}" + (f"#{number}" if number is not None else "")
            works.append(Work(ref, category, style, file.stem))
    works = sorted(set(works), key=lambda w: w.ref)
    log.info("music21 %s corpus: %d works", m21.__version__, len(works))
    _atomic_write(path, lambda p: p.write_text(json.dumps([asdict(w) for w in works])))
    return tuple(works)


def midi_works(folder: str | Path) -> tuple[Work, ...]:
    """The `.mid`/`.midi` files of `folder`, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"MIDI folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in MIDI_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no MIDI files (.mid, .midi)")
    return tuple(Work(f"midi:{p.resolve()}", "midi", (), p.stem.replace("_", " ")) for p in files)


def _parse(ref: str):
    m21 = _music21()
    kind, _, rest = ref.partition(":")
    if kind == "midi":
        return m21.converter.parse(rest, format="midi")
    path, _, number = rest.partition("#")
    return m21.corpus.parse(path, number=int(number) if number else None)


def _score_notes(score) -> Notes:
    """Every pitched note of the score's parts (at most MAX_PARTS, the fullest kept), ties merged."""
    parts = [p for p in (list(score.parts) or [score])]
    rows: list[list[tuple]] = []
    for part in parts:
        mine = []
        for n in part.flatten().stripTies().notes:
            q = float(n.quarterLength)
            if q <= 0 or n.duration.isGrace:
                continue
            vel = n.volume.velocity if n.volume.velocity is not None else 80
            mine += [(float(n.offset), q, p.midi, vel) for p in n.pitches]
        if mine:
            rows.append(mine)
    if len(rows) > MAX_PARTS:  # the fullest parts, in score order
        keep = sorted(sorted(range(len(rows)), key=lambda k: -len(rows[k]))[:MAX_PARTS])
        rows = [rows[k] for k in keep]
    flat = [(*r, k) for k, part in enumerate(rows) for r in part]
    flat.sort(key=lambda r: (r[0], r[4], r[2]))
    a = np.array(flat, dtype=np.float64).reshape(-1, 5)
    end = float((a[:, 0] + a[:, 1]).max()) if a.size else 0.0
    length = max(end, float(score.highestTime or 0.0))
    return Notes(a[:, 0].copy(), a[:, 1].copy(), a[:, 2].astype(np.int16), np.clip(a[:, 3], 1, 127).astype(np.int16),
                 a[:, 4].astype(np.int16), length)


def _cache_key(ref: str) -> str:
    kind, _, rest = ref.partition(":")
    h = hashlib.sha256(ref.encode())
    if kind == "midi":  # a MIDI file edited in place is read again
        h.update(Path(rest).read_bytes())
    m21 = _music21()
    return f"{h.hexdigest()[:24]}-m21-{m21.__version__}"


@functools.lru_cache(maxsize=16)
def load_notes(ref: str) -> Notes:
    """The notes of work `ref` (disk-cached); raises InputError if it cannot be read."""
    path = cache_dir() / "notes" / f"{_cache_key(ref)}.npz"
    if path.is_file():
        try:
            z = np.load(path)
            return Notes(z["onset"], z["duration"], z["pitch"], z["velocity"], z["part"], float(z["length_q"]))
        except (OSError, ValueError, KeyError):
            log.warning("%s is unreadable; parsing %s again", path, ref)
    try:
        notes = _score_notes(_parse(ref))
    except InputError:
        raise
    except Exception as e:  # music21 raises many types on a bad file
        raise InputError(f"{ref}: cannot read the score ({type(e).__name__}: {e})") from None

    def write(tmp: Path):
        with open(tmp, "wb") as f:
            np.savez(f, onset=notes.onset, duration=notes.duration, pitch=notes.pitch, velocity=notes.velocity,
                     part=notes.part, length_q=notes.length_q)

    _atomic_write(path, write)
    return notes


def window(notes: Notes, qa: float, qb: float) -> list[tuple[float, float, int, int, int]]:
    """Notes with an onset in [qa, qb), the work looped past its end: (onset, dur, pitch, vel, part)."""
    out = []
    L = notes.length_q
    for k in range(int(math.floor(qa / L)), int(math.floor(qb / L)) + 1):
        on = notes.onset + k * L
        sel = np.nonzero((on >= qa) & (on < qb))[0]
        out += [(float(on[j]), float(notes.duration[j]), int(notes.pitch[j]), int(notes.velocity[j]),
                 int(notes.part[j])) for j in sel]
    return out
