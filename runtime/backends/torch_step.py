"""The guided solver stage, written once in torch: every engine runs this definition.

`guided_stage` is the model call on the G*B guidance batch, the guidance combine and the
solver update (the math is in `v2m.runtime.sampler`'s module docstring). It is what

- the eager torch backend calls stage by stage (`make_stage` + `sampler.sample_loop`),
- the fast path runs over static buffers, compiled, and captures in a CUDA graph
  (`torch_fast.FastSampler`: one graph per shape, solver table and guidance size),
- the exporter traces into the `step` graph that ONNX Runtime and TensorRT run
  (`v2m.export.exporter.StepGraph`).

A model family enters through a small adapter (`StepModel`), whose hoisted work is named
tensors, so engines bind it by name without knowing the family:

- `text_context(inputs)`: once per generation, from the branch batch's `TEXT_INPUTS`
  (the text keys/values of every block...), the tensors named `CONTEXT`;
- `schedule(t_model)`: once per solver table, the timestep work of every stage, named
  `SCHEDULE`;
- `__call__(x_in, k, curve, sched, ctx)`: the per-stage backbone.

`DiTStepModel` is v2m's own DiT (adaLN modulations hoisted); `SAOStepModel` is a Stable
Audio Open DiT (timestep embeddings hoisted; the global token and cross-attention K/V
per generation). Imported only by torch backends and the exporter.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "StepModel",
    "DiTStepModel",
    "SAOStepModel",
    "step_model",
    "guided_stage",
    "make_stage",
    "stage_tensors",
    "branch_tensors",
]

log = logging.getLogger("v2m.backend.step")


class StepModel(Protocol):
    """What `guided_stage` needs of a model family."""

    dtype: torch.dtype
    TEXT_INPUTS: tuple[str, ...]  # branch-batch arrays `text_context` reads
    CONTEXT: tuple[str, ...]  # names of the per-generation tensors it returns
    SCHEDULE: tuple[str, ...]  # names of the per-schedule tensors `schedule` returns

    def text_context(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Per-generation tensors from the branch batch (G*B rows), in `CONTEXT` order."""

    def schedule(self, t_model: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-schedule tensors for the model times of every stage (K,), in `SCHEDULE` order."""

    def __call__(self, x_in: torch.Tensor, k: torch.Tensor, curve: torch.Tensor, sched: tuple, ctx: tuple) -> torch.Tensor:
        """Model output (G*B, C, L) in fp32 at stage k (int64 (1,)) for input x_in (G*B, C, L) fp32."""


def guided_stage(
    model: StepModel,
    x_base: torch.Tensor,
    x_eval: torch.Tensor,
    d_prev: torch.Tensor,
    k: torch.Tensor,
    coef: torch.Tensor,
    noise: torch.Tensor,
    weights: torch.Tensor,
    curve: torch.Tensor,
    sched: tuple,
    ctx: tuple,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One solver stage with guidance; the only place guidance is combined or a solver update made.

    Args:
        x_base, x_eval, d_prev: (B, C, L) fp32 solver state (see `v2m.runtime.sampler`).
        k: (1,) int64 stage index (device-side, so a captured graph replays every stage).
        coef: (K, 7) fp32 stage coefficients (`sampler.COEF_COLUMNS`).
        noise: (N, B, C, L) fp32; stage k adds noise[k % N] times its `cn`. None for a table
            without noise (`SolverTable.stochastic` false): the eager path skips the term; the
            exported graph always takes the tensor.
        weights: (G,) fp32 guidance weights of the branches stacked in the model batch.
        curve: (G*B, 1, L) the branches' curves (fp32).

    Returns:
        x_out (B, C, L) fp32, d (B, C, L) fp32.
    """
    c_in, p, q, cx, ca, cb, cn = coef.index_select(0, k).reshape(-1).unbind(0)  # 7 scalars
    g = weights.shape[0]
    x_in = (c_in * x_eval).repeat(g, 1, 1)  # (G*B, C, L), branch-major
    out = model(x_in, k, curve, sched, ctx).view(g, *x_eval.shape)  # (G, B, C, L) fp32
    guided = (weights.view(g, 1, 1, 1) * out).sum(0)  # (B, C, L): sum_g w_g out_g
    d = p * x_eval + q * guided
    x_out = cx * x_base + ca * d + cb * d_prev
    if noise is not None:
        x_out = x_out + cn * noise.index_select(0, torch.remainder(k, noise.shape[0])).squeeze(0)  # (B, C, L)
    return x_out, d


def stage_tensors(table, weights: np.ndarray, stage_noise: np.ndarray | None, shape: tuple[int, int, int], device):
    """(coef (K, 7), noise (N, B, C, L), weights (G,)) as fp32 device tensors."""
    coef = torch.from_numpy(np.ascontiguousarray(table.coef, dtype=np.float32)).to(device)
    if stage_noise is None:
        noise = torch.zeros((1, *shape), dtype=torch.float32, device=device)
    else:
        noise = torch.from_numpy(np.ascontiguousarray(stage_noise, dtype=np.float32)).to(device)
    w = torch.from_numpy(np.asarray(weights, dtype=np.float32)).to(device)
    return coef, noise, w


def branch_tensors(plan, cond, device) -> dict[str, torch.Tensor]:
    """The branch batch of a plan (`sampler.branch_batch`, `global_batch`) as fp32 device tensors:
    curve, text, text_mask and (when the conditioning has one) global_cond."""
    from ..sampler import branch_batch, global_batch

    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(device)
    curve, text, mask = branch_batch(plan.guidance, cond)
    out = {"curve": as_t(curve), "text": as_t(text), "text_mask": as_t(mask)}
    glob = global_batch(plan.guidance, cond)
    if glob is not None:
        out["global_cond"] = as_t(glob)
    return out


def make_stage(model: StepModel, k: torch.Tensor, coef, noise, weights, curve, sched, ctx):
    """The stage callable `sampler.solver_step` drives: runs `guided_stage` at k, then k += 1."""

    def stage(x_base, x_eval, d_prev):
        out = guided_stage(model, x_base, x_eval, d_prev, k, coef, noise, weights, curve, sched, ctx)
        k.add_(1)
        return out

    return stage


def _kv_pairs(text_kv: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(depth, 2, B, H, S, Dh) -> per block (K, V) views."""
    return [(kv[0], kv[1]) for kv in text_kv.unbind(0)]


# --- v2m's DiT --------------------------------------------------------------------------------
class DiTStepModel:
    """`models/dit.py`'s DiT behind the `StepModel` interface.

    Args:
        dit: the DiT (eval mode) in its compute dtype.
        backbone: the per-step function (default `dit.backbone`); the fast path passes a
            compiled one or the fused Triton one (`torch_fused.triton_backbone`).
    """

    TEXT_INPUTS = ("text", "text_mask")
    CONTEXT = ("text_kv", "text_bias")
    SCHEDULE = ("mods", "finals")

    def __init__(self, dit: nn.Module, backbone=None):
        self.dit = dit
        self.backbone = backbone or dit.backbone
        self.dtype = next(dit.parameters()).dtype

    def text_context(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Every block's text K/V stacked (depth, 2, G*B, H, S, Dh) and the key bias (G*B, 1, 1, S)."""
        kvs, bias = self.dit.text_context(inputs["text"].to(self.dtype), inputs["text_mask"])
        return torch.stack([torch.stack([k, v]) for k, v in kvs]), bias

    @torch.no_grad()
    def schedule(self, t_model: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """adaLN modulations of every stage, (depth, K, 6, D) and (K, 2, D), in the model dtype.

        The math (sinusoid, timestep MLP, SiLU, every block's modulation Linear) runs in fp32
        on weights upcast one layer at a time, whatever the model dtype: it runs once per
        schedule, so precision is free here. In fp32 it is `dit.time_modulations`.
        """
        from v2m.models.dit import timestep_features

        dit = self.dit
        lin = lambda m, x: F.linear(x, m.weight.float(), m.bias.float())
        feats = timestep_features(t_model.float(), dit.t_embed.freq_dim)  # (K, F) fp32
        mlp = dit.t_embed.mlp
        c_act = F.silu(lin(mlp[2], F.silu(lin(mlp[0], feats))))  # (K, D)
        n = c_act.shape[0]
        mods = torch.stack([lin(blk.ada, c_act).view(n, 6, -1) for blk in dit.blocks])  # (depth, K, 6, D)
        final = lin(dit.ada_out, c_act).view(n, 2, -1)  # (K, 2, D)
        return mods.to(self.dtype), final.to(self.dtype)

    def __call__(self, x_in, k, curve, sched, ctx) -> torch.Tensor:
        mods, finals = sched
        text_kv, bias = ctx
        gb = x_in.shape[0]
        m = mods.index_select(1, k).expand(-1, gb, -1, -1)  # (depth, G*B, 6, D)
        f = finals.index_select(0, k).expand(gb, -1, -1)  # (G*B, 2, D)
        return self.backbone(x_in.to(self.dtype), curve.to(self.dtype), m, f, _kv_pairs(text_kv), bias).float()


# --- Stable Audio Open's DiT --------------------------------------------------------------------
class SAOStepModel:
    """`models/sao_dit.py`'s DiT behind the `StepModel` interface.

    The branch batch's `text` is the conditioner's cross-attention tokens (T5 tokens and one
    token per seconds value; zeros in the unconditional branch, as stable-audio-tools and
    diffusers do) and `global_cond` its global embedding input (the same in every branch).
    The curve enters as the input-concat channel when the model has one (a V2M-Zero
    fine-tune); a model without it ignores the curve.
    """

    TEXT_INPUTS = ("text", "global_cond")
    CONTEXT = ("text_kv", "g_emb")
    SCHEDULE = ("t_emb",)

    def __init__(self, dit: nn.Module, backbone=None):
        self.dit = dit
        self.backbone = backbone or dit.backbone
        self.dtype = next(dit.parameters()).dtype
        self.curve = dit.cfg.input_concat_dim > 0

    def text_context(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Every block's cross-attention K/V stacked (depth, 2, G*B, H, S, Dh), the global embedding (G*B, D)."""
        kvs = self.dit.cross_context(inputs["text"].to(self.dtype))
        g_emb = self.dit.global_embed(inputs["global_cond"].to(self.dtype))
        return torch.stack([torch.stack([k, v]) for k, v in kvs]), g_emb

    @torch.no_grad()
    def schedule(self, t_model: torch.Tensor) -> tuple[torch.Tensor]:
        """The timestep embedding of every stage (K, D): Fourier features in fp32 (`time_embed`)."""
        return (self.dit.time_embed(t_model.float()).to(self.dtype),)

    def __call__(self, x_in, k, curve, sched, ctx) -> torch.Tensor:
        (t_emb,) = sched
        text_kv, g_emb = ctx
        t = t_emb.index_select(0, k).expand(x_in.shape[0], -1)  # (G*B, D)
        c = curve.to(self.dtype) if self.curve else None
        return self.backbone(x_in.to(self.dtype), t, g_emb, _kv_pairs(text_kv), c).float()


def step_model(dit: nn.Module, backbone=None) -> StepModel:
    """The adapter of a loaded DiT of either family."""
    from v2m.models.dit import DiT

    return DiTStepModel(dit, backbone) if isinstance(dit, DiT) else SAOStepModel(dit, backbone)
