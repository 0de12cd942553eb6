"""Export contracts of Stable Audio Open bundles, as data (read by the generic exporter).

Kept apart from `v2m.export.contracts` (V2M-Zero's graphs); `contracts.contracts_for` picks
these for a bundle of family "sao":

    t5        input_ids [B, S] int64, attention_mask [B, S] int64       -> hidden [B, S, E]   (S fixed: max_tokens)
    cond      text [B, S, E], text_mask [B, S], seconds [B, K]          -> cross_cond [B, S + Kx, Dc],
                                                                           global_cond [B, Dg]
    text, schedule, step: the DiT in the one sampler (see `_sampler_contracts`)
    vae, encoder: as V2M-Zero's

`t5` and `cond` run once a generation and are exported in fp32 in every precision set.
The lean runtime encodes prompts with the t5 graph and the bundle's `tokenizer.json`
(`v2m.runtime.t5_text`). Torch-free at import, like `contracts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from v2m.runtime.bundle import BundleConfig

from .contracts import (
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

__all__ = ["SAO_GRAPHS", "FP32_GRAPHS", "sao_contracts"]

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

    from .contracts import CONTRACTS

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
