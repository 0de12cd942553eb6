"""Captions of rendered score clips, in varied words, written from what was played.

A text encoder trained on these should learn meanings, not tokens: every attribute has
several wordings and the sentence comes from one of several templates, all seeded.
What a caption says is what the clip plays at its start (the instruments of its first
segment, its drums), its tempo (a word and the bpm), its key and mode (estimated from the
rendered notes, after transposition, by Krumhansl-Kessler key profiles), a feel from
mode, tempo and dynamics, the work's style (from the corpus folder: "Bach chorale",
"Irish fiddle tune", "renaissance polyphony"...) and its first one or two changes.
"""

from __future__ import annotations

import re

import numpy as np

from .score_corpus import window

__all__ = ["DYNAMICS", "INSTRUMENT_NAMES", "DRUM_WORDS", "tempo_words", "estimate_key", "caption", "caption_words"]

INSTRUMENT_NAMES: dict[int, tuple[str, ...]] = {
    0: ("piano", "grand piano", "acoustic piano", "keys"), 4: ("electric piano", "Rhodes-style keys", "e-piano"),
    6: ("harpsichord",), 11: ("vibraphone", "vibes"), 12: ("marimba",),
    16: ("drawbar organ", "organ", "Hammond-style organ"), 19: ("church organ", "pipe organ", "organ"),
    24: ("nylon-string guitar", "classical guitar", "acoustic guitar"), 25: ("steel-string guitar", "acoustic guitar"),
    26: ("jazz guitar", "clean electric guitar"), 32: ("upright bass", "acoustic bass", "double bass"),
    33: ("electric bass", "bass guitar"), 40: ("violin", "fiddle"), 42: ("cello",), 46: ("harp", "concert harp"),
    48: ("string ensemble", "strings", "string section"), 52: ("choir", "choir aahs", "wordless choir"),
    56: ("trumpet",), 57: ("trombone",), 60: ("french horn", "horn"), 61: ("brass section", "brass"),
    68: ("oboe",), 70: ("bassoon",), 71: ("clarinet",), 73: ("flute",),
    80: ("square lead", "synth lead", "square-wave synth"), 81: ("sawtooth lead", "synth lead", "saw synth"),
    88: ("new age pad", "synth pad", "airy pad"), 89: ("warm pad", "synth pad", "soft pad"),
}
DRUM_WORDS = {
    "rock": ("rock beat", "straight rock drums", "backbeat drums"),
    "four on the floor": ("four-on-the-floor beat", "dance beat", "steady kick-drum pulse"),
    "shuffle": ("shuffle groove", "swung drums"),
    "bossa": ("bossa nova rhythm", "latin groove"),
    "half time": ("half-time beat", "laid-back half-time drums"),
}
DYNAMICS = ("pp", "p", "mp", "mf", "f", "ff")
_NOTE = ("C", "C sharp", "D", "E flat", "E", "F", "F sharp", "G", "A flat", "A", "B flat", "B")
# Krumhansl-Kessler probe-tone profiles, tonic first
_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_FEEL = {
    (True, False): ("melancholic", "somber", "wistful", "mournful"),
    (True, True): ("tense", "urgent", "dramatic", "restless"),
    (False, False): ("calm", "serene", "peaceful", "tender"),
    (False, True): ("bright", "joyful", "cheerful", "playful"),
}
_LOUD = ("bold", "powerful", "forceful")
_SOFT = ("quiet", "delicate", "hushed")
_TEMPLATES = (
    "{Feel} {style} in {key}, played on {inst}, {tempo} at {bpm} bpm{drums}{changes}",
    "{Inst} play a {tempo} {style} in {key} ({bpm} bpm), {feel} mood{drums}{changes}",
    "{bpm} BPM, {key}: a {style} arranged for {inst}{drums}; {tempo} and {feel}{changes}",
    "A {feel} arrangement of a {style} for {inst}, {tempo} ({bpm} bpm), in {key}{drums}{changes}",
    "{Tempo} and {feel}: {inst} performing a {style} in {key} at {bpm} bpm{drums}{changes}",
)
# Short captions, the length of what people type ("calm piano lullaby"): a share of the
# clips gets one, so a short prompt is not a length the model never saw.
SHORT_SHARE = 0.4
_SHORT = (
    "{feel} {tempo} {inst}",
    "{tempo} {inst} {style}",
    "{feel} {style} on {inst}",
    "{inst}, {feel} and {tempo}",
    "{tempo} {feel} {inst}{drums}",
    "{feel} {inst}",
)


def _pick(rng: np.random.Generator, words):
    return words[int(rng.integers(len(words)))]


def tempo_words(bpm: float) -> tuple[str, ...]:
    """Words for a tempo: slow (< 76 bpm), laid-back (< 100), steady (< 125), brisk (< 150), fast."""
    for limit, words in ((76, ("slow", "unhurried", "gentle-paced")), (100, ("laid-back", "relaxed", "moderate")),
                         (125, ("steady", "medium-tempo", "walking-pace")), (150, ("brisk", "upbeat", "lively"))):
        if bpm < limit:
            return words
    return ("fast", "frantic", "racing")


def estimate_key(pitch: np.ndarray, duration: np.ndarray) -> tuple[int, bool]:
    """(tonic pitch class, minor) of notes: the duration-weighted pitch-class histogram's best
    correlation with the 24 rotated Krumhansl-Kessler profiles."""
    hist = np.bincount(np.asarray(pitch, np.int64) % 12, weights=np.asarray(duration, np.float64), minlength=12)
    if hist.sum() <= 0:
        return 0, False
    best = (-2.0, 0, False)
    for minor, prof in ((False, _MAJOR), (True, _MINOR)):
        for tonic in range(12):
            r = float(np.corrcoef(hist, np.roll(prof, tonic))[0, 1])
            if r > best[0]:
                best = (r, tonic, minor)
    return best[1], best[2]


def _segment_key(arr, notes, seg, end: float) -> tuple[int, bool]:
    span = (end - seg.start) * arr.bpm / 60
    rows = window(notes, seg.q0, seg.q0 + max(span, 4.0))
    if not rows:
        return 0, False
    a = np.array([(r[2] + seg.transpose, r[1]) for r in rows])
    return estimate_key(a[:, 0], a[:, 1])


def _key_phrase(rng, tonic: int, minor: bool) -> str:
    name = f"{_NOTE[tonic]} {'minor' if minor else 'major'}"
    mood = "a dark minor key" if minor else "a bright major key"
    return _pick(rng, (name, f"the key of {name}", f"{mood}, {name}"))


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _instruments(rng, programs) -> str:
    """One name per distinct program, at most four (then "and more")."""
    names: list[str] = []
    for p in dict.fromkeys(programs):
        word = _pick(rng, INSTRUMENT_NAMES[p])
        if word not in names:
            names.append(word)
    return _join(names) if len(names) <= 4 else f"{', '.join(names[:4])} and {_pick(rng, ('more', 'others'))}"


def _articles(text: str) -> str:
    """ "a" before a vowel sound becomes "an" ("an urgent", "an atonal"). """
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def _changes(rng, arr, notes) -> str:
    """The first one or two arrangement changes, in words."""
    phrases = []
    ends = [s.start for s in arr.segments[2:]] + [arr.duration_s]
    for (_, kind), prev, seg, end in zip(arr.events[:2], arr.segments, arr.segments[1:], ends):
        if kind == "instrument":
            phrases.append(f"{_pick(rng, ('then', 'later'))} switching to {_instruments(rng, seg.programs)}")
        elif kind == "drums":
            phrases.append(_pick(rng, ("drums come in", "the drums enter")) if seg.drums
                           else _pick(rng, ("drums drop out", "the drums stop")))
        elif kind == "dynamics":
            up = seg.dynamics > prev.dynamics
            phrases.append(f"a sudden {_pick(rng, ('swell', 'crescendo', 'burst')) if up else _pick(rng, ('drop', 'hush', 'fall'))}"
                           f" to {DYNAMICS[seg.dynamics]}")
        else:
            tonic, minor = _segment_key(arr, notes, seg, end)
            phrases.append(f"a new section in {_NOTE[tonic]} {'minor' if minor else 'major'}")
    return f", {' and '.join(phrases)}" if phrases else ""


def caption(arr, notes, rng: np.random.Generator) -> str:
    """The caption of a `score_music.Arrangement` (`notes`: its work's): a full sentence, or
    for a share `SHORT_SHARE` of clips a few words (instruments, tempo word, feel, style)."""
    first = arr.segments[0]
    end = arr.segments[1].start if len(arr.segments) > 1 else arr.duration_s
    tonic, minor = _segment_key(arr, notes, first, end)
    feel = _pick(rng, _FEEL[(minor, arr.bpm >= 110)])
    if first.dynamics >= 4 and rng.random() < 0.6:
        feel = f"{_pick(rng, _LOUD)}, {feel}"
    elif first.dynamics <= 1 and rng.random() < 0.6:
        feel = f"{_pick(rng, _SOFT)}, {feel}"
    style = _pick(rng, arr.work.style or ("piece", "tune", "melody"))
    drums = f", with a {_pick(rng, DRUM_WORDS[first.drums])}" if first.drums else ""
    fields = {"feel": feel, "style": style, "key": _key_phrase(rng, tonic, minor), "inst": _instruments(rng, first.programs),
              "tempo": _pick(rng, tempo_words(arr.bpm)), "bpm": round(arr.bpm), "drums": drums,
              "changes": _changes(rng, arr, notes)}
    if rng.random() < SHORT_SHARE:
        short = dict(fields, inst=_pick(rng, INSTRUMENT_NAMES[first.programs[0]]),
                     feel=fields["feel"].split(", ")[-1], drums=drums.replace(", with a ", " with a "))
        return _articles(_pick(rng, _SHORT).format(**short))
    fields.update({k.capitalize(): str(fields[k])[:1].upper() + str(fields[k])[1:] for k in ("feel", "inst", "tempo")})
    return _articles(_pick(rng, _TEMPLATES).format(**fields))


# Every literal the caption code above writes besides its word tables.
_LITERALS = ("minor major the key of a dark minor key a bright major key then later switching to drums come in "
             "the drums enter drums drop out the drums stop a sudden swell crescendo burst drop hush fall to "
             "a new section in more others piece tune melody with a an and bpm")


def caption_words() -> set[str]:
    """Every word (lower case, letters only) a score caption can contain: the word tables, the
    templates, the corpus's style words. Prompts "with no caption word" are checked against it."""
    from .score_corpus import _FOLDERS

    texts = [_LITERALS, *_TEMPLATES, *_SHORT, *DYNAMICS, *_NOTE, *_LOUD, *_SOFT]
    texts += [w for names in INSTRUMENT_NAMES.values() for w in names]
    texts += [w for words in (*DRUM_WORDS.values(), *_FEEL.values()) for w in words]
    texts += [w for bpm in (60, 90, 110, 140, 170) for w in tempo_words(bpm)]
    texts += [w for _, styles in _FOLDERS.values() for w in styles]
    words = set()
    for t in texts:
        words |= set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", t).lower()))
    return words
