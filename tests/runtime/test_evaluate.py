"""Scene Cut Hit: the pure score, matching, report; CLI one-liners; the real detectors if installed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from v2m.runtime import evaluate
from v2m.runtime.cli import main
from v2m.runtime.evaluate import EvalReport, evaluate_folder, scene_cut_hit


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

    def missing(module):
        raise evaluate.MissingExtra(f"`v2m eval` needs {module}: pip install 'v2m-runtime[eval]'")

    monkeypatch.setattr(evaluate, "require_eval", missing)
    rc = main(["eval", str(tmp_path), "--videos", str(tmp_path)])
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
