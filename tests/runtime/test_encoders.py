"""Weight-free frame encoders: features against plain loops, curves against known cuts and PySceneDetect,
block motion against known shifts; bundles and backends without an encoder component."""

from __future__ import annotations

import colorsys
import json

import numpy as np
import pytest

from v2m.cli.main import main
from v2m.core import curves
from v2m.core.errors import InputError
from v2m.runtime import encoders, video

RATE = 44100 / 3584


def _frames(n=3, h=20, w=28, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_rgb_to_hsv_matches_colorsys():
    f = _frames(1, 6, 7)[0]
    h, s, v = encoders.rgb_to_hsv(f)
    for y in range(6):
        for x in range(7):
            want = colorsys.rgb_to_hsv(*(f[y, x] / 255.0))
            got = (h[y, x], s[y, x], v[y, x])
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_cut_features_against_a_loop():
    """Histograms counted pixel by pixel, the thumbnail averaged block by block."""
    frames = _frames(2, 20, 28)
    enc = encoders.CutEncoder(bins=5, thumb=3, thumb_weight=0.7)
    got = enc.encode(frames)
    assert got.shape == (2, 3 * 5 + 9) and got.dtype == np.float32
    for n, f in enumerate(frames):
        hsv = [colorsys.rgb_to_hsv(*(p / 255.0)) for p in f.reshape(-1, 3)]
        want = []
        for ch in range(3):
            counts = np.zeros(5)
            for p in hsv:
                counts[min(int(p[ch] * 5), 4)] += 1
            want.append(np.sqrt(counts / counts.sum()))
        luma = f.astype(np.float64) @ [0.299, 0.587, 0.114]
        thumb = np.zeros((3, 3))
        for i in range(3):  # cell i holds rows r with r * 3 // 20 == i
            for j in range(3):
                rows = [r for r in range(20) if r * 3 // 20 == i]
                cols = [c for c in range(28) if c * 3 // 28 == j]
                thumb[i, j] = luma[np.ix_(rows, cols)].mean()
        thumb = thumb.ravel() - thumb.mean()
        want.append(0.7 * thumb / np.linalg.norm(thumb))
        np.testing.assert_allclose(got[n], np.concatenate(want), atol=2e-5)


def test_cut_features_of_a_flat_frame():
    f = np.full((1, 16, 16, 3), 90, dtype=np.uint8)
    out = encoders.CutEncoder().encode(f)
    assert np.isfinite(out).all() and np.linalg.norm(out) == pytest.approx(np.sqrt(3), rel=1e-5)


@pytest.mark.parametrize("shift", [(0, 0), (2, -3), (-4, 1), (3, 4)])
def test_block_motion_finds_a_known_shift(shift):
    """A smooth random texture moved by (dy, dx): every block away from the border reports it."""
    rng = np.random.default_rng(5)
    big = rng.random((90, 90))
    for _ in range(3):  # smooth, so SAD has one clear minimum
        big = (big + np.roll(big, 1, 0) + np.roll(big, 1, 1) + np.roll(big, -1, 0) + np.roll(big, -1, 1)) / 5
    dy, dx = shift
    prev = big[10:74, 10:74] * 255
    cur = big[10 - dy : 74 - dy, 10 - dx : 74 - dx] * 255  # cur[y, x] = prev[y - dy, x - dx]
    disp = encoders.block_motion(prev, cur, grid=8, radius=4)
    assert disp.shape == (8, 8, 2)
    np.testing.assert_array_equal(disp[1:-1, 1:-1], np.broadcast_to(shift, (6, 6, 2)))


def test_block_motion_still_frame_is_zero():
    flat = np.full((32, 32), 7.0)
    assert (encoders.block_motion(flat, flat, grid=4, radius=3) == 0).all()  # ties go to no motion


def _moving_square(n=40, turn=20, size=64):
    """A bright square on grey moving right, then (from frame `turn`) down."""
    frames = np.full((n, size, size, 3), 60, dtype=np.uint8)
    y, x = 20, 10
    for i in range(n):
        frames[i, y : y + 12, x : x + 12] = 230
        if i + 1 < turn:
            x += 2
        else:
            y += 2
    return frames


def test_motion_curve_peaks_where_the_motion_turns():
    frames = _moving_square()
    f = encoders.MotionEncoder(grid=8, radius=4).encode(frames)
    assert f.shape == (40, 129) and (f[0, :-1] == 0).all() and (f[:, -1] == 1).all()
    c = curves.event_curve(f, 40, fps=RATE, latent_rate=RATE, kernel=3)
    assert abs(int(np.argmax(c[2:])) + 2 - 20) <= 1  # frame 0 (no predecessor) excluded


def test_motion_state_crosses_batches_and_resets():
    frames = _moving_square()
    enc = encoders.MotionEncoder()
    whole = enc.encode(frames)
    enc.reset()
    parts = np.concatenate([enc.encode(frames[a:b]) for a, b in ((0, 7), (7, 8), (8, 40))])
    np.testing.assert_array_equal(parts, whole)
    enc.reset()
    np.testing.assert_array_equal(enc.encode(frames[:3]), whole[:3])  # first frame: no motion again


def _curve_of(path, kind, kernel=11):
    """The curve straight from the encoder (frames at the latent rate, 64 px)."""
    enc = encoders.make_frame_encoder(encoders.encoder_config(kind))
    reader = video.VideoReader(path)
    feats = np.concatenate([enc.encode(b) for b in reader.sample(RATE, 64)])
    return curves.event_curve(feats, curves.latent_length(reader.duration_s, RATE), RATE, RATE, kernel)


def test_cut_curve_peaks_at_known_cuts(make_video):
    cuts = (1.3, 3.1, 4.2, 6.6)
    path = make_video("cuts.mp4", duration_s=8.0, cuts=cuts)
    c = _curve_of(path, "cut")
    peaks = np.sort(curves.curve_peaks(c, len(cuts))) / RATE
    np.testing.assert_allclose(peaks, cuts, atol=0.1)


def test_cut_curve_agrees_with_scenedetect(make_video):
    """PySceneDetect's ContentDetector (the classical reference) finds the same cuts as the curve's peaks."""
    from v2m.eval.evaluate import detect_cuts

    pytest.importorskip("scenedetect")
    path = make_video("cuts.mp4", duration_s=7.0, cuts=(0.9, 2.6, 4.9))
    ref = detect_cuts(path)
    c = _curve_of(path, "cut")
    peaks = np.sort(curves.curve_peaks(c, len(ref))) / RATE
    assert len(ref) == 3
    np.testing.assert_allclose(peaks, ref, atol=0.1)


def test_encoder_config_and_factory():
    assert encoders.encoder_config("cut")["kind"] == "cut"
    assert encoders.is_weight_free({"kind": "motion"}) and not encoders.is_weight_free({"kind": "dinov2"})
    with pytest.raises(InputError, match="weight-free"):
        encoders.encoder_config("dinov2")
    with pytest.raises(Exception, match="backend"):
        encoders.make_frame_encoder({"kind": "dinov2"})
    with pytest.raises(InputError, match="too small"):
        encoders.CutEncoder(thumb=8).encode(np.zeros((1, 4, 4, 3), np.uint8))


# --- bundles without an encoder component --------------------------------------------------
@pytest.fixture(scope="module")
def cut_bundle(tmp_path_factory):
    from v2m.models.bundle import init_bundle

    return init_bundle("tiny", tmp_path_factory.mktemp("cutb") / "tiny-cut", seed=0, encoder="cut")


def test_weight_free_bundle_has_no_encoder(cut_bundle, short_video):
    from v2m.runtime import Pipeline

    assert not (cut_bundle / "encoder.safetensors").exists()
    assert json.loads((cut_bundle / "config.json").read_text())["encoder"]["kind"] == "cut"
    pipe = Pipeline.from_pretrained(cut_bundle, backend="torch")
    assert pipe.backend.encoder is None and pipe.frame_encoder.kind == "cut"
    res = pipe.generate(short_video.path, seed=1, steps=2)
    assert res.audio.shape[0] == 2 and np.isfinite(res.audio).all()
    np.testing.assert_allclose(res.curve, _curve_of(short_video.path, "cut", pipe.config.curve.kernel), atol=1e-6)


def test_encoder_override(tiny_bundle, short_video, capsys):
    """A DINOv2 bundle run with --encoder motion / cut; a weight-free bundle cannot be asked for DINOv2."""
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(tiny_bundle, backend="torch", encoder="cut")
    assert pipe.frame_encoder.kind == "cut" and pipe.encoder_config["kind"] == "cut"
    rc = main(["curve", str(short_video.path), "--model", str(tiny_bundle), "--device", "cpu", "--encoder",
               "motion", "--json"])
    assert rc == 0 and len(json.loads(capsys.readouterr().out)["curve"]) == 25


def test_dinov2_on_a_weight_free_bundle_is_one_line(cut_bundle, short_video, capsys):
    rc = main(["curve", str(short_video.path), "--model", str(cut_bundle), "--device", "cpu", "--encoder", "dinov2"])
    err = capsys.readouterr().err
    assert rc == 2 and "no dinov2 weights" in err and len(err.strip().splitlines()) == 1


def test_init_model_encoder_flag(tmp_path, capsys):
    assert main(["init-model", "--preset", "tiny", "--encoder", "motion", "-o", str(tmp_path / "m")]) == 0
    assert "motion encoder" in capsys.readouterr().out
    assert not (tmp_path / "m" / "encoder.safetensors").exists()


def test_weight_free_bundle_exports_without_encoder_graph(cut_bundle, tmp_path, short_video):
    """ONNX export skips the encoder graph; the ONNX Runtime backend runs the bundle and matches torch."""
    pytest.importorskip("onnxruntime")
    from v2m.export.exporter import export_bundle
    from v2m.runtime import Pipeline

    out = tmp_path / "onnx"
    res = export_bundle(cut_bundle, out, with_weights=True)
    assert not any("encoder" in g for g in res.graphs) and any(g.endswith("step") for g in res.graphs), res.graphs
    assert not (out / "encoder.safetensors").exists()
    ort_pipe = Pipeline.from_pretrained(out, backend="onnxruntime")
    torch_pipe = Pipeline.from_pretrained(out, backend="torch")
    a = ort_pipe.generate(short_video.path, seed=3, steps=3)
    b = torch_pipe.generate(short_video.path, seed=3, steps=3)
    np.testing.assert_allclose(a.latents, b.latents, atol=2e-4, rtol=1e-3)
