"""Scene Cut Hit: the pure score, matching, report; CLI one-liners; the real detectors if installed."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest

from v2m.cli.main import main
from v2m.eval import evaluate
from v2m.eval.evaluate import EvalReport, evaluate_folder, scene_cut_hit


@pytest.mark.parametrize(
    ("cuts", "beats", "tol", "want"),
    [
        ([1.0, 2.0, 3.0], [1.1, 2.6, 2.9], 0.5, (2, 3)),  # 1.0 <- 1.1, 3.0 <- 2.9; 2.0 is 0.6 from 2.6
        ([1.0, 2.0], [1.5], 0.5, (2, 2)),  # the tolerance is inclusive
        ([1.0, 2.0], [], 0.5, (0, 2)),
        ([], [1.0], 0.5, (0, 0)),
        ([5.0], [0.0, 10.0], 0.5, (0, 1)),
        ([0.0, 10.0], [0.2], 0.25, (1, 2)),  # a single beat, cuts on both sides
        ([3.0, 1.0], [2.95, 1.04, 7.0], 0.05, (2, 2)),  # unsorted cuts
    ],
)
def test_scene_cut_hit(cuts, beats, tol, want):
    assert scene_cut_hit(cuts, beats, tol) == want


def _folders(tmp_path, short_video):
    vids, outs = tmp_path / "videos", tmp_path / "out"
    (vids / "a").mkdir(parents=True)
    outs.mkdir()
    for rel in ("a/clip.mp4", "still.mp4"):
        shutil.copy(short_video.path, vids / rel)
    for name in ("a__clip.wav", "still.mp4", "orphan.wav"):
        (outs / name).write_bytes(b"x")
    (outs / "summary.json").write_text("{}")
    return vids, outs


def test_evaluate_folder_injected(tmp_path, short_video):
    vids, outs = _folders(tmp_path, short_video)
    cuts = {"clip.mp4": [0.5, 1.25], "still.mp4": []}
    report = evaluate_folder(outs, vids, 0.1, cuts_fn=lambda v: cuts[v.name], beats_fn=lambda o: [0.45, 1.0])
    by = {v.video: v for v in report.videos}
    assert set(by) == {"a/clip.mp4", "still.mp4"}
    assert (by["a/clip.mp4"].hits, by["a/clip.mp4"].sch) == (1, 0.5)
    assert by["still.mp4"].sch is None and report.mean == 0.5  # no cuts: n/a, not in the mean
    data = json.loads(report.to_json())
    assert data["mean_sch"] == 0.5 and len(data["videos"]) == 2
    table = report.table()
    assert "n/a" in table and "0.500" in table
    assert EvalReport(0.5).mean is None


def test_eval_cli_errors(capsys, tmp_path, monkeypatch):
    rc = main(["eval", str(tmp_path / "nope"), "--videos", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err

    # Scene Cut Hit alone (--no-curves) without the [eval] extra: one line before any work
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in ("librosa", "scenedetect") else real(name, *a, **k))
    rc = main(["eval", str(tmp_path), "--videos", str(tmp_path), "--no-curves"])
    err = capsys.readouterr().err
    assert rc != 0 and err.strip().count("\n") == 0 and "pip install 'v2m-runtime[eval]'" in err


def test_eval_real_detectors(capsys, tmp_path, synth_video):
    """PySceneDetect finds the synthetic cuts; librosa tracks beats of a click track on them."""
    pytest.importorskip("librosa")
    pytest.importorskip("scenedetect")
    import soundfile as sf

    cuts = evaluate.detect_cuts(synth_video.path)
    assert len(cuts) == len(synth_video.cuts)
    assert np.allclose(cuts, synth_video.cuts, atol=0.1)
    vids, outs = tmp_path / "videos", tmp_path / "out"
    vids.mkdir()
    outs.mkdir()
    shutil.copy(synth_video.path, vids / "clip.mp4")
    sr, n = 22050, int(synth_video.duration_s * 22050)
    rng = np.random.default_rng(0)
    audio = 0.01 * rng.standard_normal(n).astype(np.float32)
    burst = 0.5 * rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300)  # a decaying noise hit
    for t in np.arange(0.0, synth_video.duration_s, 0.625):  # 96 bpm, a hit on every cut
        i = int(t * sr)
        audio[i : i + 2000] += burst[: n - i].astype(np.float32)
    sf.write(str(outs / "clip.wav"), audio, sr)
    rc = main(["eval", str(outs), "--videos", str(vids), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    assert json.loads(out)["mean_sch"] >= 2 / 3


def test_curve_plot(capsys, tiny_bundle, synth_video, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    rc = main(["curve", str(synth_video.path), "--model", str(tiny_bundle), "--device", "cpu", "--plot", str(png)])
    out = capsys.readouterr().out
    assert rc == 0 and png.is_file() and png.read_bytes()[:4] == b"\x89PNG" and "cuts from" in out


# --- curve correlation, cut hits, flatness ----------------------------------------------------
RATE = 44100 / 3584


def test_curve_correlation_and_cut_hits_analytic():
    t = np.arange(100)
    a = np.sin(t / 5.0)
    assert evaluate.curve_correlation(a, a) == pytest.approx(1.0)
    assert evaluate.curve_correlation(a, -a) == pytest.approx(-1.0)
    assert evaluate.curve_correlation(a, np.r_[a, np.zeros(20)]) == pytest.approx(1.0)  # common length
    assert evaluate.curve_correlation(a, np.ones(100)) is None  # a flat curve has no correlation
    curve = np.zeros(100)
    curve[[20, 50, 80]] = [3.0, 2.0, 1.0]  # peaks at 1.63, 4.06, 6.50 s
    cuts = [20 / RATE + 0.2, 50 / RATE - 0.3, 80 / RATE]  # within, outside, on the tolerance
    assert evaluate.cut_hits(curve, cuts, RATE, 0.25) == (2, 3)
    assert evaluate.cut_hits(curve, cuts[:1], RATE, 0.25) == (1, 1)  # k = 1: only the strongest peak
    assert evaluate.cut_hits(curve, [50 / RATE], RATE, 0.25) == (0, 1)  # ... which is not at 4.06 s
    assert evaluate.cut_hits(curve, [], RATE) == (0, 0)


def _chords(changes, duration=6.0, sr=22050):
    """Two alternating chords that switch at `changes` (seconds), a faint steady noise floor under them."""
    t = np.arange(int(duration * sr)) / sr
    which = np.searchsorted(np.asarray(changes), t, side="right") % 2
    a = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    b = sum(np.sin(2 * np.pi * f * t) for f in (196.0, 246.9, 293.7, 392.0))
    return (0.2 * np.where(which, b, a) + 1e-3 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)


def test_curve_measures_of_a_folder(tmp_path, make_video):
    """Music that changes on the cuts scores high; the same music changing elsewhere scores low."""
    import soundfile as sf

    from v2m.core import curves
    from v2m.runtime import encoders, music, video

    cuts = [1.5, 3.2, 4.6]
    vids, good, bad = tmp_path / "videos", tmp_path / "good", tmp_path / "bad"
    for d in (vids, good, bad):
        d.mkdir()
    make_video("v.mp4", duration_s=6.0, cuts=tuple(cuts)).rename(vids / "clip.mp4")
    sf.write(good / "clip.wav", _chords(cuts), 22050)
    sf.write(bad / "clip.wav", _chords([0.7, 2.4, 5.4]), 22050)

    def video_curve(path):
        enc = encoders.CutEncoder()
        reader = video.VideoReader(path)
        feats = np.concatenate([enc.encode(b) for b in reader.sample(RATE, 64)])
        return curves.event_curve(feats, curves.latent_length(reader.duration_s, RATE), RATE, RATE, 11)

    kw = dict(cuts_fn=lambda v: cuts, beats_fn=lambda o: [1.5], curve_fn=video_curve,
              music_fn=lambda a, sr, n: music.music_curve(a, sr, n, RATE, 11))
    rep, base = evaluate_folder(good, vids, **kw), evaluate_folder(bad, vids, **kw)
    v, b = rep.videos[0], base.videos[0]
    assert v.corr > 0.6 and v.cut_hit_rate == 1.0 and v.cut_hits == 3 and v.flatness < 0.05
    assert b.corr < 0.2 and b.cut_hit_rate <= 1 / 3
    table = evaluate.format_side_by_side(rep, base)
    assert "with curve" in table and "--no-curve" in table and f"{v.corr - b.corr:+.3f}" in table
    data = json.loads(rep.to_json())
    assert data["means"]["cut_hits"] == 1.0 and data["videos"][0]["corr"] == pytest.approx(v.corr)
    assert "corr" in rep.table() and "cuthit" in rep.table()


def test_beat_stereo_and_frechet_measures_of_a_folder(tmp_path, make_video):
    """Injected beats and motion beats give known BCS/BHS; anti-correlated channels cancel in the
    mono mix; music like the reference is closer to it (Frechet) than other music."""
    import soundfile as sf

    vids, outs, near, far = (tmp_path / d for d in ("videos", "out", "near", "far"))
    for d in (vids, outs, near, far):
        d.mkdir()
    make_video("v.mp4", duration_s=3.0, cuts=(1.5,)).rename(vids / "clip.mp4")
    mono = _chords([1.5], duration=3.0)
    sf.write(outs / "clip.wav", np.stack([mono, -mono], axis=1), 22050)  # (N, 2): right = -left
    sf.write(near / "ref.wav", _chords([1.0, 2.0], duration=3.0), 22050)
    sf.write(far / "ref.flac", (0.2 * np.random.default_rng(1).standard_normal(3 * 22050)).astype(np.float32), 22050)
    kw = dict(cuts_fn=lambda v: [1.5], beats_fn=lambda o: [0.5, 1.0, 1.5], motion_fn=lambda v: [0.55, 1.25],
              beat_tolerance=0.1, curve_fn=lambda v: np.linspace(0, 1, 37),
              music_fn=lambda a, sr, n: np.linspace(0, 1, n))
    rep = evaluate_folder(outs, vids, reference=near, **kw)
    v = rep.videos[0]
    assert (v.motion_beats, v.bcs, v.bhs) == (2, 1.5, 0.5)  # 0.55 hit by 0.5; 1.25 is 0.25 from any beat
    assert v.lr_corr == pytest.approx(-1.0) and v.mono_db < -60  # 16-bit rounding leaves -85 dB
    m = rep.means()
    assert m["beat_f1"] == pytest.approx(2 * 1.5 * 0.5 / 2.0) and m["frechet"] == rep.frechet
    assert 0 <= rep.frechet < evaluate_folder(outs, vids, reference=far, **kw).frechet
    data = json.loads(rep.to_json())
    assert data["means"]["bcs"] == 1.5 and data["reference"] == str(near) and data["videos"][0]["bhs"] == 0.5
    assert "BCS 1.500" in rep.table() and "Frechet distance" in rep.table() and "mono mix" in rep.table()
    assert "beat F1" in evaluate.format_side_by_side(rep, rep)


def test_eval_cli_reference_errors(capsys, tmp_path):
    """A missing or empty --reference folder: one line, exit 2, before the model loads."""
    (tmp_path / "empty").mkdir()
    for ref in ("nope", "empty"):
        rc = main(["eval", str(tmp_path), "--videos", str(tmp_path), "--reference", str(tmp_path / ref),
                   "--model", str(tmp_path / "no-such-bundle")])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "--reference" in err, err


def test_held_out_videos_vary_frame_rate_and_fade_their_cuts(tmp_path):
    """`make_cut_videos` with frame rates and fades: each file's rate is one asked for, the cut
    times are those of the plain set (a stream of their own), and a faded cut's middle frame is
    the two scenes blended half and half (an oracle from `_render` of each scene)."""
    import av

    from v2m.eval.alignment import make_cut_videos
    from v2m.runtime import synth

    plain = make_cut_videos(tmp_path / "plain", 4, seed=5, duration=(6.0, 7.0))
    varied = make_cut_videos(tmp_path / "varied", 4, seed=5, duration=(6.0, 7.0), fps=(30.0, 60.0), fades=1.0)
    assert [c for _, c in plain] == [c for _, c in varied]
    for path, _ in varied:
        with av.open(str(path)) as f:
            assert float(f.streams.video[0].average_rate) in (30.0, 60.0)
        assert "_fade" in path.name
    path = tmp_path / "fade.mp4"
    synth.make_test_video(path, duration_s=2.0, fps=10.0, size=(64, 48), cuts=(1.0,), fade_s=0.8,
                          options={"crf": "0"})
    with av.open(str(path)) as f:
        frames = [fr.to_ndarray(format="rgb24").astype(np.float32) for fr in f.decode(video=0)]
    mid = frames[10]  # t = 1.0 s: halfway through the fade
    want = 0.5 * synth._render(1.0, 0, 64, 48).astype(np.float32) + 0.5 * synth._render(1.0, 1, 64, 48).astype(np.float32)
    assert np.abs(mid - want).mean() < 4.0  # yuv420 chroma subsampling only
    hard = synth._render(1.0, 1, 64, 48).astype(np.float32)
    assert np.abs(mid - hard).mean() > 20.0
