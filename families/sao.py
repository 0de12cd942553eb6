"""The Stable Audio Open family: the model-call conventions, export contracts and what differs from V2M-Zero.

A bundle whose `family` is "sao" holds a Stable Audio Open DiT (`v2m.models.sao_dit`),
its conditioner (`v2m.models.sao_cond`, component `cond`), a T5 text encoder and an
Oobleck VAE. Its `sao` section (`v2m.core.bundle.SAOConfig`) says how to call the model:

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
from dataclasses import dataclass

import numpy as np

from v2m.core.bundle import OBJECTIVES, BundleConfig, SAOConfig
from v2m.core.contracts import (
    MAX_BRANCHES,
    MAX_STAGES,
    MAX_VIDEOS,
    STEP_OUTPUTS,
    STEP_STATE,
    DimRange,
    ExportContract,
    TensorSpec,
    _fill,
)
from v2m.core.errors import BundleError

__all__ = [
    "model_time",
    "v_scalings",
    "denoised",
    "sigma_schedule",
    "seconds_values",
    "SAO_GRAPHS",
    "FP32_GRAPHS",
    "sao_contracts",
]

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


# --- export contracts, as data (read by the generic exporter) ----------------------------

SAO_GRAPHS = ("t5", "cond", "vae", "text", "schedule", "step")  # + encoder when the bundle has one
FP32_GRAPHS = ("t5", "cond")  # once a generation: fp32 in every precision set


@dataclass(frozen=True)
class TokenContract(ExportContract):
    """An ExportContract whose `ids` inputs are token ids below `vocab` (the T5 embedding's rows)."""

    vocab: int = 2

    def sample_inputs(
        self, cfg: BundleConfig, values: dict[str, int], seed: int = 0, model_dtype: str = "float32"
    ) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.inputs:
            shape = self.shape(spec, values, cfg)
            if spec.fill == "ids":
                out[spec.name] = rng.integers(0, self.vocab, shape).astype(spec.dtype)
            else:
                out[spec.name] = _fill(spec.fill, shape, rng, values).astype(spec.resolve_dtype(model_dtype))
        return out


def _sizes(cfg: BundleConfig) -> dict[str, int]:
    sao = cfg.sao_config
    tokens = int(cfg.text["max_tokens"])
    return {"S": tokens, "E": cfg.text_dim, "K": len(sao.seconds_names), "Sx": tokens + len(sao.cond["cross_numbers"]),
            "Dc": int(sao.cond["cond_dim"]), "Dg": int(sao.cond["cond_dim"]) * len(sao.cond["global_numbers"]),
            "C": cfg.latent_channels, "Ci": int(cfg.dit.get("input_concat_dim", 0)), "F": sao.latent_frames}


def sao_contracts(cfg: BundleConfig) -> dict[str, ExportContract]:
    """The contracts of an SAO bundle's graphs (they depend on its config: the curve input, S, K)."""
    n = _sizes(cfg)

    def fixed(**dyn: DimRange):
        return lambda c: {**{k: v for k, v in n.items() if k != "F"}, **dyn}

    from v2m.core.contracts import CONTRACTS

    return {
        "encoder": CONTRACTS["encoder"],
        "vae": CONTRACTS["vae"],
        "t5": TokenContract(
            name="t5",
            inputs=(TensorSpec("input_ids", ("B", "S"), dtype="int64", fill="ids"),
                    TensorSpec("attention_mask", ("B", "S"), dtype="int64", fill="mask")),
            outputs=(TensorSpec("hidden", ("B", "S", "E")),),
            dims=fixed(B=(1, 2, 4)),
            samples=lambda c: [{"B": 2}, {"B": 3}],
            tolerance=(1e-4, 1e-4),  # fp32 reorderings over the layers; relative bias baked for the fixed S
            vocab=int(cfg.text["config"]["vocab_size"]),
        ),
        "cond": ExportContract(
            name="cond",
            inputs=(TensorSpec("text", ("B", "S", "E")), TensorSpec("text_mask", ("B", "S"), fill="mask"),
                    TensorSpec("seconds", ("B", "K"), fill="const:12.5")),
            outputs=(TensorSpec("cross_cond", ("B", "Sx", "Dc")), TensorSpec("global_cond", ("B", "Dg"))),
            dims=fixed(B=(1, 2, 8)),
            samples=lambda c: [{"B": 2}, {"B": 5}],
            tolerance=(1e-5, 1e-5),
        ),
        **_sampler_contracts(cfg, n),
    }


def _sampler_contracts(cfg: BundleConfig, n: dict[str, int]) -> dict[str, ExportContract]:
    """The SAO DiT's graphs for the one sampler (`v2m.runtime.backends.torch_step.SAOStepModel`):

        text      text [GB, Sx, Dc] (the conditioner's cross tokens), global_cond [GB, Dg]
                                                   -> text_kv [depth, 2, GB, H, Sx, Dh], g_emb [GB, D]
        schedule  t_model [K]                      -> t_emb [K, D]
        step      x, x_eval, d_prev [B, C, L], k [1], coef [K, 7], noise [N, B, C, L], weights [G],
                  t_emb, (curve [GB, 1, L] with a curve channel,) text_kv, g_emb
                                                   -> x_out, d [B, C, L], k_next [1]
    """
    d = cfg.dit
    f = n["F"]
    dims = {k: v for k, v in n.items() if k != "F"}
    dims.update(depth=int(d["depth"]), Hd=int(d["heads"]), Dh=int(d["width"]) // int(d["heads"]), D=int(d["width"]))
    kv = ("depth", 2, "GB", "Hd", "Sx", "Dh")
    return {
        "text": ExportContract(
            name="text",
            inputs=(TensorSpec("text", ("GB", "Sx", "Dc")), TensorSpec("global_cond", ("GB", "Dg"))),
            outputs=(TensorSpec("text_kv", kv, dtype="model"), TensorSpec("g_emb", ("GB", "D"), dtype="model")),
            dims=lambda c: {**dims, "GB": (1, 2, MAX_BRANCHES * MAX_VIDEOS)},
            samples=lambda c: [{"GB": 2}, {"GB": 3}],
            tolerance=(1e-4, 1e-4),
        ),
        "schedule": ExportContract(
            name="schedule",
            inputs=(TensorSpec("t_model", ("K",), fill="unit"),),
            outputs=(TensorSpec("t_emb", ("K", "D"), dtype="model"),),
            dims=lambda c: {**dims, "K": (1, c.sampler.steps, MAX_STAGES)},
            samples=lambda c: [{"K": 7}, {"K": 12}],
            tolerance=(1e-4, 1e-4),
        ),
        "step": ExportContract(
            name="step",
            inputs=(
                *STEP_STATE,
                TensorSpec("t_emb", ("K", "D"), dtype="model"),
                # the curve is an input only of a model with the channel (a V2M-Zero fine-tune)
                *((TensorSpec("curve", ("GB", 1, "L"), fill="unit"),) if n["Ci"] else ()),
                TensorSpec("text_kv", kv, dtype="model"),
                TensorSpec("g_emb", ("GB", "D"), dtype="model"),
            ),
            outputs=STEP_OUTPUTS,
            dims=lambda c: {**dims, "B": (1, 1, MAX_VIDEOS), "G": (1, 2, MAX_BRANCHES),
                            "GB": (1, 2, MAX_BRANCHES * MAX_VIDEOS), "K": (1, c.sampler.steps, MAX_STAGES),
                            "N": (1, 1, MAX_STAGES), "L": (1, f, f)},
            # An odd L at export, another B, G, K, N and L after: RoPE's arange(L + 1), the branch
            # reshape and the noise gather stay dynamic.
            samples=lambda c: [{"B": 1, "G": 2, "GB": 2, "K": 5, "N": 1, "L": min(f, 31)},
                               {"B": 2, "G": 3, "GB": 6, "K": 8, "N": 8, "L": min(f, 17)}],
            tolerance=(1e-4, 1e-4),
        ),
    }
