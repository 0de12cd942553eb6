"""The numpy event-curve reference: pinned conventions on hand-checked examples."""

import math

import numpy as np
import pytest

from v2m.runtime import curves


def test_dissimilarity_hand_checked():
    f = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, -1.0]])
    # same direction -> 0; orthogonal -> 1; opposite -> 2; first is 0 by convention
    np.testing.assert_allclose(curves.dissimilarity(f), [0.0, 0.0, 1.0, 2.0], atol=1e-12)


def test_zero_vector_uses_floored_denominator():
    f = np.array([[1.0, 0.0], [0.0, 0.0]])
    # cos = 0 / max(0, 1e-8) = 0, so d = 1 rather than NaN
    np.testing.assert_allclose(curves.dissimilarity(f), [0.0, 1.0])


def test_standardize_population_std():
    z = curves.standardize(np.array([0.0, 0.0, 1.0]))
    # mean 1/3, population std sqrt(2)/3
    np.testing.assert_allclose(z, [-1 / math.sqrt(2), -1 / math.sqrt(2), math.sqrt(2)], atol=1e-12)
    assert z.std() == pytest.approx(1.0)


def test_standardize_flat_below_floor():
    np.testing.assert_array_equal(curves.standardize(np.array([0.0, 1e-7, 0.0])), 0.0)


def test_resample_is_time_based_and_clamped():
    z = np.array([0.0, 1.0])  # samples at 0 s and 0.5 s (fps 2)
    out = curves.resample(z, fps=2.0, length=4, latent_rate=4.0)  # latent frames at 0, .25, .5, .75 s
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 1.0])


def test_hann_window_matches_numpy_and_sums_to_one():
    w = curves.hann_window(31)
    np.testing.assert_allclose(w, np.hanning(31) / np.hanning(31).sum())
    assert w.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        curves.hann_window(4)


def test_hann_smooth_small_kernels():
    x = np.array([0.0, 0.0, 4.0, 0.0, 0.0])
    np.testing.assert_allclose(curves.hann_smooth(x, 3), x)  # hanning(3) = [0, 1, 0]
    # hanning(5) / sum = [0, .25, .5, .25, 0], edge-replicate padding
    np.testing.assert_allclose(curves.hann_smooth(x, 5), [0.0, 1.0, 2.0, 1.0, 0.0])
    y = np.array([1.0, 3.0])
    np.testing.assert_allclose(curves.hann_smooth(y, 5), [0.25 + 0.5 + 0.75, 0.25 + 1.5 + 0.75])


def test_event_curve_length_and_dtype():
    rng = np.random.default_rng(0)
    c = curves.event_curve(rng.standard_normal((40, 8)), 57, fps=10.0, latent_rate=12.3)
    assert c.shape == (57,) and c.dtype == np.float32


@pytest.mark.parametrize("t", [1, 2])
def test_event_curve_tiny_inputs(t):
    f = np.arange(1, 2 * t + 1, dtype=np.float64).reshape(t, 2)
    c = curves.event_curve(f, 10, fps=5.0, latent_rate=12.3)
    if t == 1:
        np.testing.assert_array_equal(c, 0.0)
    else:
        # d = [0, x] -> z = [-1, 1]; interpolated over 0..0.2 s then clamped at 1, then smoothed
        z = curves.resample(np.array([-1.0, 1.0]), 5.0, 10, 12.3)
        np.testing.assert_allclose(c, curves.hann_smooth(z, 31), atol=1e-6)


def test_constant_features_give_flat_curve():
    c = curves.event_curve(np.ones((30, 16)), 40, fps=12.3, latent_rate=12.3)
    np.testing.assert_array_equal(c, 0.0)


def test_cut_produces_peak_at_the_cut():
    rate = 44100 / 3584
    f = np.zeros((123, 4))
    f[:60, 0] = 1.0
    f[60:, 1] = 1.0  # cut between samples 59 and 60 (4.8 s)
    f += 1e-3 * np.random.default_rng(1).standard_normal(f.shape)
    c = curves.event_curve(f, 123, fps=rate, latent_rate=rate)
    assert abs(int(np.argmax(c)) - 60) <= 1


@pytest.mark.parametrize(
    "seconds,frames", [(32.0, 394), (5.0, 62), (3584 / 44100, 1), (1e-3, 1), (0.0, 1)]
)
def test_latent_length(seconds, frames):
    assert curves.latent_length(seconds, 44100 / 3584) == frames
