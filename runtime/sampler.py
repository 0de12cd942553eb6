"""Rectified-flow sampling: small pure functions over arrays (numpy or torch alike).

Convention: t runs from 0 (noise x0) to 1 (data x1), x_t = t * x1 + (1 - t) * x0,
and the model predicts the velocity v = dx/dt = x1 - x0. Euler steps on a
uniform grid of `steps` intervals. Classifier-free guidance combines the two
halves of one 2B batch: v = v_u + w * (v_c - v_u).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

__all__ = ["timesteps", "schedule_key", "initial_noise", "euler", "cfg_combine", "resolve_seed"]

X = TypeVar("X")


def timesteps(steps: int) -> np.ndarray:
    """The uniform grid t_0 = 0 < ... < t_steps = 1 (float64, steps + 1 points)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return np.linspace(0.0, 1.0, steps + 1)


def schedule_key(ts: np.ndarray) -> str:
    """A content key for a timestep grid (two schedules of equal length may differ): what
    backends key their per-schedule caches (modulations, t/dt tables, step graphs) by."""
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(ts, dtype=np.float64).tobytes()).hexdigest()[:16]


def initial_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """x0 ~ N(0, I) from numpy's PCG64 generator, so every backend starts from the same noise."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def resolve_seed(seed: int | None) -> int:
    """The given seed, or a fresh random one (reported back to the user so it can be replayed)."""
    if seed is not None:
        if not 0 <= int(seed) < 2**63:
            raise ValueError(f"seed must be in [0, 2^63), got {seed}")
        return int(seed)
    import secrets

    return secrets.randbelow(2**31)


def cfg_combine(v_cond: X, v_uncond: X, scale: float) -> X:
    """Classifier-free guidance: v_u + w (v_c - v_u)."""
    return v_uncond + scale * (v_cond - v_uncond)


def euler(
    velocity: Callable[[X, int, float], X],
    x0: X,
    ts: np.ndarray,
    on_step: Callable[[int], None] | None = None,
) -> X:
    """Integrate dx/dt = velocity(x, i, t_i) from ts[0] to ts[-1] with explicit Euler.

    No host synchronization happens here; `on_step(i)` is called after step i is
    enqueued (a profiler may record an event there).
    """
    x = x0
    for i in range(len(ts) - 1):
        dt = float(ts[i + 1] - ts[i])
        x = x + dt * velocity(x, i, float(ts[i]))
        if on_step is not None:
            on_step(i)
    return x
