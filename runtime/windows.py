"""Long videos in overlapping windows: the window plan and the equal-power crossfade.

The DiT was trained on clips of at most `max_frames` latent frames. A longer
video is sampled in windows of exactly `max_frames` frames, each with its own
slice of the whole-video event curve and of the whole-video noise (so a result
depends only on the seed), and the decoded audio windows are joined with an
equal-power crossfade (cos / sin, so w_out^2 + w_in^2 = 1 across the fade).

Plan (all in latent frames; `overlap` = crossfade length `o`):

1. n = ceil((L - o) / (M - o)) windows of length M, starts spread evenly over
   [0, L - M] (rounded), so consecutive windows share at least `o` frames.
2. Window i hands over to window i + 1 over [s_{i+1}, s_{i+1} + o): window i
   fades out there and is cut after it; window i + 1 fades in there.
3. `o` is clamped to (M - 2) // 3, which keeps the fades of consecutive
   hand-overs from touching (each window is then at least `o` frames of
   fade-in, some full-level frames, `o` frames of fade-out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Window", "plan_windows", "overlap_frames", "equal_power", "envelope", "overlap_add", "crossfade_join"]


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


def equal_power(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(fade_out, fade_in) weights over n samples: cos and sin of a quarter turn, sampled mid-sample.

    fade_out^2 + fade_in^2 = 1 at every sample (constant power for uncorrelated signals).
    """
    theta = (np.arange(n, dtype=np.float64) + 0.5) * (np.pi / 2 / n)
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def envelope(n: int, fade_in: int, fade_out: int) -> np.ndarray:
    """Gain over n samples: sin fade-in over the first `fade_in`, cos fade-out over the last `fade_out`."""
    if fade_in + fade_out > n:
        raise ValueError(f"fades {fade_in} + {fade_out} longer than the window {n}")
    env = np.ones(n, dtype=np.float32)
    if fade_in:
        env[:fade_in] = equal_power(fade_in)[1]
    if fade_out:
        env[n - fade_out :] = equal_power(fade_out)[0]
    return env


def overlap_add(out: np.ndarray, audio: np.ndarray, start: int, fade_in: int, fade_out: int) -> None:
    """Add `audio` [C, n] (already cut to its kept span) into `out` [C, N] at sample `start`, enveloped."""
    n = min(audio.shape[-1], out.shape[-1] - start)
    env = envelope(audio.shape[-1], fade_in, fade_out)[:n]
    out[..., start : start + n] += audio[..., :n] * env


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
