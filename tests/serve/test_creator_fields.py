"""`v2m serve`'s creator form fields (curve edits, loop, candidates, duration, prompt=auto): parsed into
the `GenerateForm`, checked at the edge; the header encoding of a prompt."""

from __future__ import annotations

import urllib.parse

import pytest

from v2m.core.errors import InputError
from v2m.serve.config import GENERATE_FIELDS, header_safe, parse_generate_fields


def test_creator_fields_reach_the_request():
    req = parse_generate_fields({"hits": "2.5, 8:2", "suppress": "3-5", "curve": "[[0, 0], [4, 1]]",
                                 "curve_mix": "0.5", "loop": "true"}, 100).request
    assert req.hits == ((2.5, 1.0), (8.0, 2.0)) and req.suppress == ((3.0, 5.0),)
    assert req.curve_points == ((0.0, 0.0), (4.0, 1.0)) and req.curve_mix == 0.5 and req.loop is True
    assert {"hits", "curve", "curve_mix", "suppress", "loop"} <= set(GENERATE_FIELDS)


@pytest.mark.parametrize("fields", [{"hits": "x"}, {"hits": "2:-1"}, {"suppress": "5-3"}, {"curve": "[1, 2"},
                                    {"curve": "[[0, 1]]"}, {"curve_mix": "0.5"}, {"loop": "maybe"},
                                    {"curve": "[[0, 0], [1, 1]]", "curve_mix": "2"}])
def test_bad_creator_fields_are_422(fields):
    with pytest.raises(InputError):
        parse_generate_fields(fields, 100)


def test_candidates_duration_and_auto_prompt_fields():
    f = parse_generate_fields({"candidates": "3", "keep_candidates": "yes", "prompt": " auto ", "seed": "4"}, 100)
    assert (f.candidates, f.keep_candidates, f.auto_prompt, f.request.prompt, f.fmt) == (3, True, True, "", "mp4")
    f = parse_generate_fields({"duration": "2.5", "prompt": "slow ambient"}, 100, has_video=False)
    assert (f.request.duration, f.fmt, f.candidates, f.auto_prompt) == (2.5, "wav", 1, False)
    assert parse_generate_fields({"duration": "2", "format": "flac"}, 100, has_video=False).fmt == "flac"
    assert parse_generate_fields({"duration": "900"}, 100, has_video=False, max_duration_s=0).request.duration == 900


@pytest.mark.parametrize("fields, has_video", [
    ({"candidates": "0"}, True), ({"candidates": "9"}, True), ({"candidates": "2.5"}, True),
    ({"keep_candidates": "1"}, True), ({"candidates": "2", "keep_candidates": "x"}, True),
    ({"candidates": "2", "seed": str(2**63 - 1)}, True), ({"duration": "2"}, True), ({"duration": "inf"}, False),
    ({"duration": "-1"}, False), ({"duration": "601"}, False), ({"duration": "2", "format": "mkv"}, False),
    ({"duration": "2", "prompt": "auto"}, False), ({"duration": "2", "keep_audio": "-6"}, False),
])
def test_bad_candidate_and_duration_fields(fields, has_video):
    with pytest.raises(InputError):
        parse_generate_fields(fields, 100, has_video=has_video, max_candidates=8, max_duration_s=600)


@pytest.mark.parametrize("text", ["fast 120 bpm minor groove", "  edges  ", "naïve\nline\r\x00end", "100% ok", "日本の音楽", ""])
def test_header_safe_round_trips(text):
    v = header_safe(text)
    assert v == v.strip() and all(32 <= ord(ch) < 127 for ch in v)
    assert urllib.parse.unquote(v) == text
