"""Event curves: the video's "when do things change" signal, in numpy.

This is the reference implementation. The Triton kernel in
`v2m.kernels.event_curve` is tested against it, and the runtime falls back to
it whenever features are not on a CUDA device. Conventions (pinned; changing
any of them changes every generated piece of music):

1. d[0] = 0; d[i] = 1 - cos(f[i], f[i-1]), the cosine denominator floored at
   1e-8 (so a zero feature vector gives d = 1, not NaN).
2. z = (d - mean(d)) / max(std(d), std_floor) with the population std; z = 0 if that
   denominator is below 1e-6. `std_floor` is the bundle's `curve.std_floor` (0 in bundles
   written before it existed, which keep the unfloored convention): a video with no event,
   whose d is compression noise or a steady pan, then stays near 0 instead of being blown
   up to unit variance. The floor is per frame encoder, in d's units (`STD_FLOORS`).
3. Sample i sits at time i / fps, latent frame j at time j / latent_rate. Going to
   the latent rate (`resample`):
   - fps <= latent_rate (upsampling): z linearly interpolated at the latent times,
     clamped at both ends (numpy.interp).
   - fps > latent_rate (downsampling): anti-aliased. Sample i is held over its own
     span [i / fps, (i + 1) / fps) (z[-1] held past the end), and latent frame j is
     the mean of that step curve over the frame's span [j / latent_rate,
     (j + 1) / latent_rate). A one-sample spike (a hard cut) keeps its area, so
     moving it by a fraction of a frame changes the smoothed peak by a few percent
     and no spike falls between two latent frames (linear interpolation at the
     latent times reads only 2 of every fps / latent_rate samples and drops the rest).
   At fps == latent_rate both rules are the identity.
4. Smoothing: w = numpy.hanning(K) / sum(w), K odd, edge-replicate padding of
   K // 2 on both sides, valid convolution: the output has `length` samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "COS_EPS",
    "STD_EPS",
    "STD_FLOORS",
    "dissimilarity",
    "standardize",
    "resample",
    "span_mean",
    "hann_smooth",
    "event_curve",
    "curve_from_dissimilarity",
    "latent_length",
    "curve_peaks",
]

COS_EPS = 1e-8  # floor of ||a|| * ||b|| in the cosine
STD_EPS = 1e-6  # below this std the curve is flat (a still video)
# `curve.std_floor` that new bundles get, per frame encoder, measured (docs/curve-floor.md): a
# noisy still clip's d has std ~5e-5 and a steady pan's ~4e-4 under the cut encoder, a hard
# cut's d is 0.05-0.4. The motion encoder's d is noisy on every clip (std 0.14-0.23 on still,
# pan and cut clips alike), so no floor separates them; DINOv2 was not measured (no weights).
STD_FLOORS = {"cut": 0.005}


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


def standardize(d: np.ndarray, std_floor: float = 0.0) -> np.ndarray:
    """(d - mean) / max(std, std_floor) with population std; all zeros if that is below 1e-6."""
    d = np.asarray(d, dtype=np.float64)
    std = max(float(d.std()), float(std_floor)) if d.size else 0.0
    if not np.isfinite(std) or std < STD_EPS:
        return np.zeros_like(d)
    return (d - d.mean()) / std


def resample(z: np.ndarray, fps: float, length: int, latent_rate: float) -> np.ndarray:
    """z (sample i at i / fps) at the latent rate: `span_mean` when fps > latent_rate (anti-aliased
    downsampling), else linear interpolation at the latent times j / latent_rate."""
    if fps > latent_rate:
        return span_mean(z, fps, length, latent_rate)
    src_t = np.arange(len(z), dtype=np.float64) / fps
    dst_t = np.arange(length, dtype=np.float64) / latent_rate
    return np.interp(dst_t, src_t, z)


def span_mean(z: np.ndarray, fps: float, length: int, latent_rate: float) -> np.ndarray:
    """out[j] = mean over [j / latent_rate, (j + 1) / latent_rate) of the step curve that holds
    z[i] on [i / fps, (i + 1) / fps) and z[-1] after the last sample. float64 [length].

    Computed from the running integral of the step curve (in source-sample units,
    frame j spans [j p, (j + 1) p) with p = fps / latent_rate).
    """
    z = np.asarray(z, dtype=np.float64)
    if z.size == 0:
        return np.zeros(length)
    p = float(fps) / float(latent_rate)
    cum = np.concatenate([[0.0], np.cumsum(z)])  # integral of the step curve at 0, 1, ..., T

    def integral(x: np.ndarray) -> np.ndarray:
        i = np.minimum(np.floor(x).astype(np.int64), z.size - 1)  # past the end: z[-1] held
        return cum[i] + (x - i) * z[i]

    edges = np.arange(length + 1, dtype=np.float64) * p
    return (integral(edges[1:]) - integral(edges[:-1])) / p


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
    features: np.ndarray, length: int, fps: float, latent_rate: float, kernel: int = 31,
    edit: Callable[[np.ndarray, float], np.ndarray] | None = None, std_floor: float = 0.0,
) -> np.ndarray:
    """The event curve of one video.

    Args:
        features: [T, D] frame features (any float dtype), frame i at time i / fps.
        length: L, the number of latent frames to produce.
        fps: rate at which the features were sampled.
        latent_rate: latent frames per second (44100 / 3584 for every preset).
        kernel: odd Hann window length.
        edit: optional `edit(d, fps) -> d'` applied to the raw dissimilarities before
            standardization (hit points, a given curve, suppressed ranges: `v2m.runtime.curve_edit`).
        std_floor: the least std the standardization divides by (convention 2; 0: none).

    Returns:
        float32 [length].
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if len(features) == 0:
        return np.zeros(length, dtype=np.float32)
    return curve_from_dissimilarity(dissimilarity(features), length, fps, latent_rate, kernel, edit, std_floor)


def curve_from_dissimilarity(
    d: np.ndarray, length: int, fps: float, latent_rate: float, kernel: int = 31,
    edit: Callable[[np.ndarray, float], np.ndarray] | None = None, std_floor: float = 0.0,
) -> np.ndarray:
    """`event_curve` from the raw dissimilarities d [T] (sample i at i / fps): edit, standardize,
    resample, smooth. float32 [length]. An empty d is a flat curve (edits still apply)."""
    d = np.asarray(d, dtype=np.float64)
    if edit is not None:
        d = np.asarray(edit(d, fps), dtype=np.float64)
    if d.size == 0:
        return np.zeros(length, dtype=np.float32)
    z = standardize(d, std_floor)
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
