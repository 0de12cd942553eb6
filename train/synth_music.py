"""A seeded synthetic music corpus: drum grooves, bass and pads with a few irregular events.

Clip `i` of corpus `seed` is a pure function of (seed, i): its parameters come from
`numpy.random.default_rng([seed, i])` and its audio is rendered from them, so no
audio is ever stored and any clip can be regenerated. Each clip is a steady groove
(kick, snare, hats, bass, pad; 80-160 bpm) interrupted at irregular times by
events, about one to four per six seconds, at least 0.9 s apart:

- section: a new chord, pad timbre and drum pattern, the groove restarting on the
  event with a crash cymbal;
- accent: a crash, a kick and a loud chord stab over the running groove;
- chord: the pad and bass move to a new chord, marked by a short splash cymbal.

Between events nothing changes, so the events are the music's only changes and
the music event curve (`v2m.runtime.music`) peaks on them. The drums are mixed
low on purpose (the feasibility study's lesson: loud drums drown the events).
The caption is written from the parameters ("fast 150 bpm minor groove in a,
backbeat drums, bright pad, bass, three events").

```python
from v2m.train.synth_music import make_clip
clip = make_clip(seed=0, index=17, duration_s=12.0)
clip.audio      # float32 [2, N] at 44.1 kHz, peak 0.9
clip.caption    # "medium 112 bpm major groove in d ..."
clip.events     # [(3.21, "section"), (6.02, "accent"), ...]
```
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SAMPLE_RATE", "EVENT_KINDS", "ClipParams", "Clip", "clip_params", "render", "caption", "make_clip"]

SAMPLE_RATE = 44100
EVENT_KINDS = ("section", "accent", "chord")
_EVENT_P = (0.45, 0.25, 0.30)
_NOTE_NAMES = ("c", "c sharp", "d", "e flat", "e", "f", "f sharp", "g", "a flat", "a", "b flat", "b")
_TABLE = 4096  # wavetable points per period (nearest-point lookup: about -70 dB of error)
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# 16 sixteenth-note steps of one bar: (kick, snare, hat) step lists and a hat gain.
_PATTERNS = {
    "four on the floor": ((0, 4, 8, 12), (4, 12), (2, 6, 10, 14), 1.0),
    "backbeat": ((0, 6, 8, 10), (4, 12), (0, 2, 4, 6, 8, 10, 12, 14), 0.7),
    "half time": ((0, 10), (8,), tuple(range(16)), 0.45),
    "sparse": ((0, 8), (12,), (0, 4, 8, 12), 0.8),
}
_PATTERN_NAMES = tuple(_PATTERNS)
# Chord qualities: semitones above the root.
_MAJOR_CHORDS = ((0, 4, 7), (5, 9, 12), (7, 11, 14), (9, 12, 16), (2, 5, 9), (4, 7, 11))  # I IV V vi ii iii
_MINOR_CHORDS = ((0, 3, 7), (5, 8, 12), (7, 10, 14), (8, 12, 15), (3, 7, 10), (10, 14, 17))  # i iv v VI III VII


@dataclass(frozen=True)
class Section:
    start: float  # seconds
    chord: tuple[int, ...]  # semitones above the key's root
    pattern: str
    brightness: int  # pad harmonics, 2 (warm) .. 6 (bright)
    beat0: float  # time of the groove's first beat in this section


@dataclass(frozen=True)
class ClipParams:
    seed: int
    index: int
    duration_s: float
    bpm: float
    root: int  # MIDI note of the key's root in octave 2 (bass register)
    minor: bool
    sections: tuple[Section, ...]  # start times ascending, first at 0
    events: tuple[tuple[float, str], ...]  # (time, kind) ascending
    drum_gain: float
    pan: float  # pad stereo spread


@dataclass
class Clip:
    audio: np.ndarray  # float32 [2, N]
    sample_rate: int
    caption: str
    events: list[tuple[float, str]]
    params: ClipParams
    extra: dict = field(default_factory=dict)


def _event_times(rng: np.random.Generator, duration_s: float) -> list[float]:
    """1 to 4 events per 6 s, uniform in [0.6, duration - 0.6], at least 0.9 s apart."""
    lo_n = max(1, round(duration_s / 6))
    hi_n = max(lo_n, round(4 * duration_s / 6))
    n = int(rng.integers(lo_n, hi_n + 1))
    times: list[float] = []
    for _ in range(200):  # rejection sampling; dense requests settle for fewer events
        if len(times) == n:
            break
        t = float(rng.uniform(0.6, duration_s - 0.6))
        if all(abs(t - u) >= 0.9 for u in times):
            times.append(t)
    return sorted(times)


def clip_params(seed: int, index: int, duration_s: float = 6.0) -> ClipParams:
    """The parameters of clip `index` of corpus `seed` (deterministic)."""
    if duration_s < 2.0:
        raise ValueError(f"clips must last at least 2 s, got {duration_s}")
    rng = np.random.default_rng([int(seed), int(index)])
    bpm = float(rng.uniform(80, 160))
    minor = bool(rng.random() < 0.5)
    root = 36 + int(rng.integers(0, 12))  # C2 .. B2
    chords = _MINOR_CHORDS if minor else _MAJOR_CHORDS
    beat = 60.0 / bpm

    def new_section(start: float, prev: Section | None) -> Section:
        chord = chords[int(rng.integers(len(chords)))]
        pattern = _PATTERN_NAMES[int(rng.integers(len(_PATTERN_NAMES)))]
        bright = int(rng.integers(2, 7))
        if prev is not None:  # a section change must change: new chord, pattern and timbre
            while chord == prev.chord:
                chord = chords[int(rng.integers(len(chords)))]
            while pattern == prev.pattern:
                pattern = _PATTERN_NAMES[int(rng.integers(len(_PATTERN_NAMES)))]
            while abs(bright - prev.brightness) < 2:
                bright = int(rng.integers(2, 7))
        return Section(start, chord, pattern, bright, start)

    first = new_section(0.0, None)
    sections = [Section(0.0, first.chord, first.pattern, first.brightness, -float(rng.uniform(0, beat)))]
    events = []
    for t in _event_times(rng, duration_s):
        kind = EVENT_KINDS[int(rng.choice(len(EVENT_KINDS), p=_EVENT_P))]
        events.append((round(t, 4), kind))
        prev = sections[-1]
        if kind == "section":
            sections.append(new_section(t, prev))
        elif kind == "chord":
            chord = prev.chord
            while chord == prev.chord:
                chord = chords[int(rng.integers(len(chords)))]
            sections.append(Section(t, chord, prev.pattern, prev.brightness, prev.beat0))
    return ClipParams(
        seed=int(seed), index=int(index), duration_s=float(duration_s), bpm=bpm, root=root, minor=minor,
        sections=tuple(sections), events=tuple(events),
        drum_gain=float(rng.uniform(0.2, 0.35)), pan=float(rng.uniform(0.1, 0.4)),
    )


# --- instruments: one-shots added into a [2, N] buffer -----------------------------------------
def _midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def _add(buf: np.ndarray, start: int, sound: np.ndarray) -> None:
    """buf[:, start:] += sound (clipped at the end); sound is [2, n] or [n] (centre)."""
    if start >= buf.shape[1]:
        return
    n = min(sound.shape[-1], buf.shape[1] - start)
    buf[:, start : start + n] += sound[..., :n]


def _kick(sr: int) -> np.ndarray:
    t = np.arange(int(0.28 * sr)) / sr
    freq = 45.0 + 85.0 * np.exp(-t / 0.035)  # pitch sweep 130 -> 45 Hz
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return np.sin(phase) * np.exp(-t / 0.09)


def _snare(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.2 * sr)) / sr
    noise = rng.standard_normal(t.size)
    noise = noise - np.convolve(noise, np.ones(6) / 6, mode="same")  # crude high-pass
    return (0.7 * noise * np.exp(-t / 0.05) + 0.5 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.04))


def _hat(sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(0.06 * sr)) / sr
    noise = rng.standard_normal(t.size)
    noise = noise - np.convolve(noise, np.ones(3) / 3, mode="same")
    return noise * np.exp(-t / 0.012)


def _crash(sr: int, rng: np.random.Generator) -> np.ndarray:
    """A short crash: high-passed stereo noise, 0.2 s decay. A real crash rings for seconds; a
    long noise tail over most of a clip made the small autoencoder's output noise-like (median
    spectral flatness 0.23 with a 0.45 s decay, 0.02 with this one, same autoencoder)."""
    t = np.arange(int(0.8 * sr)) / sr
    noise = rng.standard_normal((2, t.size))
    smooth = np.stack([np.convolve(ch, np.ones(4) / 4, mode="same") for ch in noise])
    return (noise - smooth) * np.exp(-t / 0.2)[None, :]


def _tone(freq: float, seconds: float, sr: int, harmonics: int, decay: float, attack: float = 0.005) -> np.ndarray:
    """Additive tone: harmonics with 1/h amplitude, linear attack, exponential decay."""
    t = np.arange(int(seconds * sr)) / sr
    h = np.arange(1, harmonics + 1)[:, None]
    h = h[(h[:, 0] * freq) < sr / 2 - 1000]
    wave = (np.sin(2 * np.pi * freq * h * t[None, :]) / h).sum(axis=0)
    env = np.minimum(t / attack, 1.0) * np.exp(-t / decay)
    return wave * env


def _pad(chord_notes: list[float], t0: float, t1: float, sr: int, harmonics: int, pan: float,
         rng: np.random.Generator) -> np.ndarray:
    """A sustained chord over [t0, t1): detuned left/right voices, 30 ms fades at both ends.

    Each voice is one period of its harmonic series (amplitude h^-1.2, random phases)
    in a 4096-point wavetable, read at the voice's phase: one lookup per sample
    instead of one sine per harmonic.
    """
    n = int(round((t1 - t0) * sr))
    t = np.arange(n) / sr
    out = np.zeros((2, n))
    h = np.arange(1, harmonics + 1)
    grid = np.arange(_TABLE) / _TABLE
    for note in chord_notes:
        f = _midi_hz(note)
        hs = h[h * f < sr / 2 - 1000]
        amp = (1.0 / hs) ** 1.2
        for ch, det in ((0, -pan), (1, pan)):
            ph = rng.uniform(0, 2 * np.pi, hs.size)
            table = (amp[:, None] * np.sin(2 * np.pi * hs[:, None] * grid[None, :] + ph[:, None])).sum(axis=0)
            phase = (f * (1 + det * 0.004) * t) % 1.0  # cycles
            out[ch] += table[(phase * _TABLE).astype(np.int64) % _TABLE]
    fade = min(int(0.03 * sr), n // 2)
    if fade > 0:
        ramp = np.linspace(0, 1, fade)
        out[:, :fade] *= ramp
        out[:, n - fade :] *= ramp[::-1]
    return out / max(len(chord_notes), 1)


def render(params: ClipParams, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip's audio: float32 [2, round(duration * sample_rate)], peak 0.9."""
    sr = sample_rate
    n = int(round(params.duration_s * sr))
    rng = np.random.default_rng([params.seed, params.index, 1])  # noise of the drums and crashes
    drums = np.zeros((2, n))
    bass = np.zeros((2, n))
    pad = np.zeros((2, n))
    fx = np.zeros((2, n))
    kick, hat = _kick(sr), _hat(sr, rng)
    snare = _snare(sr, rng)
    step = 60.0 / params.bpm / 4  # a sixteenth note
    bounds = [s.start for s in params.sections[1:]] + [params.duration_s]
    for sec, end in zip(params.sections, bounds):
        kicks, snares, hats, hat_gain = _PATTERNS[sec.pattern]
        chord = [params.root + 12 + c for c in sec.chord]  # octave 3
        k0 = math.ceil((sec.start - sec.beat0) / step - 1e-9)
        k1 = math.ceil((end - sec.beat0) / step - 1e-9)
        for k in range(max(k0, 0), k1):
            t = sec.beat0 + k * step
            i = int(round(t * sr))
            s = k % 16
            if s in kicks:
                _add(drums, i, 0.8 * kick)
                note = params.root + sec.chord[0] + (12 if s % 8 else 0)
                _add(bass, i, 0.5 * _tone(_midi_hz(note), min(3.5 * step, 0.4), sr, 4, 0.18))
            if s in snares:
                _add(drums, i, 0.45 * snare)
            if s in hats:
                _add(drums, i, 0.18 * hat_gain * (1.0 if s % 4 == 0 else 0.7) * hat)
        pad_seg = _pad([c + 12 for c in chord], sec.start, end, sr, sec.brightness, params.pan, rng)
        _add(pad, int(round(sec.start * sr)), 0.55 * pad_seg)
    splash = _crash(sr, rng)[:, : int(0.5 * sr)] * np.exp(-np.arange(int(0.5 * sr)) / (0.12 * sr))
    for t, kind in params.events:
        i = int(round(t * sr))
        if kind in ("section", "accent"):
            _add(fx, i, 0.3 * _crash(sr, rng))
        if kind == "chord":
            _add(fx, i, 0.3 * splash)
        if kind == "accent":
            sec = [s for s in params.sections if s.start <= t][-1]
            stab = sum(_tone(_midi_hz(params.root + 24 + c), 0.6, sr, 6, 0.2) for c in sec.chord)
            _add(fx, i, 0.45 * stab / len(sec.chord))
            _add(fx, i, 0.9 * kick)
    mix = params.drum_gain * drums + bass + pad + fx
    peak = np.abs(mix).max()
    return (0.9 * mix / max(peak, 1e-9)).astype(np.float32)


def caption(params: ClipParams) -> str:
    """A caption written from the parameters."""
    tempo = "slow" if params.bpm < 100 else "medium" if params.bpm < 130 else "fast"
    mode = "minor" if params.minor else "major"
    key = _NOTE_NAMES[params.root % 12]
    first = params.sections[0]
    timbre = "warm" if first.brightness <= 3 else "bright"
    n = len(params.events)
    events = f"{_NUMBERS[min(n, 10)]} event{'s' if n != 1 else ''}"
    return (f"{tempo} {round(params.bpm)} bpm {mode} groove in {key}, {first.pattern} drums, "
            f"{timbre} pad, bass, {events}")


def make_clip(seed: int, index: int, duration_s: float = 6.0, sample_rate: int = SAMPLE_RATE) -> Clip:
    """Clip `index` of corpus `seed`: audio, caption, events and parameters."""
    p = clip_params(seed, index, duration_s)
    return Clip(render(p, sample_rate), sample_rate, caption(p), list(p.events), p)
