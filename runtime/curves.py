"""Event curves: the video's "when do things change" signal, in numpy.

This is the reference implementation. The Triton kernel in
`v2m.kernels.event_curve` is tested against it, and the runtime falls back to
it whenever features are not on a CUDA device. Conventions (pinned; changing
any of them changes every generated piece of music):

1. d[0] = 0; d[i] = 1 - cos(f[i], f[i-1]), the cosine denominator floored at
   1e-8 (so a zero feature vector gives d = 1, not NaN).
2. z = (d - mean(d)) / std(d) with the population std; z = 0 if std < 1e-6.
3. Sample i sits at time i / fps, latent frame j at time j / latent_rate; z is
   linearly interpolated at the latent times, clamped at both ends (numpy.interp).
4. Smoothing: w = numpy.hanning(K) / sum(w), K odd, edge-replicate padding of
   K // 2 on both sides, valid convolution: the output has `length` samples.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "COS_EPS",
    "STD_EPS",
    "dissimilarity",
    "standardize",
    "resample",
    "hann_smooth",
    "event_curve",
    "latent_length",
    "curve_peaks",
]

COS_EPS = 1e-8  # floor of ||a|| * ||b|| in the cosine
STD_EPS = 1e-6  # below this std the curve is flat (a still video)


def latent_length(duration_s: float, latent_rate: float) -> int:
    """Latent frames covering `duration_s`: ceil(duration * latent_rate), at least 1."""
    # Round first so 5.0 s * 12.3046875 = 61.5234375 is not nudged up by float noise
    # on exact multiples (e.g. 3584 samples = 1 frame exactly).
    return max(1, math.ceil(round(duration_s * latent_rate, 9)))


def dissimilarity(features: np.ndarray) -> np.ndarray:
    """d[i] = 1 - cos(f[i], f[i-1]), d[0] = 0. features [T, D] -> [T] float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be [T, D], got shape {f.shape}")
    t = f.shape[0]
    d = np.zeros(t, dtype=np.float64)
    if t < 2:
        return d
    a, b = f[1:], f[:-1]
    dot = np.einsum("td,td->t", a, b)
    den = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), COS_EPS)
    d[1:] = 1.0 - dot / den
    return d


def standardize(d: np.ndarray) -> np.ndarray:
    """(d - mean) / std with population std; all zeros if std < 1e-6."""
    d = np.asarray(d, dtype=np.float64)
    std = d.std()
    if not np.isfinite(std) or std < STD_EPS:
        return np.zeros_like(d)
    return (d - d.mean()) / std


def resample(z: np.ndarray, fps: float, length: int, latent_rate: float) -> np.ndarray:
    """Linear interpolation of z (sample i at i / fps) at latent times j / latent_rate."""
    src_t = np.arange(len(z), dtype=np.float64) / fps
    dst_t = np.arange(length, dtype=np.float64) / latent_rate
    return np.interp(dst_t, src_t, z)


def hann_window(kernel: int) -> np.ndarray:
    """numpy.hanning(K) normalized to unit sum. K = 1 is the identity."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"smoothing kernel must be a positive odd number, got {kernel}")
    if kernel == 1:
        return np.ones(1)
    w = np.hanning(kernel)
    return w / w.sum()


def hann_smooth(x: np.ndarray, kernel: int = 31) -> np.ndarray:
    """Edge-replicate padding of K // 2, then a valid convolution with the Hann window."""
    w = hann_window(kernel)
    pad = kernel // 2
    xp = np.pad(np.asarray(x, dtype=np.float64), pad, mode="edge")
    return np.convolve(xp, w, mode="valid")  # the window is symmetric: conv == correlation


def event_curve(
    features: np.ndarray, length: int, fps: float, latent_rate: float, kernel: int = 31
) -> np.ndarray:
    """The event curve of one video.

    Args:
        features: [T, D] frame features (any float dtype), frame i at time i / fps.
        length: L, the number of latent frames to produce.
        fps: rate at which the features were sampled.
        latent_rate: latent frames per second (44100 / 3584 for every preset).
        kernel: odd Hann window length.

    Returns:
        float32 [length].
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if len(features) == 0:
        return np.zeros(length, dtype=np.float32)
    z = standardize(dissimilarity(features))
    return hann_smooth(resample(z, fps, length, latent_rate), kernel).astype(np.float32)


def curve_peaks(curve: np.ndarray, count: int, min_distance: int = 4) -> np.ndarray:
    """Indices of the `count` highest local maxima at least `min_distance` frames apart, in time order."""
    c = np.asarray(curve, dtype=np.float64)
    order = np.argsort(-c, kind="stable")
    picked: list[int] = []
    for i in order:
        if len(picked) == count:
            break
        left = c[i - 1] if i > 0 else -np.inf
        right = c[i + 1] if i + 1 < c.size else -np.inf
        if c[i] >= left and c[i] >= right and all(abs(int(i) - p) >= min_distance for p in picked):
            picked.append(int(i))
    return np.array(sorted(picked), dtype=np.int64)
