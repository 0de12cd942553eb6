"""Real music from scores: corpus works and MIDI files played by General MIDI instruments in FluidSynth.

Clip `i` of corpus `seed` is a pure function of (seed, i) (and of the work list, which
depends on the music21 version and the MIDI folder): `numpy.random.default_rng([seed, i])`
picks a work (a category first, so the 1300 Palestrina movements do not drown the 50
string quartets), an excerpt offset, a tempo (60-170 bpm), a transposition, a dynamic
level, a General MIDI program for each part (piano, strings, guitar, organ, winds, brass,
synth leads and pads...), a stereo position for each part, a reverb send and, for half of
the clips, a drum pattern on channel 10 (rock, four on the floor, shuffle, bossa, half time).

At seeded irregular times (at least 0.8 s apart, on the eighth-note grid) the arrangement
changes, and these are the clip's `events`, like `synth_music`'s:

- instrument: every part moves to a program of another family;
- drums: the drums stop, or come in on a crash;
- dynamics: the level jumps at least two steps (pp .. ff), the soft side with a mute
  of the upper parts, the loud side with doubled octaves;
- section: the music jumps elsewhere in the work, usually to another key.

The score is rendered through FluidSynth (`fluidsynth.Synth.get_samples`, no audio device)
with the FluidR3 General MIDI SoundFont, at 44.1 kHz stereo, and scaled to peak 0.9. The
caption is written from what was rendered, in varied words (`score_captions`).

```python
from v2m.train.score_music import make_clip
clip = make_clip(seed=0, index=3, duration_s=12.0)
clip.audio      # float32 [2, N] at 44.1 kHz, peak 0.9
clip.caption    # "A melancholic Bach chorale in D minor for cello, flute and organ, ..."
clip.events     # [(2.75, "instrument"), (6.5, "section"), ...]
```
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from v2m.core.errors import InputError

from . import score_captions
from .score_captions import DYNAMICS
from .score_corpus import CATEGORIES, Notes, Work, corpus_works, load_notes, midi_works, window

__all__ = ["SAMPLE_RATE", "SOUNDFONT", "EVENT_KINDS", "INSTRUMENTS", "DRUM_STYLES", "Arrangement", "Clip",
           "fluidsynth_available", "works", "arrange", "performance", "render", "mono_safe", "make_clip"]

log = logging.getLogger("v2m.train.scores")

SAMPLE_RATE = 44100
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")  # Debian fluid-soundfont-gm (MIT)
EVENT_KINDS = ("instrument", "drums", "dynamics", "section")
_EVENT_P = (0.35, 0.2, 0.2, 0.25)
MIN_GAP_S = 0.8  # between events
_GAIN = 0.2  # FluidSynth's master gain: 8 parts and drums stay under int16 clipping
_DYN_SCALE = (0.35, 0.5, 0.65, 0.8, 0.95, 1.1)  # velocity factors

# (GM program, family, MIDI range it sounds well in)
INSTRUMENTS: tuple[tuple[int, str, tuple[int, int]], ...] = (
    (0, "piano", (28, 100)), (4, "electric piano", (33, 96)), (6, "harpsichord", (36, 89)),
    (11, "mallets", (53, 89)), (12, "mallets", (45, 96)), (16, "organ", (36, 96)), (19, "organ", (24, 96)),
    (24, "guitar", (40, 84)), (25, "guitar", (40, 84)), (26, "guitar", (40, 86)),
    (32, "bass", (28, 60)), (33, "bass", (28, 64)), (40, "strings", (55, 100)), (42, "strings", (36, 76)),
    (46, "harp", (24, 100)), (48, "strings", (36, 96)), (52, "choir", (43, 81)),
    (56, "brass", (52, 84)), (57, "brass", (40, 72)), (60, "brass", (41, 77)), (61, "brass", (36, 84)),
    (68, "winds", (58, 91)), (70, "winds", (34, 72)), (71, "winds", (50, 91)), (73, "winds", (60, 96)),
    (80, "synth lead", (48, 96)), (81, "synth lead", (40, 96)), (88, "synth pad", (36, 96)), (89, "synth pad", (36, 96)),
)
_PROGRAMS = {p: (fam, rng) for p, fam, rng in INSTRUMENTS}
_BASS_PROGRAMS = (0, 19, 32, 33, 42, 48, 57, 70, 61)  # a lowest part sounds right on these

# GM drum notes on channel 10 (index 9)
KICK, SIDE, SNARE, CLAP, HAT, OPEN_HAT, CRASH, RIDE = 36, 37, 38, 39, 42, 46, 49, 51
# style -> (steps per beat, beats per bar, {drum note: steps})
DRUM_STYLES: dict[str, tuple[int, int, dict[int, tuple[int, ...]]]] = {
    "rock": (4, 4, {KICK: (0, 8, 10), SNARE: (4, 12), HAT: (0, 2, 4, 6, 8, 10, 12, 14)}),
    "four on the floor": (4, 4, {KICK: (0, 4, 8, 12), CLAP: (4, 12), OPEN_HAT: (2, 6, 10, 14)}),
    "shuffle": (3, 4, {KICK: (0, 6), SNARE: (3, 9), HAT: (0, 2, 3, 5, 6, 8, 9, 11)}),
    "bossa": (4, 4, {KICK: (0, 3, 4, 7, 8, 11, 12, 15), SIDE: (0, 3, 6, 10, 13), HAT: (0, 2, 4, 6, 8, 10, 12, 14)}),
    "half time": (4, 4, {KICK: (0, 10), SNARE: (8,), RIDE: (0, 4, 8, 12)}),
}
_DRUM_NAMES = tuple(DRUM_STYLES)


def fluidsynth_available() -> str | None:
    """None when FluidSynth (library and Python binding) and the SoundFont are here, else why not."""
    try:
        import fluidsynth  # noqa: F401  (the binding loads libfluidsynth at import)
    except (ImportError, OSError) as e:
        return f"FluidSynth is not available ({e}): apt-get install libfluidsynth3 and pip install pyfluidsynth"
    if not SOUNDFONT.is_file():
        return f"no SoundFont at {SOUNDFONT}: apt-get install fluid-soundfont-gm"
    return None


@dataclass(frozen=True)
class Segment:
    """The arrangement from `start` (seconds) to the next segment."""

    start: float
    q0: float  # score position (quarter notes) at `start`
    transpose: int  # semitones
    programs: tuple[int, ...]  # one GM program per part
    drums: str | None  # DRUM_STYLES key
    dynamics: int  # index into DYNAMICS


@dataclass(frozen=True)
class Arrangement:
    seed: int
    index: int
    duration_s: float
    work: Work
    bpm: float
    segments: tuple[Segment, ...]
    events: tuple[tuple[float, str], ...]
    pans: tuple[int, ...]  # CC10 per part, 0 (left) .. 127 (right)
    octave: tuple[int, ...]  # per part: octave shift into the first program's range
    reverb: int  # CC91 send


@dataclass
class Clip:
    audio: np.ndarray  # float32 [2, N]
    sample_rate: int
    caption: str
    events: list[tuple[float, str]]
    arrangement: Arrangement
    extra: dict = field(default_factory=dict)


def works(midi_folder: str | Path | None = None) -> tuple[Work, ...]:
    """The works a clip may play: the user's MIDI files if a folder is given, else the corpus's."""
    return midi_works(midi_folder) if midi_folder is not None else corpus_works()


def _pick_work(rng: np.random.Generator, pool: tuple[Work, ...]) -> tuple[Work, Notes]:
    """A category, then a work of it; a work that music21 cannot read is replaced by another."""
    cats = [c for c in (*CATEGORIES, "midi") if any(w.category == c for w in pool)]
    for _ in range(8):
        cat = cats[int(rng.integers(len(cats)))]
        members = [w for w in pool if w.category == cat]
        work = members[int(rng.integers(len(members)))]
        try:
            notes = load_notes(work.ref)
        except InputError as e:
            log.warning("skipping %s", e)
            continue
        if notes.onset.size >= 8 and notes.length_q >= 2:
            return work, notes
        log.warning("skipping %s: %d notes", work.ref, notes.onset.size)
    raise InputError("eight works in a row could not be read; check the music21 installation or the MIDI folder")


def _event_times(rng: np.random.Generator, duration_s: float, grid: float) -> list[float]:
    """1 to 4 events per 6 s on the `grid` (s), 0.5 s from the ends, at least MIN_GAP_S apart."""
    lo_n = max(1, round(duration_s / 6))
    hi_n = max(lo_n, round(4 * duration_s / 6))
    n = int(rng.integers(lo_n, hi_n + 1))
    times: list[float] = []
    for _ in range(200):
        if len(times) == n:
            break
        t = round(float(rng.uniform(0.5, duration_s - 0.5)) / grid) * grid
        if 0.5 <= t <= duration_s - 0.5 and all(abs(t - u) >= MIN_GAP_S for u in times):
            times.append(round(t, 4))
    return sorted(times)


def _program(rng: np.random.Generator, avoid: set[str], bass: bool) -> int:
    choices = [p for p, fam, _ in INSTRUMENTS if fam not in avoid]
    if bass and rng.random() < 0.6:
        choices = [p for p in _BASS_PROGRAMS if _PROGRAMS[p][0] not in avoid] or choices
    return int(choices[int(rng.integers(len(choices)))])


def _programs(rng: np.random.Generator, notes: Notes, prev: tuple[int, ...] | None) -> tuple[int, ...]:
    """A program per part (the lowest part of a polyphonic work from the bass-capable ones);
    with `prev`, each part changes family."""
    low = int(np.argmin([np.median(notes.pitch[notes.part == k]) for k in range(notes.parts)]))
    out = []
    for k in range(notes.parts):
        avoid = {_PROGRAMS[prev[k]][0]} if prev else set()
        out.append(_program(rng, avoid, bass=notes.parts > 1 and k == low))
    return tuple(out)


def _octaves(notes: Notes, programs: tuple[int, ...], transpose: int) -> tuple[int, ...]:
    """Per part, the octave shift that brings its median pitch into its first program's range."""
    out = []
    for k, prog in enumerate(programs):
        lo, hi = _PROGRAMS[prog][1]
        med = float(np.median(notes.pitch[notes.part == k])) + transpose
        shift = 0
        while med + 12 * shift < lo and shift < 3:
            shift += 1
        while med + 12 * shift > hi and shift > -3:
            shift -= 1
        out.append(shift)
    return tuple(out)


def _pans(rng: np.random.Generator, parts: int) -> tuple[int, ...]:
    """Parts spread over the stereo field in a seeded order (a single part off-centre a little)."""
    if parts == 1:
        return (int(64 + rng.uniform(-20, 20)),)
    width = float(rng.uniform(0.5, 0.85))
    spots = np.linspace(-width, width, parts)[rng.permutation(parts)]
    return tuple(int(round(64 + 63 * s)) for s in spots)


def arrange(seed: int, index: int, duration_s: float = 12.0, midi_folder: str | Path | None = None) -> Arrangement:
    """The arrangement of clip `index` of corpus `seed` (deterministic)."""
    if duration_s < 2.0:
        raise ValueError(f"clips must last at least 2 s, got {duration_s}")
    rng = np.random.default_rng([int(seed), int(index)])
    work, notes = _pick_work(rng, works(midi_folder))
    bpm = float(rng.uniform(60, 170))
    span_q = duration_s * bpm / 60
    q0 = float(math.floor(rng.uniform(0, max(notes.length_q - span_q, 0.0) + 1e-9)))
    transpose = int(rng.integers(-5, 7))
    first = Segment(0.0, q0, transpose, _programs(rng, notes, None),
                    _DRUM_NAMES[int(rng.integers(len(_DRUM_NAMES)))] if rng.random() < 0.5 else None,
                    int(rng.integers(1, 5)))
    segments, events = [first], []
    for t in _event_times(rng, duration_s, 30.0 / bpm):
        kind = EVENT_KINDS[int(rng.choice(len(EVENT_KINDS), p=_EVENT_P))]
        prev = segments[-1]
        pos = prev.q0 + (t - prev.start) * bpm / 60  # where the music is at the event
        seg = replace(prev, start=t, q0=pos)
        if kind == "instrument":
            seg = replace(seg, programs=_programs(rng, notes, prev.programs))
        elif kind == "drums":
            seg = replace(seg, drums=None if prev.drums else _DRUM_NAMES[int(rng.integers(len(_DRUM_NAMES)))])
        elif kind == "dynamics":
            levels = [d for d in range(len(DYNAMICS)) if abs(d - prev.dynamics) >= 2]
            seg = replace(seg, dynamics=int(levels[int(rng.integers(len(levels)))]))
        else:  # section: elsewhere in the work (at least four bars away when it is long enough), new key
            jump = float(math.floor(rng.uniform(0, max(notes.length_q - span_q, 0.0) + 1e-9)))
            if abs(jump - pos) < 16 and notes.length_q > 40:
                jump = float(math.floor((pos + notes.length_q / 2) % notes.length_q))
            keys = [k for k in range(-5, 7) if k != prev.transpose]
            seg = replace(seg, q0=jump, transpose=int(keys[int(rng.integers(len(keys)))]))
        segments.append(seg)
        events.append((t, kind))
    return Arrangement(int(seed), int(index), float(duration_s), work, bpm, tuple(segments), tuple(events),
                       _pans(rng, notes.parts), _octaves(notes, first.programs, transpose), int(rng.integers(30, 80)))


# --- the performance: timed MIDI messages ----------------------------------------------------------
def _segment_notes(arr: Arrangement, notes: Notes, seg: Segment, end: float, rng) -> list[tuple]:
    """(time s, order, kind, channel, a, b) messages of one segment's parts: order 0 = off, 1 = on."""
    spq = 60.0 / arr.bpm  # seconds a quarter note
    msgs = []
    loud, soft = seg.dynamics >= 4, seg.dynamics <= 1
    top = int(np.argmax([np.median(notes.pitch[notes.part == k]) for k in range(notes.parts)]))
    for on, dur, pitch, vel, part in window(notes, seg.q0, seg.q0 + (end - seg.start) / spq):
        if soft and notes.parts > 2 and part != top and rng.random() < 0.5:
            continue  # soft: a thinner texture
        t = seg.start + (on - seg.q0) * spq
        off = min(t + max(dur * spq * 0.95, 0.05), end)
        p = pitch + seg.transpose + 12 * arr.octave[part]
        v = int(np.clip(vel * _DYN_SCALE[seg.dynamics] + rng.integers(-6, 7), 8, 127))
        for q in ((p, p + 12) if loud and part == top else (p,)):  # loud: the top part in octaves
            if 12 <= q <= 115:
                msgs += [(t, 1, "on", part, q, v), (off, 0, "off", part, q, 0)]
    return msgs


def _segment_drums(arr: Arrangement, seg: Segment, end: float, crash: bool, rng) -> list[tuple]:
    """The segment's drum pattern; `crash`: a crash cymbal and a kick mark its start (every event
    has one, drums or not: without it the music curve found 39% of the events, 20 clips)."""
    msgs = [(seg.start, 1, "on", 9, CRASH, 120), (seg.start, 1, "on", 9, KICK, 110)] if crash else []
    if seg.drums is None:
        return msgs
    steps, beats, hits = DRUM_STYLES[seg.drums]
    spq = 60.0 / arr.bpm
    step_s = spq / steps
    # steps count from the clip's first beat (the excerpt starts on a beat), so a pattern stays in time
    k0, k1 = math.ceil(seg.start / step_s - 1e-9), math.ceil(end / step_s - 1e-9)
    for k in range(k0, k1):
        s = k % (steps * beats)
        for note, where in hits.items():
            if s in where:
                v = int(np.clip((100 if s % steps == 0 else 80) * _DYN_SCALE[seg.dynamics] + rng.integers(-8, 9), 8, 127))
                msgs += [(k * step_s, 1, "on", 9, note, v), (min(k * step_s + 0.1, end), 0, "off", 9, note, 0)]
    return msgs


def performance(arr: Arrangement, notes: Notes) -> list[tuple]:
    """Every MIDI message of the clip, sorted: (time s, order, kind, channel, a, b)."""
    rng = np.random.default_rng([arr.seed, arr.index, 1])  # humanized velocities
    msgs: list[tuple] = [(0.0, -1, "cc", 9, 91, arr.reverb)]
    for k in range(notes.parts):
        msgs += [(0.0, -1, "cc", k, 10, arr.pans[k]), (0.0, -1, "cc", k, 91, arr.reverb)]
    ends = [s.start for s in arr.segments[1:]] + [arr.duration_s]
    kinds = [None] + [k for _, k in arr.events]  # the event that starts each segment (None: the first)
    prev = None
    for seg, end, kind in zip(arr.segments, ends, kinds):
        if prev is None or seg.programs != prev.programs:
            msgs += [(seg.start, -1, "prog", k, p, 0) for k, p in enumerate(seg.programs)]
        msgs += _segment_notes(arr, notes, seg, end, rng)
        msgs += _segment_drums(arr, seg, end, kind is not None, rng)
        prev = seg
    return sorted(msgs, key=lambda m: (m[0], m[1], m[3], m[4]))


def render(arr: Arrangement, notes: Notes, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip's audio: float32 [2, round(duration * sample_rate)], peak 0.9, through FluidSynth."""
    import fluidsynth

    why = fluidsynth_available()
    if why:
        raise InputError(why)
    n = int(round(arr.duration_s * sample_rate))
    # No chorus: FluidSynth's chorus puts the synth leads and pads half out of phase (L/R
    # correlation -0.9, the mono sum 12 dB down, measured on FluidR3 programs 81 and 88).
    synth = fluidsynth.Synth(gain=_GAIN, samplerate=float(sample_rate),
                             **{"synth.cpu-cores": 1, "synth.chorus.active": 0})
    try:
        sfid = synth.sfload(str(SOUNDFONT))
        synth.program_select(9, sfid, 128, 0)  # the standard drum kit
        out, done = [], 0
        for t, _, kind, ch, a, b in performance(arr, notes):
            i = min(int(round(t * sample_rate)), n)
            if i > done:
                out.append(synth.get_samples(i - done))
                done = i
            if kind == "on":
                synth.noteon(ch, a, b)
            elif kind == "off":
                synth.noteoff(ch, a)
            elif kind == "cc":
                synth.cc(ch, a, b)
            else:
                synth.program_select(ch, sfid, 0, a)
        if n > done:
            out.append(synth.get_samples(n - done))
    finally:
        synth.delete()
    pcm = np.concatenate(out).reshape(-1, 2).T.astype(np.float32) / 32768.0  # (2, N), interleaved L R
    clipped = int((np.abs(pcm) >= 32767 / 32768.0).sum())
    if clipped:
        log.warning("clip %d of seed %d: %d samples at int16 full scale", arr.index, arr.seed, clipped)
    pcm = mono_safe(pcm)
    peak = float(np.abs(pcm).max())
    return (0.9 * pcm / max(peak, 1e-9)).astype(np.float32)


def mono_safe(pcm: np.ndarray, max_side: float = 0.5) -> np.ndarray:
    """Narrow the stereo (scale the side signal) where its power exceeds `max_side` times the
    mid's: the mono mix then stays within about 1.8 dB of the channels and the L/R correlation
    near 1/3 or above. Stereo SoundFont samples (the piano's, the choir's) and wide pans under
    reverb can otherwise leave a mix whose channels barely correlate."""
    mid, side = (pcm[0] + pcm[1]) / 2, (pcm[0] - pcm[1]) / 2
    pm, ps = float(np.mean(mid.astype(np.float64) ** 2)), float(np.mean(side.astype(np.float64) ** 2))
    if ps <= max_side * pm or ps == 0.0:
        return pcm
    g = math.sqrt(max_side * pm / ps)
    return np.stack([mid + g * side, mid - g * side])


def make_clip(seed: int, index: int, duration_s: float = 12.0, midi_folder: str | Path | None = None,
              sample_rate: int = SAMPLE_RATE) -> Clip:
    """Clip `index` of corpus `seed`: audio, caption, events and arrangement."""
    arr = arrange(seed, index, duration_s, midi_folder)
    notes = load_notes(arr.work.ref)
    cap = score_captions.caption(arr, notes, np.random.default_rng([arr.seed, arr.index, 2]))
    return Clip(render(arr, notes, sample_rate), sample_rate, cap, list(arr.events), arr)
