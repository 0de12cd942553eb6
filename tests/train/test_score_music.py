"""The score corpus: scores played by FluidSynth, seeded, stereo, captioned, with audible events."""

from __future__ import annotations

import re

import numpy as np
import pytest

from v2m.core import curves
from v2m.core.errors import InputError
from v2m.runtime.music import music_curve
from v2m.train import score_captions, score_music
from v2m.train.data import ScoreSource, open_source

music21 = pytest.importorskip("music21", reason="the score corpus needs music21 (pip install music21)")
_WHY = score_music.fluidsynth_available()
needs_fluidsynth = pytest.mark.skipif(_WHY is not None, reason=_WHY or "")
RATE = 44100 / 3584
# (seed, index) of corpus clips whose works parse in well under a second (folk tunes, a short
# Schoenberg piece): the notes cache is a fresh directory in these tests
CHEAP = [(1, 0), (1, 3), (1, 2)]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("V2M_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "v2m-cache"))


def _write_midi(path, shift: int = 0) -> None:
    """Three parts (melody, chords, bass), 32 quarter notes, C major (A minor with shift=9 and minor)."""
    from music21 import chord, note, stream

    melody, harmony, bass = stream.Part(), stream.Part(), stream.Part()
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    for k in range(32):
        melody.append(note.Note(72 + scale[(k * 3) % 8] + shift, quarterLength=1))
    for k in range(8):
        root = (0, 5, 7, 0)[k % 4] + shift
        harmony.append(chord.Chord([60 + root, 64 + root, 67 + root], quarterLength=4))
        bass.append(note.Note(36 + root, quarterLength=2))
        bass.append(note.Note(43 + root, quarterLength=2))
    score = stream.Score([melody, harmony, bass])
    score.write("midi", fp=str(path))


@pytest.fixture
def midi_folder(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    _write_midi(folder / "tune_a.mid")
    _write_midi(folder / "tune_b.mid", shift=2)
    return folder


def _stereo(audio: np.ndarray) -> tuple[float, float]:
    """(L/R correlation, mono mix power over the channels' mean power in dB)."""
    left, right = audio.astype(np.float64)
    mono = (left + right) / 2
    db = 10 * np.log10(np.mean(mono**2) / ((np.mean(left**2) + np.mean(right**2)) / 2))
    return float(np.corrcoef(left, right)[0, 1]), float(db)


# --- pure functions: no FluidSynth needed ----------------------------------------------------------
def test_key_estimate_on_scales():
    c_major = np.array([60, 62, 64, 65, 67, 69, 71, 72, 60, 64, 67])
    assert score_captions.estimate_key(c_major, np.ones(c_major.size)) == (0, False)
    a_minor = np.array([57, 59, 60, 62, 64, 65, 68, 69, 57, 60, 64, 57])  # harmonic minor, tonic triad stressed
    assert score_captions.estimate_key(a_minor, np.ones(a_minor.size)) == (9, True)
    d_major = c_major + 2
    assert score_captions.estimate_key(d_major, np.ones(d_major.size)) == (2, False)


def test_mono_safe_narrows_only_a_wide_mix():
    rng = np.random.default_rng(0)
    mid, side = rng.standard_normal(44100), rng.standard_normal(44100)
    wide = np.stack([mid + 2 * side, mid - 2 * side])  # correlation (1 - 4) / (1 + 4) = -0.6
    corr, db = _stereo(wide)
    assert corr < -0.5 and db < -6
    corr, db = _stereo(score_music.mono_safe(wide))
    assert corr == pytest.approx(1 / 3, abs=0.03) and db > -2.0
    narrow = np.stack([mid + 0.3 * side, mid - 0.3 * side])
    assert np.array_equal(score_music.mono_safe(narrow), narrow)


def test_tempo_words_cover_the_range():
    assert score_captions.tempo_words(60)[0] == "slow" and score_captions.tempo_words(169)[0] == "fast"
    assert "brisk" in score_captions.tempo_words(140) and "laid-back" in score_captions.tempo_words(90)


def test_midi_folder_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        score_music.works(tmp_path / "nope")
    with pytest.raises(InputError, match="no MIDI files"):
        score_music.works(tmp_path)
    with pytest.raises(InputError, match="--corpus scores or mix"):
        open_source("synth", midi_folder=str(tmp_path))


def test_arrangements_follow_the_spec(midi_folder):
    for i in range(40):
        a = score_music.arrange(5, i, 8.0, midi_folder)
        times = [t for t, _ in a.events]
        assert 1 <= len(times) and times == sorted(times)
        assert all(b - a_ >= 0.7 for a_, b in zip(times, times[1:])), times
        assert all(0.5 - 1e-9 <= t <= 7.5 + 1e-9 for t in times)
        assert 60 <= a.bpm <= 170 and len(a.segments) == len(a.events) + 1
        for (t, kind), prev, seg in zip(a.events, a.segments, a.segments[1:]):
            assert seg.start == t
            if kind == "instrument":  # every part changes family
                assert all(score_music._PROGRAMS[p][0] != score_music._PROGRAMS[q][0]
                           for p, q in zip(prev.programs, seg.programs))
            elif kind == "drums":
                assert (prev.drums is None) != (seg.drums is None)
            elif kind == "dynamics":
                assert abs(seg.dynamics - prev.dynamics) >= 2
            else:
                assert seg.transpose != prev.transpose
    assert score_music.arrange(5, 3, 8.0, midi_folder) == score_music.arrange(5, 3, 8.0, midi_folder)


# --- rendered: FluidSynth ------------------------------------------------------------------------------
@needs_fluidsynth
def test_corpus_clips_are_deterministic():
    seed, i = CHEAP[0]
    a, b = score_music.make_clip(seed, i, 2.0), score_music.make_clip(seed, i, 2.0)
    assert np.array_equal(a.audio, b.audio) and a.caption == b.caption and a.events == b.events
    assert a.audio.shape == (2, 88200) and a.audio.dtype == np.float32
    assert np.abs(a.audio).max() == pytest.approx(0.9, abs=1e-6)
    assert a.arrangement.work.ref.startswith("corpus:")


@needs_fluidsynth
def test_midi_clips_deterministic_and_seed_dependent(midi_folder):
    a = score_music.make_clip(0, 1, 2.0, midi_folder)
    b = score_music.make_clip(0, 1, 2.0, midi_folder)
    c = score_music.make_clip(1, 1, 2.0, midi_folder)
    assert np.array_equal(a.audio, b.audio) and a.caption == b.caption
    assert not np.array_equal(a.audio, c.audio)
    assert np.abs(a.audio).max() == pytest.approx(0.9, abs=1e-6)


@needs_fluidsynth
def test_stereo_is_real_and_mono_safe(midi_folder):
    clips = [score_music.make_clip(s, i, 2.0) for s, i in CHEAP]
    clips += [score_music.make_clip(0, i, 2.0, midi_folder) for i in range(3)]
    for clip in clips:
        corr, db = _stereo(clip.audio)
        assert 0.2 <= corr < 0.999, (clip.arrangement.work.ref, corr)  # correlated, yet two channels
        assert db >= -3.0, (clip.arrangement.work.ref, db)


@needs_fluidsynth
def test_captions_name_the_rendered_instruments_and_tempo(midi_folder):
    clips = [score_music.make_clip(s, i, 2.0) for s, i in CHEAP[:2]]
    clips += [score_music.make_clip(2, i, 2.0, midi_folder) for i in range(4)]
    for clip in clips:
        arr, cap = clip.arrangement, clip.caption.lower()
        names = {n.lower() for p in arr.segments[0].programs for n in score_captions.INSTRUMENT_NAMES[p]}
        assert any(n in cap for n in names), cap
        short = len(cap.split()) <= 10  # a short caption (SHORT_SHARE) names no bpm
        assert short or f"{round(arr.bpm)} bpm" in cap, cap
        assert any(w in cap for w in score_captions.tempo_words(arr.bpm)) or short, cap
    assert len({c.caption.split()[0] for c in clips}) > 1  # not one template


def test_a_share_of_captions_is_short_and_says_what_was_rendered(monkeypatch):
    """Short captions (a few words, as people type) for about SHORT_SHARE of the clips, each
    naming the first instrument; the rest are full sentences with the bpm."""
    from types import SimpleNamespace as NS

    monkeypatch.setattr(score_captions, "_segment_key", lambda *a: (9, False))  # A major, no notes needed
    seg = NS(programs=[73, 42], drums=None, dynamics=3, start=0.0)
    arr = NS(segments=[seg], duration_s=4.0, bpm=140.0, events=[], work=NS(style=("folk tune",)))
    caps = [score_captions.caption(arr, None, np.random.default_rng(i)) for i in range(400)]
    short = [c for c in caps if "bpm" not in c.lower()]
    assert abs(len(short) / len(caps) - score_captions.SHORT_SHARE) < 0.08
    assert all(len(c.split()) <= 10 and "flute" in c and "cello" not in c for c in short), short[:5]
    assert all("140 bpm" in c.lower() and "cello" in c for c in caps if c not in short)
    assert len(set(short)) > 10  # varied words and templates
    words = score_captions.caption_words()  # complete: what "a word no caption has" is checked against
    assert all(set(re.findall(r"[a-z]+", c.lower())) <= words for c in caps)


@needs_fluidsynth
def test_events_are_audible(midi_folder):
    """The music curve peaks near the events (bench/bench_score_corpus.py, 20 corpus clips of
    12 s: 70% of events within 0.25 s of one of the k strongest peaks; chance is about 20%).
    Here 6 clips of 8 s from the MIDI folder, at least 50%."""
    hits = total = 0
    for i in range(6):
        clip = score_music.make_clip(3, i, 8.0, midi_folder)
        c = music_curve(clip.audio, 44100, kernel=11)
        events = [t for t, _ in clip.events]
        peaks = curves.curve_peaks(c, len(events)) / RATE
        hits += sum(any(abs(p - t) <= 0.25 for p in peaks) for t in events)
        total += len(events)
    assert total >= 6 and hits / total >= 0.5, (hits, total)


@needs_fluidsynth
def test_score_source(midi_folder):
    src = ScoreSource(seed=0, count=3, duration_s=2.0, midi_folder=str(midi_folder))
    audio, caption, events = src.clip(2)
    assert audio.shape == (2, 88200) and caption and all(isinstance(t, float) for t in events)
    d = src.describe()
    assert d["kind"] == "scores" and d["midi"]["files"] == ["tune_a.mid", "tune_b.mid"]
    assert src.resized(7, 5, 3.0) == ScoreSource(7, 5, 3.0, str(midi_folder))
    mix = open_source("mix", seed=0, count=4, duration_s=2.0, midi_folder=str(midi_folder))
    assert mix.clip(1)[1] == src.clip(0)[1]  # odd clips: the score corpus
    assert mix.clip(0)[2] is not None and len(mix) == 4


def test_cli_refuses_midi_without_the_score_corpus(tmp_path, capsys):
    pytest.importorskip("torch")
    from v2m.cli.main import main

    rc = main(["train", "autoencoder", "-o", str(tmp_path / "ae"), "--midi", str(tmp_path), "--preset", "tiny"])
    assert rc == 2 and "--corpus scores or mix" in capsys.readouterr().err
    assert not (tmp_path / "ae").exists()
