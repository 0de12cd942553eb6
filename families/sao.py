"""Stable Audio Open bundles without torch: their settings and the model-call conventions.

A bundle whose `family` is "sao" holds a Stable Audio Open DiT (`v2m.models.sao_dit`),
its conditioner (`v2m.models.sao_cond`, component `cond`), a T5 text encoder and an
Oobleck VAE. Its `sao` section (`SAOConfig`) says how to call the model:

objective "v" (SAO 1.0; k-diffusion's VDenoiser, diffusers' Cosine/EDM DPM-Solver with
`prediction_type="v_prediction"`, sigma_data = 1):
    x_sigma = x0 + sigma * noise,   sigma in [sigma_min, sigma_max], 0 at the end
    model input  x * c_in,  t = atan(sigma) * 2 / pi
    denoised     = c_skip * x + c_out * model_output
    c_skip = 1 / (sigma^2 + 1),  c_out = -sigma / sqrt(sigma^2 + 1),  c_in = 1 / sqrt(sigma^2 + 1)
    (diffusers' EDMDPMSolverMultistepScheduler feeds 0.25 ln(sigma) unless its
    noise_preconditioning_strategy is "atan"; SAO was trained on atan.)

objective "rf_denoiser" (SAO Small) and "rectified_flow":
    x_sigma = (1 - sigma) * x0 + sigma * noise,   sigma in [0, 1] (1 = pure noise)
    model input x unscaled, t = sigma;  output v = noise - x0;  denoised = x - sigma * v
    (v2m's own DiT runs t_v2m = 1 - sigma with velocity -v.)

Nothing here samples: the sampler (`v2m.runtime.sampler`) builds on these.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .errors import BundleError

__all__ = [
    "OBJECTIVES",
    "PRESET_NAMES",
    "SAMPLERS",
    "SAOConfig",
    "model_time",
    "v_scalings",
    "denoised",
    "sigma_schedule",
    "seconds_values",
]

OBJECTIVES = ("v", "rf_denoiser", "rectified_flow")
# Random-bundle presets (`v2m init-model --preset`), defined in `v2m.models.sao_bundle.SAO_PRESETS`.
PRESET_NAMES = ("sao-tiny", "sao-small-tiny", "sao-1.0", "sao-small")
# Sampler names as stable-audio-tools spells them; the defaults a converted bundle records.
SAMPLERS = ("dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m-sde", "pingpong", "euler")
DEFAULT_SAMPLER = {"v": "dpmpp-2m-sde", "rf_denoiser": "pingpong", "rectified_flow": "euler"}


@dataclass
class SAOConfig:
    """The `sao` section of a Stable Audio Open bundle's config.json.

    Attributes:
        objective: "v", "rf_denoiser" or "rectified_flow" (see the module docstring).
        sigma_min, sigma_max: the sampling range (v: SAO's 0.3 and 500; rf: 0 and 1).
        sigma_schedule: "exponential" (log-linear sigmas, then 0: k-diffusion's polyexponential
            with rho 1, diffusers' Cosine scheduler) or "logsnr" (stable-audio-tools' sample_rf:
            sigma = sigmoid(-logSNR), logSNR linear from -6 to 2, first 1, last 0).
        sampler: the default sampler, from the model's scheduler config or its objective.
        latent_frames: the fixed length the model generates (SAO 1.0: 1024 = 47.5 s; Small: 256).
        cond: the conditioner config (`v2m.models.sao_cond.SAOCondConfig` as a dict).
    """

    objective: str = "v"
    sigma_min: float = 0.3
    sigma_max: float = 500.0
    sigma_schedule: str = "exponential"
    sampler: str = "dpmpp-2m-sde"
    latent_frames: int = 1024
    cond: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise BundleError(f"sao.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.sampler not in SAMPLERS:
            raise BundleError(f"sao.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.sigma_schedule not in ("exponential", "logsnr"):
            raise BundleError(f"sao.sigma_schedule must be exponential or logsnr, got {self.sigma_schedule!r}")
        if not (0 <= self.sigma_min < self.sigma_max) or (self.objective == "v" and self.sigma_min <= 0):
            raise BundleError(f"sao: bad sigma range [{self.sigma_min}, {self.sigma_max}]")
        if self.objective != "v" and self.sigma_max > 1:
            raise BundleError(f"sao: a rectified-flow model's sigma_max is at most 1, got {self.sigma_max}")
        if self.latent_frames < 1:
            raise BundleError(f"sao.latent_frames must be positive, got {self.latent_frames}")

    @property
    def seconds_names(self) -> list[str]:
        """The seconds values the conditioner takes, in its input order."""
        return [n["name"] if isinstance(n, dict) else n.name for n in self.cond.get("numbers", [])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> SAOConfig:
        from dataclasses import fields

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BundleError(f"{where} [sao]: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**d)


def model_time(sigma, objective: str):
    """The DiT's time input for noise level `sigma` (array or float): atan(sigma) * 2 / pi for "v", else sigma."""
    if objective == "v":
        return np.arctan(sigma) * 2 / math.pi
    if objective in OBJECTIVES:
        return sigma
    raise ValueError(f"unknown objective {objective!r}")


def v_scalings(sigma, sigma_data: float = 1.0):
    """(c_skip, c_out, c_in) of k-diffusion's VDenoiser (= diffusers' v_prediction preconditioning)."""
    s2 = np.square(sigma) + sigma_data**2
    return sigma_data**2 / s2, -sigma * sigma_data / np.sqrt(s2), 1 / np.sqrt(s2)


def denoised(x, output, sigma, objective: str):
    """The x0 prediction from the model's output at `sigma` (x unscaled; "v" fed x * c_in)."""
    if objective == "v":
        c_skip, c_out, _ = v_scalings(sigma)
        return c_skip * x + c_out * output
    return x - sigma * output


def sigma_schedule(cfg: SAOConfig, steps: int) -> np.ndarray:
    """steps + 1 noise levels (float64), decreasing, ending at 0: the model's own schedule."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if cfg.sigma_schedule == "exponential":
        s = np.exp(np.linspace(math.log(cfg.sigma_max), math.log(cfg.sigma_min), steps))
        return np.concatenate([s, [0.0]])
    lo = math.log((1 - cfg.sigma_max) / cfg.sigma_max + 1e-6) if cfg.sigma_max < 1 else -6.0
    s = 1 / (1 + np.exp(np.linspace(lo, 2.0, steps + 1)))  # sigmoid(-logSNR)
    s[0], s[-1] = cfg.sigma_max, 0.0
    return s


def seconds_values(names: list[str], duration_s: float, start_s: float = 0.0) -> np.ndarray:
    """The conditioner's seconds input [K] float32 for a clip: seconds_start = start_s, seconds_total = duration_s.

    As stable-audio-tools and diffusers condition: the model is told where the audio
    starts and how long it is, and fills the rest of its fixed length with silence.
    """
    values = {"seconds_start": start_s, "seconds_total": duration_s}
    unknown = [n for n in names if n not in values]
    if unknown:
        raise BundleError(f"this model is conditioned on {unknown}, which v2m does not know how to set")
    return np.asarray([values[n] for n in names], dtype=np.float32)
