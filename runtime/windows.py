"""Long videos in overlapping windows: the window plan and the level-preserving crossfade.

The DiT was trained on clips of at most `max_frames` latent frames. A longer
video is sampled in windows of exactly `max_frames` frames, each with its own
slice of the whole-video event curve and of the whole-video noise (so a result
depends only on the seed), and the decoded audio windows are joined with a
crossfade chosen by the measured correlation of the two windows over the join.

Why measured: two windows sampled over the same frames from the same noise and
curve are correlated (rho ~0.7 on the demo bundle), and the level of a crossfade
a(t) x + b(t) y is a^2 + b^2 + 2 rho a b. An equal-power fade (a^2 + b^2 = 1, right
for rho = 0) made every join of a long video louder (+1.65 dB on average over the
join, +3 dB at its middle for identical windows); an equal-gain fade (a + b = 1,
right for rho = 1) would dip. Here a and b solve a^2 + b^2 + 2 rho a b = 1 for the
rho measured over the join (clamped to [0, 1]): equal gain (a raised-cosine, which
rebuilds identical windows exactly) at rho = 1, equal power at rho = 0. This is
R. Bristow-Johnson's even/odd construction ("The equivalence of various methods of
computing crossfades"): a = e + o, b = e - o with the odd part o(t) = sin(pi t / 2) / 2
over t in [-1, 1] and the even part e(t) = sqrt((1 - 2 (1 - rho) o^2) / (2 (1 + rho))).

Plan (all in latent frames; `overlap` = crossfade length `o`):

1. n = ceil((L - o) / (M - o)) windows of length M, starts spread evenly over
   [0, L - M] (rounded), so consecutive windows share at least `o` frames.
2. Window i hands over to window i + 1 over [s_{i+1}, s_{i+1} + o): window i
   is cut after it; window i + 1 fades in there while window i fades out.
3. `o` is clamped to (M - 2) // 3, which keeps the fades of consecutive
   hand-overs from touching (each window is then at least `o` frames of
   fade-in, some full-level frames, `o` frames of fade-out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Window", "plan_windows", "overlap_frames", "crossfade", "equal_power", "join_correlation", "overlap_add",
           "crossfade_join", "blend_weights"]


@dataclass(frozen=True)
class Window:
    """One sampler window, in latent frames.

    The sampler runs on [start, end); the audio kept is [start, keep_end), with a
    fade-in over its first `fade_in` frames and a fade-out over its last `fade_out`.
    """

    start: int
    end: int
    keep_end: int
    fade_in: int
    fade_out: int


def overlap_frames(max_frames: int, overlap: float) -> int:
    """The crossfade length in frames: `overlap` (a fraction of max_frames if < 1, else frames), clamped."""
    o = round(overlap * max_frames) if overlap < 1 else int(overlap)
    return max(1, min(o, (max_frames - 2) // 3))


def plan_windows(length: int, max_frames: int, overlap: int) -> list[Window]:
    """Windows covering `length` latent frames; one window [0, length) if it fits.

    Args:
        length: L, latent frames of the whole video.
        max_frames: M, the longest window the model takes.
        overlap: o, crossfade frames (see `overlap_frames`); 1 <= o <= (M - 2) // 3.
    """
    if length < 1 or max_frames < 1:
        raise ValueError(f"length and max_frames must be >= 1, got {length}, {max_frames}")
    if length <= max_frames:
        return [Window(0, length, length, 0, 0)]
    if not 1 <= overlap <= (max_frames - 2) // 3:
        raise ValueError(f"overlap must be in [1, {(max_frames - 2) // 3}] for max_frames {max_frames}, got {overlap}")
    n = math.ceil((length - overlap) / (max_frames - overlap))
    starts = [round(k * (length - max_frames) / (n - 1)) for k in range(n)]
    out = []
    for k, s in enumerate(starts):
        last = k == n - 1
        keep_end = s + max_frames if last else starts[k + 1] + overlap
        out.append(Window(s, s + max_frames, keep_end, 0 if k == 0 else overlap, 0 if last else overlap))
    return out


def blend_weights(plan: list[Window]) -> list[np.ndarray]:
    """Per window, the weight [M] of each of its frames when joint sampling averages the windows'
    steps (`SamplingStage`, `window_mode` "joint"): 1 inside, a linear ramp (1 / (o + 1) ... o / (o + 1))
    over each o-frame overlap with a neighbour, so a frame near a window's edge, where that window
    sees the least context, counts least. Every frame of [0, L) is covered with a total weight > 0."""
    out = []
    for i, w in enumerate(plan):
        m = w.end - w.start
        wt = np.ones(m, np.float64)
        if i > 0:  # overlap with the previous window: [w.start, prev.end)
            o = plan[i - 1].end - w.start
            wt[:o] = np.minimum(wt[:o], np.arange(1, o + 1) / (o + 1))
        if i + 1 < len(plan):  # overlap with the next one: [next.start, w.end)
            o = w.end - plan[i + 1].start
            wt[m - o :] = np.minimum(wt[m - o :], np.arange(o, 0, -1) / (o + 1))
        out.append(wt)
    return out


def crossfade(n: int, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) weights over n samples (sampled mid-sample) for signals of correlation `rho`.

    fade_out^2 + fade_in^2 + 2 rho fade_out fade_in = 1 at every sample, so the level
    is constant across the join; rho = 1 gives the raised cosine (fade_out + fade_in = 1),
    rho = 0 equal power. `rho` is clamped to [0, 1].
    """
    return tuple(w.astype(np.float32) for w in _weights(_odd(n), rho))


def _odd(n: int) -> np.ndarray:
    """The odd part o(t) = sin(pi t / 2) / 2 over n samples of t in (-1, 1), mid-sample."""
    t = (np.arange(n, dtype=np.float64) + 0.5) * (2.0 / n) - 1.0
    return 0.5 * np.sin(0.5 * np.pi * t)


def _weights(odd: np.ndarray, rho: float) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) = (e - o, e + o), e the even part that holds the level at `rho`."""
    rho = min(max(float(rho), 0.0), 1.0)
    even = np.sqrt(np.maximum(1.0 - 2.0 * (1.0 - rho) * odd**2, 0.0) / (2.0 * (1.0 + rho)))
    return even - odd, even + odd


def equal_power(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) of uncorrelated signals: fade_out^2 + fade_in^2 = 1 (`crossfade(n, 0)`)."""
    return crossfade(n, 0.0)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) without BLAS (whose threads cost more than the sum on a busy machine)."""
    return float(np.einsum("i,i->", a, b))


def join_correlation(prev: np.ndarray, new: np.ndarray) -> float:
    """The correlation to fade `prev` [C, n] into `new` [C, n] with, in [0, 1]: the rho whose
    `crossfade` gives the join the energy of the two signals' own levels interpolated across
    it (sum of (1 - tau) |prev|^2 + tau |new|^2, tau the raised cosine 0 -> 1).

    For stationary signals this is their correlation coefficient; unlike one coefficient
    for the whole join it also holds when the correlation or the level changes within it.
    Identical signals give 1: equal gain, which rebuilds them exactly.
    """
    n = prev.shape[-1]
    x, y = prev.astype(np.float64).reshape(-1, n), new.astype(np.float64).reshape(-1, n)
    xx, yy, xy = (x * x).sum(0), (y * y).sum(0), (x * y).sum(0)  # per sample, all channels

    odd = _odd(n)
    tau = _weights(odd, 1.0)[1]
    target = float(_dot(1 - tau, xx) + _dot(tau, yy))

    def excess(rho: float) -> float:  # the join's energy over the target at this rho
        w_out, w_in = _weights(odd, rho)
        return float(_dot(w_out**2, xx) + _dot(w_in**2, yy) + 2 * _dot(w_out * w_in, xy)) - target

    if excess(1.0) >= -1e-9 * target:  # even equal gain is not quieter (identical signals): the most correlated fade
        return 1.0
    if excess(0.0) <= 0:  # even equal power is not louder (anti-correlated): the loudest fade
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(30):  # bisection: the energy falls as rho rises (both weights shrink)
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return 0.5 * (lo + hi)


def overlap_add(out: np.ndarray, audio: np.ndarray, start: int, fade_in: int, fade_out: int) -> None:
    """Put `audio` [C, n] (already cut to its kept span) into `out` [C, N] at sample `start`.

    Windows are added in order. The first `fade_in` samples are the join with the
    previous window, whose tail is in `out` there at full level: both are measured
    (`join_correlation`) and crossfaded (`crossfade`). The last `fade_out` samples are
    written at full level; the next window's call fades them out.
    """
    n = min(audio.shape[-1], out.shape[-1] - start)
    if fade_in + fade_out > audio.shape[-1]:
        raise ValueError(f"fades {fade_in} + {fade_out} longer than the window {audio.shape[-1]}")
    k = min(fade_in, n)
    if k:
        prev, new = out[..., start : start + k], audio[..., :k]
        w_out, w_in = crossfade(fade_in, join_correlation(prev, new))
        out[..., start : start + k] = prev * w_out[:k] + new * w_in[:k]
    out[..., start + k : start + n] += audio[..., k:n]


def crossfade_join(windows: list[Window], audios: list[np.ndarray], hop: int, total: int | None = None) -> np.ndarray:
    """Join per-window audio [C, (end - start) * hop] into one [C, total] signal (test/offline helper).

    `total` defaults to the last window's end * hop samples.
    """
    total = windows[-1].end * hop if total is None else total
    out = np.zeros((audios[0].shape[0], total), dtype=np.float32)
    for w, a in zip(windows, audios):
        keep = (w.keep_end - w.start) * hop
        overlap_add(out, a[:, :keep], w.start * hop, w.fade_in * hop, w.fade_out * hop)
    return out
