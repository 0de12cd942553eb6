"""Curve edits (`v2m.runtime.curve_edit`): the arithmetic against hand-computed cases, the
readers, the request's checks, and, on the trained demo bundle, that a hit moves the music."""

from __future__ import annotations

import json

import numpy as np
import pytest

from v2m.core import curves
from v2m.core.errors import InputError
from v2m.runtime.curve_edit import (
    CurveEdit,
    parse_hit,
    parse_range,
    read_curve,
    read_hits,
    timecode_seconds,
)
from v2m.runtime.request import Request


def test_hit_adds_weight_times_the_strongest_change_at_the_nearest_sample():
    d = np.array([0.0, 0.1, 0.8, 0.2, 0.1])  # fps 2: samples at 0, 0.5, 1, 1.5, 2 s
    out = CurveEdit(hits=((1.6, 2.0),))(d, 2.0)
    np.testing.assert_allclose(out, [0.0, 0.1, 0.8, 0.2 + 2 * 0.8, 0.1])  # 1.6 s -> sample 3
    flat = CurveEdit(hits=((0.0, 1.0), (9.0, 1.0)))(np.zeros(3), 1.0)  # a still clip: the 0.5 floor; past the end: last
    np.testing.assert_allclose(flat, [0.5, 0.0, 0.5])


def test_suppress_flattens_to_the_lowest_value_and_hits_come_after():
    d = np.array([0.05, 0.6, 0.7, 0.3, 0.9])  # fps 1
    np.testing.assert_allclose(CurveEdit(suppress=((1.0, 2.0),))(d, 1.0), [0.05, 0.05, 0.05, 0.3, 0.9])
    out = CurveEdit(suppress=((1.0, 4.0),), hits=((2.0, 1.0),))(d, 1.0)
    np.testing.assert_allclose(out, [0.05, 0.05, 0.05 + 0.5, 0.05, 0.05])  # max 0.05 < floor 0.5


def test_given_curve_replaces_or_blends_standardized():
    d = np.array([0.0, 1.0, 0.0, 1.0])  # fps 1; std 0.5, mean 0.5 -> [-1, 1, -1, 1]
    pts = ((0.0, 0.0), (3.0, 6.0))  # 0, 2, 4, 6 at the samples -> standardized [-1.342, -0.447, 0.447, 1.342]
    g = np.array([-3, -1, 1, 3]) / np.sqrt(5)
    np.testing.assert_allclose(CurveEdit(points=pts)(d, 1.0), g)
    np.testing.assert_allclose(CurveEdit(points=pts, mix=0.25)(d, 1.0), 0.75 * np.array([-1, 1, -1, 1]) + 0.25 * g)
    held = CurveEdit(points=((1.0, 1.0), (2.0, 3.0)))(np.zeros(4), 1.0)  # held past both ends: 1, 1, 3, 3
    np.testing.assert_allclose(held, [-1, -1, 1, 1])


def test_event_curve_without_edit_is_unchanged_and_with_edit_is_the_edited_dissimilarity():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 8))
    base = curves.event_curve(f, 30, 8.0, 12.3046875, 7)
    z = curves.standardize(curves.dissimilarity(f))  # the definition written out
    np.testing.assert_allclose(base, curves.hann_smooth(curves.resample(z, 8.0, 30, 12.3046875), 7), atol=1e-6)
    e = CurveEdit(hits=((2.0, 3.0),))
    d = curves.dissimilarity(f)
    d[16] += 3 * max(d.max(), 0.5)
    z = curves.standardize(d)
    edited = curves.event_curve(f, 30, 8.0, 12.3046875, 7, edit=e)
    np.testing.assert_allclose(edited, curves.hann_smooth(curves.resample(z, 8.0, 30, 12.3046875), 7), atol=1e-6)
    assert abs(int(np.argmax(edited)) / 12.3046875 - 2.0) < 0.2


def test_parsers(tmp_path):
    assert parse_hit("12.5") == (12.5, 1.0) and parse_hit("12.5:2") == (12.5, 2.0)
    assert parse_hit("00:01:02.5@3") == (62.5, 3.0)
    assert parse_range("3-5.5") == (3.0, 5.5)
    assert timecode_seconds("01:00:02:12", fps=24) == 3602.5
    (tmp_path / "h.csv").write_text("time,weight\n1.5,2\n3\n")
    assert read_hits(tmp_path / "h.csv") == ((1.5, 2.0), (3.0, 1.0))
    (tmp_path / "h.json").write_text(json.dumps([1, [2, 3], {"time": 4.5, "weight": 0.5}]))
    assert read_hits(tmp_path / "h.json") == ((1.0, 1.0), (2.0, 3.0), (4.5, 0.5))
    edl = ("TITLE: Timeline 1\nFCM: NON-DROP FRAME\n\n"
           "001  001      V     C        01:00:02:00 01:00:02:01 01:00:02:00 01:00:02:01  \n"
           " |C:ResolveColorBlue |M:hit |D:1\n"
           "002  001      V     C        01:00:05:12 01:00:05:13 01:00:05:12 01:00:05:13  \n")
    (tmp_path / "m.edl").write_text(edl)
    np.testing.assert_allclose(read_hits(tmp_path / "m.edl"), [(2.0, 1.0), (5.48, 1.0)])  # 12 frames at 25 fps
    (tmp_path / "c.csv").write_text("t,v\n0,0\n2,1\n")
    assert read_curve(tmp_path / "c.csv") == ((0.0, 0.0), (2.0, 1.0))
    (tmp_path / "c.json").write_text(json.dumps({"curve": [0, 1, 0], "latent_rate": 2.0}))
    assert read_curve(tmp_path / "c.json") == ((0.0, 0.0), (0.5, 1.0), (1.0, 0.0))


@pytest.mark.parametrize("bad", ["x", "-1", "2:0", "2:nan"])
def test_bad_hit_is_one_line(bad):
    with pytest.raises(InputError):
        parse_hit(bad)


@pytest.mark.parametrize("fields", [dict(hits=((1.0, -1.0),)), dict(suppress=((5.0, 2.0),)), dict(curve_mix=0.5),
                                    dict(curve_points=((0, 1), (2, 3)), curve_mix=1.5), dict(duration=0.0),
                                    dict(duration=4000.0), dict(loop=1), dict(curve_points=((2, 1), (1, 3)))])
def test_request_checks_the_edits(fields):
    with pytest.raises(InputError):
        Request(**fields)


def test_request_lists_become_tuples():
    r = Request(hits=[[1, 2]], suppress=[(1, 2)])
    assert r.hits == ((1, 2),) and r.curve_edit() == CurveEdit(hits=((1, 2),), suppress=((1, 2),))
    assert Request().curve_edit() is None


@pytest.fixture(scope="module")
def demo_pipe():
    from v2m.runtime import Pipeline

    return Pipeline.from_pretrained("demo", backend="onnxruntime")


def test_variant_recomputes_the_curve_from_the_kept_dissimilarities(demo_pipe, synth_video):
    p = demo_pipe.prepare(synth_video.path, Request(seed=1))
    v = demo_pipe.variant(p, hits=((4.4, 2.0),))
    direct = demo_pipe.prepare(synth_video.path, Request(seed=1, hits=((4.4, 2.0),)))
    np.testing.assert_array_equal(v.curve, direct.curve)
    back = demo_pipe.variant(v, hits=())
    np.testing.assert_allclose(back.curve, p.curve, atol=1e-6)
    assert not np.allclose(v.curve, p.curve)


def test_a_hit_moves_the_music_curves_peak_there(demo_pipe, make_video):
    """Measured on the trained demo bundle: an 8 s clip cut at 2 s; without a hit the music's
    strongest event is not near 6 s, with a hit there (weight 3) it is within 0.5 s of it."""
    from v2m.runtime.music import music_curve

    cfg = demo_pipe.config
    video = make_video("cut2.mp4", duration_s=8.0, fps=24.0, size=(160, 120), cuts=(2.0,))
    p = demo_pipe.prepare(video, Request(prompt="medium 120 bpm major groove, backbeat drums, warm pad, bass", seed=3))
    hit = demo_pipe.variant(p, hits=((6.0, 3.0),))
    peaks = []
    for item, s in zip([p, hit], demo_pipe.sample([p, hit])):
        audio = demo_pipe.render(item, s)
        mc = music_curve(audio, cfg.audio.sample_rate, item.length, cfg.latent_rate, cfg.curve.kernel)
        peaks.append(curves.curve_peaks(mc, 1)[0] / cfg.latent_rate)
    assert abs(peaks[0] - 6.0) > 0.5, peaks
    assert abs(peaks[1] - 6.0) <= 0.5, peaks


def test_cli_curve_shows_the_edited_curve(synth_video, tmp_path, capsys):
    """`v2m curve --hit --suppress --json`: the curve `generate` would use (same request fields)."""
    from v2m.cli.main import main

    args = ["curve", str(synth_video.path), "--model", "demo", "--backend", "onnxruntime", "--json"]
    assert main(args) == 0
    plain = np.array(json.loads(capsys.readouterr().out)["curve"])
    assert main([*args, "--hit", "4.4:3", "--suppress", "1-3"]) == 0
    res = json.loads(capsys.readouterr().out)
    edited = np.array(res["curve"])
    rate = res["latent_rate"]
    assert abs(np.argmax(edited) / rate - 4.4) < 0.2 and abs(np.argmax(plain) / rate - 4.4) > 0.3
    assert main([*args, "--curve-mix", "0.5"]) == 2  # a mix without a curve file
    assert "--curve-file" in capsys.readouterr().err
