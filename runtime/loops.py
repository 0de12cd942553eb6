"""Loops: music whose end flows into its start, in the one sampler (numpy only).

A loop of L latent frames is sampled as L + M frames whose last M are the circular
continuation of the first M: the curve's (`extend`) and the noise's (`wrap`, the same noise
at frame L + j as at frame j). The sampled frames L..L+M-1 are the music that follows the
end; `fold` cross-blends them into the first M frames (a linear ramp from the continuation
to the start's own frames), so frame 0 continues frame L - 1. `render` then decodes the
loop with `PAD` frames of circular context on each side, so the VAE sees the wrap too.
"""

from __future__ import annotations

import numpy as np

from v2m.core.errors import InputError

__all__ = ["MAX_MARGIN", "PAD", "margin", "extend", "wrap", "fold", "circular_pad"]

MAX_MARGIN = 24  # latent frames (about 2 s): enough for the sampler's context to carry over the seam
PAD = 8  # latent frames of circular context decoded on each side


def margin(length: int, max_frames: int) -> int:
    """The wrap margin M of a loop of `length` latent frames (at most `max_frames` are sampled)."""
    m = min(MAX_MARGIN, max(length // 4, 1), max_frames - length)
    if m < 1:
        raise InputError(f"a loop is sampled in one piece with a margin: {length} latent frames is too long for "
                         f"this model ({max_frames}); make it shorter")
    return m


def extend(x: np.ndarray, m: int) -> np.ndarray:
    """x [..., L] followed by its first m frames: [..., L + m]."""
    return np.concatenate([x, x[..., :m]], axis=-1)


def wrap(noise: np.ndarray, length: int, m: int) -> np.ndarray:
    """Noise [..., >= L + m] with frames L..L+m-1 set to frames 0..m-1 (a copy)."""
    out = np.array(noise, copy=True)
    out[..., length : length + m] = out[..., :m]
    return out


def fold(x: np.ndarray, length: int, m: int) -> np.ndarray:
    """[..., L + m] -> [..., L]: the first m frames blended from the continuation x[L + j]
    (weight 1 - a_j) to their own x[j] (weight a_j), a_j = (j + 0.5) / m."""
    out = np.array(x[..., :length], copy=True)
    a = ((np.arange(m, dtype=np.float64) + 0.5) / m).astype(x.dtype)
    out[..., :m] = (1 - a) * x[..., length : length + m] + a * x[..., :m]
    return out


def circular_pad(x: np.ndarray, pad: int) -> np.ndarray:
    """[..., L] -> [..., L + 2 pad] with the wrap on both sides (pad <= L)."""
    return np.concatenate([x[..., x.shape[-1] - pad :], x, x[..., :pad]], axis=-1)
