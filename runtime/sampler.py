"""Rectified-flow sampling: small pure functions over arrays (numpy or torch alike).

Convention: t runs from 0 (noise x0) to 1 (data x1), x_t = t * x1 + (1 - t) * x0,
and the model predicts the velocity v = dx/dt = x1 - x0. Euler steps on a
uniform grid of `steps` intervals. Classifier-free guidance combines the two
halves of one 2B batch: v = v_u + w * (v_c - v_u).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

__all__ = [
    "SOLVERS",
    "MAX_STEPS",
    "SamplerOptions",
    "time_grid",
    "timesteps",
    "schedule_key",
    "initial_noise",
    "euler",
    "cfg_combine",
    "resolve_seed",
]

SOLVERS = ("euler", "heun")
MAX_STEPS = 10000

X = TypeVar("X")


@dataclass(frozen=True)
class SamplerOptions:
    """Every choice the sampler makes, validated on construction (torch-free: the CLI and the
    HTTP service check options with it before any video is decoded or model loaded).

    Args:
        steps: solver steps in [1, 10000] (Heun evaluates the model twice a step).
        cfg_scale: classifier-free guidance weight on the text (finite).
        solver: "euler" or "heun" (explicit trapezoidal rule on every interval).
        shift: SD3's timestep shift S > 0 on the uniform grid (1 = none; > 1 spends more
            steps near noise).
        use_curve: False is the text-only baseline: the curve is zeros in every branch.
        curve_guidance: extra guidance weight on the curve: the prediction with the curve
            against the one without it (0 = off; finite).
    """

    steps: int = 96
    cfg_scale: float = 4.0
    solver: str = "euler"
    shift: float = 1.0
    use_curve: bool = True
    curve_guidance: float = 0.0

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)) or not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {self.steps!r}")
        for name in ("cfg_scale", "curve_guidance", "shift"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, got {self.shift!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        object.__setattr__(self, "steps", int(self.steps))
        for name in ("cfg_scale", "curve_guidance", "shift"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "use_curve", bool(self.use_curve))


def time_grid(steps: int, shift: float = 1.0) -> np.ndarray:
    """t_0 = 0 < ... < t_steps = 1 (float64): the uniform grid, shifted in noise level.

    With sigma = 1 - t, SD3's shift maps sigma' = S sigma / (1 + (S - 1) sigma); S > 1
    moves grid points towards noise (t = 0), where the velocity changes fastest.
    """
    ts = timesteps(steps)
    if shift == 1.0:
        return ts
    sigma = 1.0 - ts
    sigma = shift * sigma / (1.0 + (shift - 1.0) * sigma)
    return 1.0 - sigma


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
