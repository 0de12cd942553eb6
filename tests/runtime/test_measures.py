"""The papers' measures against known answers: beat lists, Gaussians with a closed-form distance,
an eigh-based Frechet distance, analytic stereo pairs, tones of known centroid."""

import numpy as np
import pytest

from v2m.eval import measures as m


@pytest.mark.parametrize("music, motion, tol, want", [
    ([1.0, 2.0, 3.0, 4.0], [1.05, 2.2, 3.0], 0.1, (4, 3, 2, 4 / 3, 2 / 3)),  # 2.2 is 0.2 from 2.0: a miss
    ([1.0], [0.9, 1.1, 5.0], 0.1, (1, 3, 2, 1 / 3, 2 / 3)),  # one music beat may hit two motion beats (inclusive)
    ([], [1.0, 2.0], 0.1, (0, 2, 0, 0.0, 0.0)),
    ([1.0, 2.0], [], 0.1, (2, 0, 0, None, None)),  # no motion beats: n/a
    ([0.5, 1.5, 2.5], [3.0], 0.5, (3, 1, 1, 3.0, 1.0)),  # past the last music beat, within tolerance
    ([2.0, 0.0], [-0.2, 1.0], 0.25, (2, 2, 1, 1.0, 0.5)),  # unsorted music beats
])
def test_beat_alignment_known_answers(music, motion, tol, want):
    s = m.beat_alignment(music, motion, tol)
    assert (s.music, s.motion, s.hits) == want[:3]
    for got, exp in zip((s.bcs, s.bhs), want[3:]):
        assert got == (None if exp is None else pytest.approx(exp))


def test_beat_alignment_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        music, motion = rng.uniform(0, 10, rng.integers(0, 30)), rng.uniform(0, 10, rng.integers(1, 30))
        hits = sum(any(abs(b - k) <= 0.1 for b in music) for k in motion)
        s = m.beat_alignment(music, motion, 0.1)
        assert s.hits == hits and s.bhs == pytest.approx(hits / len(motion))


def test_beat_summary_f1_of_means():
    scores = [m.BeatAlignment(4, 2, 1, 2.0, 0.5), m.BeatAlignment(1, 2, 2, 0.5, 1.0), m.BeatAlignment(3, 0, 0, None, None)]
    got = m.beat_summary(scores)
    assert got["bcs"] == pytest.approx(1.25) and got["bhs"] == pytest.approx(0.75)
    assert got["beat_f1"] == pytest.approx(2 * 1.25 * 0.75 / 2.0)
    assert m.beat_summary([]) == {"bcs": None, "bhs": None, "beat_f1": None}


def test_motion_beats_are_the_maxima_above_the_mean():
    rate = 10.0
    t = np.arange(60)
    curve = np.cos(2 * np.pi * t / 12)  # maxima at 12, 24, 36, 48 (z > 0); the ends (0, 59) are no beats
    curve[30] = -0.5  # a local maximum below the mean: not a beat
    curve[39] = 0.9  # 3 frames from 36 (under 4): the higher one (36) wins
    np.testing.assert_allclose(m.motion_beats(curve, rate), np.array([12, 24, 36, 48]) / rate)


def test_motion_curve_of_a_synthetic_video(make_video):
    """The moving square's vertical swing turns at 0.5, 1.5, 2.5 s: the motion curve has beats near them."""
    video = make_video("motion.mp4", duration_s=3.0, cuts=())
    curve = m.motion_curve(video, 44100 / 3584, kernel=5)
    assert curve.shape == (37,) and np.isfinite(curve).all() and curve.std() > 0
    beats = m.motion_beats(curve, 44100 / 3584)
    assert len(beats) >= 1 and all(0 <= b <= 3.0 for b in beats)


def _eigh_frechet(mu1, s1, mu2, s2):
    """Independent: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2), both square roots by eigh."""
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(root @ s2 @ root)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(lam, 0, None))))


def test_frechet_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert m.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == pytest.approx(9 + 1)
    # commuting (diagonal) covariances, then both rotated by one orthogonal Q: the distance is unchanged
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    want = 1 + 4 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert m.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    got = m.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(want, rel=1e-9)
    s = np.diag(a)
    assert m.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("dim", [2, 7, 44])
def test_frechet_against_eigh(dim):
    rng = np.random.default_rng(dim)
    x, y = rng.normal(size=(300, dim)), rng.normal(size=(300, dim)) @ rng.normal(size=(dim, dim)) * 0.5 + 1.0
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    got = m.frechet_distance(x.mean(0), s1, y.mean(0), s2)
    assert got == pytest.approx(_eigh_frechet(x.mean(0), s1, y.mean(0), s2), rel=1e-7, abs=1e-9)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched"):
        m.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_gaussian_stats_and_set_frechet():
    mu, cov = m.gaussian_stats(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]]))
    np.testing.assert_allclose(mu, [2.0, 4.0])
    np.testing.assert_allclose(cov, [[4.0, 7.0], [7.0, 13.0]])
    sr = 22050
    t = np.arange(sr) / sr
    rng = np.random.default_rng(3)
    tone = lambda f: (0.3 * np.sin(2 * np.pi * f * t) + 1e-3 * rng.normal(size=t.size), sr)
    same = m.set_frechet([tone(440.0)], [tone(440.0)])
    other = m.set_frechet([tone(440.0)], [tone(1900.0)])
    assert 0 <= same < 0.5 < other
    assert m.frame_features(*tone(440.0)).shape[1] == 44


def test_spectral_centroid_of_tones():
    sr = 16000
    t = np.arange(sr) / sr
    assert m.spectral_centroid(np.sin(2 * np.pi * 1000 * t), sr) == pytest.approx(1000, rel=0.01)
    # two tones of equal power: the centroid is their mean
    two = np.sin(2 * np.pi * 500 * t) + np.sin(2 * np.pi * 2500 * t)
    assert m.spectral_centroid(np.stack([two, two]), sr) == pytest.approx(1500, rel=0.01)


def test_tempo_and_onset_rate_of_a_click_track():
    pytest.importorskip("librosa")
    sr = 22050
    rng = np.random.default_rng(5)
    y = 0.01 * rng.standard_normal(8 * sr).astype(np.float32)
    burst = 0.5 * rng.standard_normal(2000) * np.exp(-np.arange(2000) / 300)  # a decaying noise hit
    for k in range(16):  # 120 BPM: a hit every 0.5 s
        i = int(k * 0.5 * sr)
        y[i:i + 2000] += burst.astype(np.float32)
    got = m.prompt_measures(y, sr)
    assert got["tempo"] == pytest.approx(120, rel=0.05)
    assert got["onset_rate"] == pytest.approx(2.0, abs=0.3)


@pytest.mark.parametrize("mix, corr, db", [
    ("same", 1.0, 0.0), ("opposite", -1.0, None), ("independent", 0.0, -10 * np.log10(2)),
])
def test_stereo_measures(mix, corr, db):
    rng = np.random.default_rng(4)
    left = rng.normal(size=200_000)
    right = {"same": left, "opposite": -left, "independent": rng.normal(size=left.size)}[mix]
    got = m.stereo_measures(np.stack([left, right]))
    assert got["lr_corr"] == pytest.approx(corr, abs=0.01)
    if db is None:
        assert got["mono_db"] < -100  # they cancel
    else:
        assert got["mono_db"] == pytest.approx(db, abs=0.05)
    assert m.stereo_measures(left) == {"lr_corr": None, "mono_db": None}
