"""Prompt following: the pair logic against a fake pipeline of known answers; free words are absent
from every caption of the demo corpus; one real run on the tiny bundle."""

import re
from types import SimpleNamespace

import numpy as np
import pytest

from v2m.eval import prompt_following as pf
from v2m.train import score_captions, synth_music


def test_follows_is_strict_and_signed():
    assert pf.follows({"tempo": 100, "centroid": 5}, {"tempo": 120, "centroid": 5}, {"tempo": 1, "centroid": -1}) == {
        "tempo": True, "centroid": False}  # a tie does not follow
    assert pf.follows({"onset_rate": 3.0}, {"onset_rate": 2.0}, {"onset_rate": -1}) == {"onset_rate": True}


class _FakePipe:
    """Audio whose 'tempo' is the prompt's length and 'centroid' its count of letter e: known answers."""

    def __init__(self):
        self.generated: list[tuple[str, int]] = []
        self.prepared = 0

    def prepare(self, video, request):
        self.prepared += 1
        return SimpleNamespace(request=request)

    def generate(self, video, prepared, request, profile_steps):
        self.generated.append((request.prompt, request.seed))
        p = request.prompt
        return SimpleNamespace(audio=np.array([len(p), p.count("e")], np.float64), sample_rate=1)


def test_prompt_following_with_known_answers():
    pairs = (pf.PromptPair("ab", "abcd", {"tempo": +1}),  # follows
             pf.PromptPair("ee", "e", {"centroid": +1}),  # does not
             pf.PromptPair("x", "xyz", {"tempo": +1, "centroid": +1}, "free"),  # centroid ties: does not
             pf.PromptPair("abcd", "e", {"tempo": -1}, "free"))  # follows; "abcd" generated once
    pipe = _FakePipe()
    got = pf.prompt_following(pipe, "v.mp4", pairs, seed=7,
                              measure=lambda audio, sr: {"tempo": audio[0], "centroid": audio[1]})
    assert got["pairs"] == 4 and got["fraction"] == 0.5
    assert got["by_kind"] == {"caption": 0.5, "free": 0.5}
    assert [r["follows"] for r in got["rows"]] == [True, False, False, True]
    assert pipe.prepared == 1  # the video is decoded once
    assert sorted(p for p, _ in pipe.generated) == sorted({"ab", "abcd", "ee", "e", "x", "xyz"})
    assert {s for _, s in pipe.generated} == {7}


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_free_words_are_absent_from_every_caption():
    vocab = set()
    for name in (*synth_music._NOTE_NAMES, *synth_music._NUMBERS, *synth_music._PATTERN_NAMES):
        vocab |= _words(name)
    vocab |= _words("slow medium fast bpm major minor groove in drums warm bright pad bass event events")
    for seed in range(3):  # the fixed words above are every word the captions use
        for i in range(100):
            assert _words(synth_music.caption(synth_music.clip_params(seed, i, 6.0))) <= vocab
    vocab |= score_captions.caption_words()  # the score corpus's captions (the paper recipe's demo)
    for p in pf.FREE_PAIRS:
        assert not (_words(p.a) | _words(p.b)) & vocab, (p, (_words(p.a) | _words(p.b)) & vocab)
    from v2m.eval.alignment import FREE_PROMPTS

    assert not set().union(*map(_words, FREE_PROMPTS)) & vocab
    for p in pf.CAPTION_PAIRS:
        assert (_words(p.a) | _words(p.b)) <= vocab


def test_prompt_following_on_the_tiny_bundle(tiny_bundle, short_video):
    pytest.importorskip("librosa")
    from v2m.runtime.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(tiny_bundle, backend="torch", device="cpu", precision="fp32")
    got = pf.prompt_following(pipe, short_video.path, pf.FREE_PAIRS[:1], seed=3, steps=2)
    row = got["rows"][0]
    assert set(row["measures_a"]) == {"tempo", "centroid", "onset_rate"}
    assert all(np.isfinite(v) for v in (*row["measures_a"].values(), *row["measures_b"].values()))
    assert got["fraction"] in (0.0, 1.0) and row["measures_a"] != row["measures_b"]
