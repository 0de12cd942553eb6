"""The sampler: every choice it makes (time grid, solver, guidance) as data, and its one loop.

Convention (rectified flow): t runs from 0 (noise x0) to 1 (data x1), x_t = t x1 + (1 - t) x0,
and the model predicts the velocity v = dx/dt = x1 - x0.

The division of labour (k-diffusion's shape: the schedule is data, the solver is data):

- This module (numpy, torch-free) turns `SamplerOptions` into tables: the time grid
  (`time_grid`, optionally SD3-shifted), the guidance branches and their weights
  (`guidance`), and the solver's per-stage coefficients (`solver_table`). It also owns
  the loop (`sample_loop` over `solver_step`), generic over array types.
- The guided stage itself (the model on the G*B branch batch, the guidance combine, the
  solver update) is written once, in torch, in `v2m.runtime.backends.torch_step.guided_stage`;
  it is run eagerly, compiled, captured in a CUDA graph, and exported as the `step`
  graph that ONNX Runtime and TensorRT run. A backend supplies the stage call and its
  buffers, never its own loop, combine or update.

One stage k (of `stages` per step) computes, with c = coef[k]:

    x_in  = c_in * x_eval
    out   = sum_g w_g * model_g(x_in, k)          # guidance over G branches, one batch
    d     = p * x_eval + q * out                   # the solver's derivative (RF: d = v)
    x_out = cx * x_base + ca * d + cb * d_prev + cn * noise[k % N]

where x_eval is x_base at a step's first stage and the previous stage's x_out after it,
d_prev is the previous stage's d, and x_base becomes the last stage's x_out. Euler is one
stage (x + dt v); Heun is two (the trapezoidal rule: x + dt/2 (v(x, t_i) + v(x~, t_i+1))),
on every interval including the last. The same form holds multistep solvers in
denoised space and noise-injecting ones (the `cn` column), so other model families plug
in as tables, not as code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from v2m.core.sampler_limits import (
    MAX_GUIDANCE,
    MAX_SHIFT,
    MAX_STEPS,
    OBJECTIVE_SOLVERS,
    SEED_LIMIT,
    SOLVERS,
)

__all__ = [
    "SOLVERS",
    "OBJECTIVE_SOLVERS",
    "MAX_STEPS",
    "MAX_GUIDANCE",
    "MAX_SHIFT",
    "COEF_COLUMNS",
    "SamplerOptions",
    "Branch",
    "Guidance",
    "Conditioning",
    "SolverTable",
    "Plan",
    "time_grid",
    "timesteps",
    "schedule_key",
    "guidance",
    "branch_batch",
    "global_batch",
    "solver_table",
    "sigma_table",
    "stage_noise",
    "solver_step",
    "sample_loop",
    "initial_noise",
    "resolve_seed",
    "TrainingPair",
    "training_levels",
    "training_pair",
]


X = TypeVar("X")


@dataclass(frozen=True)
class SamplerOptions:
    """Every choice the sampler makes, validated on construction (torch-free: the CLI and the
    HTTP service check options with it before any video is decoded or model loaded).

    Args:
        steps: solver steps in [1, 10000] (Heun evaluates the model twice a step).
        cfg_scale: classifier-free guidance weight on the text, in [0, 100] (MAX_GUIDANCE).
        solver: "euler" or "heun" (explicit trapezoidal rule on every interval).
        shift: SD3's timestep shift S on the uniform grid, in [0.01, 100] (1 = none; > 1 spends
            more steps near noise).
        use_curve: False is the text-only baseline: the curve is zeros in every branch.
        curve_guidance: extra guidance weight on the curve: the prediction with the curve
            against the one without it (0 = off), in [0, 100].
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
        for name, lo, hi in (("cfg_scale", 0.0, MAX_GUIDANCE), ("curve_guidance", 0.0, MAX_GUIDANCE),
                             ("shift", 1 / MAX_SHIFT, MAX_SHIFT)):
            v = getattr(self, name)
            if (isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer))
                    or not math.isfinite(v) or not lo <= v <= hi):
                raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.curve_guidance and not self.use_curve:
            raise ValueError("curve guidance needs the curve: drop --no-curve or --curve-guidance")
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


def schedule_key(*arrays: np.ndarray) -> str:
    """A content key over arrays (a time grid, a solver table): what backends key their
    per-schedule caches (modulations, coefficient tables, captured step graphs) by. Two
    schedules of equal length may differ, so the key is over the values."""
    import hashlib

    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


# --- guidance -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Branch:
    """One conditioning of the guidance batch: which text, and whether the curve is in."""

    name: str  # "cond", "uncond" or "nocurve"
    text: str  # "prompt", "negative" (the negative prompt) or "null" (zero embeddings, the prompt's mask)
    curve: bool


@dataclass(frozen=True)
class Guidance:
    """The branches the model runs on (stacked branch-major into one G*B batch) and their weights.

    The guided output is sum_g weights[g] * out_g, i.e.
    out_u + w (out_c - out_u) + w_curve (out_c - out_nocurve) written per branch.
    """

    branches: tuple[Branch, ...]
    weights: np.ndarray  # (G,) float64

    @property
    def size(self) -> int:
        return len(self.branches)


def guidance(opts: SamplerOptions, uncond_keeps_curve: bool = True, has_negative: bool = False,
             null_prompt: bool = False) -> Guidance:
    """Branches and weights of classifier-free guidance (text), optionally with curve guidance.

    - cond: the prompt and the curve (zeros with `use_curve=False`): weight w + w_curve.
    - uncond: the negative prompt (else zero embeddings with the prompt's mask) and the
      curve if the bundle keeps it there: weight 1 - w. Dropped when w = 1 (weight 0).
    - nocurve: the prompt without the curve, only with curve guidance: weight -w_curve.

    `null_prompt`: there is no prompt and the bundle conditions that on the unconditional
    branch's zeros (`SamplerConfig.empty_prompt == "null"`: what text dropout trains). The
    prompt's branches then take "null" text, and a branch equal to an earlier one is merged
    into it (weights added): with no negative prompt, cond and uncond are one model call.
    """
    w, wc = opts.cfg_scale, opts.curve_guidance
    text = "null" if null_prompt else "prompt"
    branches = [Branch("cond", text, opts.use_curve)]
    weights = [w + wc]
    if w != 1.0:
        branches.append(Branch("uncond", "negative" if has_negative else "null", opts.use_curve and uncond_keeps_curve))
        weights.append(1.0 - w)
    if wc != 0.0:
        branches.append(Branch("nocurve", text, False))
        weights.append(-wc)
    merged: dict[tuple[str, bool], int] = {}
    out_b, out_w = [], []
    for br, wt in zip(branches, weights):
        k = merged.setdefault((br.text, br.curve), len(out_b))
        if k == len(out_b):
            out_b.append(br)
            out_w.append(wt)
        else:
            out_w[k] += wt
    return Guidance(tuple(out_b), np.asarray(out_w, dtype=np.float64))


@dataclass
class Conditioning:
    """What B videos are conditioned on (numpy, float32).

    Attributes:
        curve: (B, 1, L) event curves.
        text, text_mask: (B, S, E), (B, S) prompt embeddings and key mask.
        negative_text, negative_mask: the negative prompt's, same shapes, or None.
        global_cond: (B, Dg) conditioning every branch shares (a Stable Audio Open model's
            seconds embedding), or None.
    """

    curve: np.ndarray
    text: np.ndarray
    text_mask: np.ndarray
    negative_text: np.ndarray | None = None
    negative_mask: np.ndarray | None = None
    global_cond: np.ndarray | None = None

    def __post_init__(self):
        b, _, _ = self.curve.shape
        if self.text.shape[0] != b or self.text_mask.shape != self.text.shape[:2]:
            raise ValueError(f"conditioning shapes disagree: curve {self.curve.shape}, text {self.text.shape}, "
                             f"mask {self.text_mask.shape}")
        if (self.negative_text is None) != (self.negative_mask is None):
            raise ValueError("negative_text and negative_mask go together")
        if self.negative_text is not None and (
            self.negative_text.shape != self.text.shape or self.negative_mask.shape != self.text_mask.shape
        ):
            raise ValueError(f"negative prompt shapes {self.negative_text.shape} differ from the prompt's {self.text.shape}")

    @property
    def batch(self) -> int:
        return self.curve.shape[0]

    @property
    def has_negative(self) -> bool:
        return self.negative_text is not None


def branch_batch(g: Guidance, cond: Conditioning) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The G*B model batch of a guidance plan, branch-major: curves (G*B, 1, L), text
    (G*B, S, E), mask (G*B, S), float32. (`global_batch` gives the shared conditioning.)"""
    curves, texts, masks = [], [], []
    for br in g.branches:
        curves.append(cond.curve if br.curve else np.zeros_like(cond.curve))
        if br.text == "prompt":
            texts.append(cond.text)
            masks.append(cond.text_mask)
        elif br.text == "negative":
            if cond.negative_text is None:
                raise ValueError("the guidance plan has a negative branch but the conditioning has no negative prompt")
            texts.append(cond.negative_text)
            masks.append(cond.negative_mask)
        else:  # null: zero embeddings with the prompt's mask
            texts.append(np.zeros_like(cond.text))
            masks.append(cond.text_mask)
    f32 = lambda xs: np.ascontiguousarray(np.concatenate(xs), dtype=np.float32)
    return f32(curves), f32(texts), f32(masks)


def global_batch(g: Guidance, cond: Conditioning) -> np.ndarray | None:
    """The shared conditioning of every branch, (G*B, Dg) branch-major, or None."""
    if cond.global_cond is None:
        return None
    return np.ascontiguousarray(np.concatenate([cond.global_cond] * g.size), dtype=np.float32)


# --- solvers as tables ----------------------------------------------------------------------
COEF_COLUMNS = ("c_in", "p", "q", "cx", "ca", "cb", "cn")


@dataclass(frozen=True)
class SolverTable:
    """A solver unrolled over a time grid: one row per model evaluation (stage).

    Attributes:
        t_model: (K,) float64, the time the model sees at each stage (its timestep input).
        coef: (K, 7) float32, the stage coefficients in `COEF_COLUMNS` order (see module doc).
        stages: stages per step (K = steps * stages).
        solver: its name, for logs and keys.
        x0_scale: the initial state is x0_scale * noise.
    """

    t_model: np.ndarray
    coef: np.ndarray
    stages: int
    solver: str
    x0_scale: float = 1.0  # the initial state is x0_scale * noise (v-diffusion starts at sigma_max)

    @property
    def steps(self) -> int:
        return self.coef.shape[0] // self.stages

    @property
    def key(self) -> str:
        """Content key: what per-schedule caches and captured step graphs are keyed by."""
        return schedule_key(self.t_model, self.coef, np.asarray([self.stages, self.x0_scale]))

    @property
    def stochastic(self) -> bool:
        return bool(np.any(self.coef[:, COEF_COLUMNS.index("cn")] != 0))

    @property
    def steps_independent(self) -> bool:
        """No state crosses a step boundary (a step's first stage has cb = 0: no d_prev from the
        last step), so the table can run one step at a time (`Plan.step_plan`): euler, heun,
        pingpong; not the multistep dpmpp-2m solvers."""
        return bool(np.all(self.coef[:: self.stages, COEF_COLUMNS.index("cb")] == 0))

    def step_rows(self, k: int) -> slice:
        """The stages (rows of `coef`, `t_model` and stage noise) of step k."""
        if not 0 <= k < self.steps:
            raise ValueError(f"step {k} is not in [0, {self.steps})")
        return slice(k * self.stages, (k + 1) * self.stages)


def _row(c_in=1.0, p=0.0, q=1.0, cx=1.0, ca=0.0, cb=0.0, cn=0.0) -> list[float]:
    return [c_in, p, q, cx, ca, cb, cn]


def solver_table(ts: np.ndarray, solver: str = "euler") -> SolverTable:
    """The rectified-flow solvers over a time grid `ts` (t_0 = 0 ... t_N = 1).

    euler: x_{i+1} = x_i + dt_i v(x_i, t_i).
    heun:  x~ = x_i + dt_i v(x_i, t_i);  x_{i+1} = x_i + dt_i / 2 (v(x_i, t_i) + v(x~, t_{i+1})),
           on every interval, the last included (the model is evaluated at t = 1).
    """
    ts = np.asarray(ts, dtype=np.float64)
    dts = np.diff(ts)
    if solver == "euler":
        t_model = ts[:-1]
        rows = [_row(ca=dt) for dt in dts]
        stages = 1
    elif solver == "heun":
        t_model = np.stack([ts[:-1], ts[1:]], axis=1).reshape(-1)  # (2N,) t_i, t_{i+1} interleaved
        rows = []
        for dt in dts:
            rows.append(_row(ca=dt))  # predictor: x~ (the stage's x_out), d = v_i
            rows.append(_row(ca=dt / 2, cb=dt / 2))  # corrector: x_i + dt/2 (v(x~) + v_i)
        stages = 2
    else:
        raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    return SolverTable(t_model, np.asarray(rows, dtype=np.float32), stages, solver)


def sigma_table(sigmas: np.ndarray, solver: str, objective: str) -> SolverTable:
    """The samplers of Stable Audio Open models over a decreasing noise schedule `sigmas`
    (sigma_0 = sigma_max ... sigma_N = 0), in k-diffusion's and stable-audio-tools' form.

    The model's conventions (`v2m.families.sao`): for "v", the input is c_in x, its time
    atan(sigma) 2 / pi, and denoised = c_skip x + c_out out; for "rf_denoiser" and
    "rectified_flow", the input is x, its time sigma, out = v = noise - x0 and denoised
    = x - sigma v. Every solver below is one stage a step in the module's stage form:

    dpmpp-2m      (k-diffusion `sample_dpmpp_2m`) with h = ln(sigma_i / sigma_i+1), r = h_{i-1} / h:
                  x = (sigma_i+1 / sigma_i) x - expm1(-h) ((1 + 1/2r) D - D_prev / 2r); first order at
                  the first step and when sigma_i+1 = 0 (then x = D).
    dpmpp-2m-sde  (`sample_dpmpp_2m_sde`, eta = 1, midpoint): x = (sigma_i+1 / sigma_i) e^-h x
                  + m D + m / 2r (D - D_prev) + sigma_i+1 sqrt(1 - e^-2h) noise, m = -expm1(-2h).
    pingpong      (`sample_flow_pingpong`): x = (1 - sigma_i+1) D + sigma_i+1 noise.
    euler         (rectified flow in sigma): x = x + (sigma_i+1 - sigma_i) v.
    """
    from v2m.families.sao import model_time, v_scalings

    sig = np.asarray(sigmas, dtype=np.float64)
    if sig.ndim != 1 or len(sig) < 2 or np.any(np.diff(sig) >= 0) or sig[-1] < 0:
        raise ValueError("sigmas must decrease to >= 0")
    if solver not in OBJECTIVE_SOLVERS.get(objective, ()):
        raise ValueError(f"solver {solver!r} does not fit a {objective!r} model; use one of "
                         f"{', '.join(OBJECTIVE_SOLVERS.get(objective, ()))}")
    rows = []
    h_last = None
    for i in range(len(sig) - 1):
        s0, s1 = sig[i], sig[i + 1]
        if objective == "v":
            c_skip, c_out, c_in = (float(v) for v in v_scalings(s0))
            c_in, p, q = c_in, c_skip, c_out  # d = D, the denoised estimate
        else:
            c_in, p, q = 1.0, (1.0 if solver == "pingpong" else 0.0), (-s0 if solver == "pingpong" else 1.0)
        if solver == "euler":
            rows.append(_row(c_in, p, q, ca=s1 - s0))
            continue
        if solver == "pingpong":
            rows.append(_row(c_in, p, q, cx=0.0, ca=1.0 - s1, cn=s1))
            continue
        if s1 == 0:  # the last step: the denoised estimate
            rows.append(_row(c_in, p, q, cx=0.0, ca=1.0))
            continue
        h = np.log(s0 / s1)
        if solver == "dpmpp-2m":
            e = -np.expm1(-h)
            if h_last is None:
                rows.append(_row(c_in, p, q, cx=s1 / s0, ca=e))
            else:
                r = h_last / h
                rows.append(_row(c_in, p, q, cx=s1 / s0, ca=e * (1 + 1 / (2 * r)), cb=-e / (2 * r)))
        else:  # dpmpp-2m-sde, eta 1, midpoint
            m = -np.expm1(-2 * h)
            noise = s1 * np.sqrt(-np.expm1(-2 * h))
            if h_last is None:
                rows.append(_row(c_in, p, q, cx=s1 / s0 * np.exp(-h), ca=m, cn=noise))
            else:
                r = h_last / h
                rows.append(_row(c_in, p, q, cx=s1 / s0 * np.exp(-h), ca=m * (1 + 0.5 / r), cb=-m * 0.5 / r, cn=noise))
        h_last = h
    t_model = np.asarray(model_time(sig[:-1], objective), dtype=np.float64)
    return SolverTable(t_model, np.asarray(rows, dtype=np.float32), 1, solver,
                       x0_scale=float(sig[0]) if objective == "v" else 1.0)


def stage_noise(seeds: list[int], stages: int, shape: tuple[int, int]) -> np.ndarray:
    """(K, B, C, L) noise of noise-injecting solvers: video b's rows from its own seed (a stream
    apart from its initial noise), so a video's music is the same batched or alone."""
    per = [np.random.default_rng([int(seed), 1]).standard_normal((stages, *shape), dtype=np.float32) for seed in seeds]
    return np.ascontiguousarray(np.stack(per, axis=1))  # (K, B, C, L)


@dataclass(frozen=True)
class Plan:
    """Everything a backend's `sample` needs besides the inputs: guidance and the solver table."""

    options: SamplerOptions
    guidance: Guidance
    table: SolverTable

    @classmethod
    def make(
        cls, opts: SamplerOptions, uncond_keeps_curve: bool = True, has_negative: bool = False, sigmas=None,
        objective: str = "v2m", null_prompt: bool = False,
    ) -> Plan:
        """v2m's rectified flow by default; a Stable Audio Open model passes its objective and a
        sigmas(steps) -> schedule callable (`v2m.families.sao.sigma_schedule`)."""
        g = guidance(opts, uncond_keeps_curve, has_negative, null_prompt)
        if objective == "v2m":
            if opts.solver not in OBJECTIVE_SOLVERS["v2m"]:
                raise ValueError(f"solver {opts.solver!r} does not fit this model; use euler or heun")
            return cls(opts, g, solver_table(time_grid(opts.steps, opts.shift), opts.solver))
        sig = np.asarray(sigmas(opts.steps), dtype=np.float64)
        if opts.shift != 1.0:
            if objective == "v":
                raise ValueError("--shift applies to rectified-flow models; this one is v-diffusion")
            sig = opts.shift * sig / (1.0 + (opts.shift - 1.0) * sig)
        return cls(opts, g, sigma_table(sig, opts.solver, objective))

    @property
    def steps(self) -> int:
        return self.table.steps

    def step_plan(self, k: int) -> Plan:
        """Step k alone: the table's rows of that step (starting from the state after step k - 1).
        Only for tables whose steps are independent (`SolverTable.steps_independent`)."""
        if not self.table.steps_independent:
            raise ValueError(f"the {self.table.solver} solver carries state across steps; it cannot run a step at a time")
        rows = self.table.step_rows(k)
        table = SolverTable(self.table.t_model[rows], self.table.coef[rows], self.table.stages, self.table.solver,
                            1.0)  # the state is already scaled: x0_scale applies to the initial noise only
        return Plan(self.options, self.guidance, table)


# --- the loop -------------------------------------------------------------------------------
StageFn = Callable[[X, X, X], tuple[X, X]]


def solver_step(stage: StageFn, x: X, d: X, stages: int) -> tuple[X, X]:
    """One solver step: `stages` calls of stage(x_base, x_eval, d_prev) -> (x_out, d).

    The stage callable owns the stage counter k (a device tensor or an int it advances),
    so the same function runs on the host, inside a CUDA-graph capture, and over engine
    buffers. Returns the new x_base and the last d.
    """
    x_eval = x
    for _ in range(stages):
        x_eval, d = stage(x, x_eval, d)
    return x_eval, d


def sample_loop(
    stage: StageFn, x0: X, d0: X, steps: int, stages: int, on_step: Callable[[int], None] | None = None
) -> X:
    """`steps` solver steps from x0 (d0: the initial d_prev, zeros). No host synchronization
    happens here; `on_step(i)` is called after step i is enqueued (a profiler may record an
    event there)."""
    x, d = x0, d0
    for i in range(steps):
        x, d = solver_step(stage, x, d, stages)
        if on_step is not None:
            on_step(i)
    return x


def initial_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """x0 ~ N(0, I) from numpy's PCG64 generator, so every backend starts from the same noise."""
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def resolve_seed(seed: int | None) -> int:
    """The given seed, or a fresh random one (reported back to the user so it can be replayed)."""
    if seed is not None:
        if not 0 <= int(seed) < SEED_LIMIT:
            raise ValueError(f"seed must be in [0, 2^63), got {seed}")
        return int(seed)
    import secrets

    return secrets.randbelow(2**31)




# --- the training objective: what the solvers above integrate ----------------------------------
@dataclass(frozen=True)
class TrainingPair:
    """Per-example coefficients of one training example (float64 [B] each), at noise level `level`:

        model input  = in_data * x_data + in_noise * noise      (what the model is fed, c_in applied)
        model time   = t_model                                   (its timestep input)
        target       = out_data * x_data + out_noise * noise     (the output the sampler expects)
    """

    t_model: np.ndarray
    in_data: np.ndarray
    in_noise: np.ndarray
    out_data: np.ndarray
    out_noise: np.ndarray


def training_pair(level: np.ndarray, objective: str) -> TrainingPair:
    """The training example of each objective at its sampler's noise variable `level` [B].

    The one definition training shares with the sampler's conventions (above and `v2m.families.sao`):

    "v2m"          level = t in [0, 1] (0 noise, 1 data): x_t = t x1 + (1 - t) n, time t,
                   target v = x1 - n (an Euler step of `solver_table` to t = 1 lands on x1).
    "rf_denoiser", "rectified_flow"
                   level = sigma in [0, 1] (1 noise): x = (1 - sigma) x0 + sigma n, time sigma,
                   target v = n - x0 (`sigma_table`: denoised = x - sigma v).
    "v"            level = sigma > 0 (k-diffusion): x = x0 + sigma n, input c_in x, time
                   atan(sigma) 2 / pi, target the output whose denoised c_skip x + c_out out = x0,
                   i.e. (n - sigma x0) / sqrt(sigma^2 + 1) = cos(phi) n - sin(phi) x0 (the v of
                   stable-audio-tools at phi = t pi / 2).
    """
    from v2m.families.sao import model_time, v_scalings

    s = np.asarray(level, dtype=np.float64)
    if objective == "v2m":
        return TrainingPair(s, s, 1.0 - s, np.ones_like(s), -np.ones_like(s))
    if objective in ("rf_denoiser", "rectified_flow"):
        return TrainingPair(model_time(s, objective), 1.0 - s, s, -np.ones_like(s), np.ones_like(s))
    if objective == "v":
        _, _, c_in = v_scalings(s)
        return TrainingPair(model_time(s, objective), c_in, c_in * s, -s * c_in, c_in)
    raise ValueError(f"unknown objective {objective!r}")


def training_levels(objective: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise levels [n] (float64) drawn as each family trains: v2m and rectified flow at
    logit-normal t (resp. sigma), SD3's and stable-audio-tools' choice for flows; v-diffusion at
    uniform phi = t pi / 2 in model time (stable-audio-tools' default), sigma = tan(phi)."""
    z = rng.standard_normal(n)
    if objective in ("v2m", "rf_denoiser", "rectified_flow"):
        return 1.0 / (1.0 + np.exp(-z))
    if objective == "v":
        t = np.clip(rng.random(n), 1e-4, 1 - 1e-4)
        return np.tan(t * math.pi / 2)
    raise ValueError(f"unknown objective {objective!r}")
