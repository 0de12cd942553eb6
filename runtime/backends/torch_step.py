"""The guided solver stage, written once in torch: every engine runs this definition.

`guided_stage` is the model call on the G*B guidance batch, the guidance combine and the
solver update (the math is in `v2m.runtime.sampler`'s module docstring). It is what

- the eager torch backend calls stage by stage (`make_stage` + `sampler.sample_loop`),
- the fast path runs over static buffers, compiled, and captures in a CUDA graph
  (`torch_fast.FastSampler`: one graph per shape, solver table and guidance size),
- the exporter traces into the `step` graph that ONNX Runtime and TensorRT run
  (`v2m.export.exporter.StepGraph`).

The model enters through a small adapter (`StepModel`): `context` (once per generation:
the text keys/values and the branch curves), `schedule` (once per solver table: the
timestep embeddings and adaLN modulations of every stage, in fp32 math), and `__call__`
(the per-stage backbone). Imported only by torch backends and the exporter.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StepModel", "DiTStepModel", "guided_stage", "make_stage", "stage_tensors"]

log = logging.getLogger("v2m.backend.step")


class StepModel(Protocol):
    """What `guided_stage` needs of a model family."""

    dtype: torch.dtype

    def context(self, text_g: torch.Tensor, mask_g: torch.Tensor, curve_g: torch.Tensor) -> tuple:
        """Per-generation tensors from the branch batch (G*B rows)."""

    def schedule(self, t_model: torch.Tensor) -> tuple:
        """Per-schedule tensors for the model times of every stage (K,)."""

    def __call__(self, x_in: torch.Tensor, k: torch.Tensor, sched: tuple, ctx: tuple) -> torch.Tensor:
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
    sched: tuple,
    ctx: tuple,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One solver stage with guidance; the only place guidance is combined or a solver update made.

    Args:
        x_base, x_eval, d_prev: (B, C, L) fp32 solver state (see `v2m.runtime.sampler`).
        k: (1,) int64 stage index (device-side, so a captured graph replays every stage).
        coef: (K, 7) fp32 stage coefficients (`sampler.COEF_COLUMNS`).
        noise: (N, B, C, L) fp32; stage k adds noise[k % N] times its `cn`.
        weights: (G,) fp32 guidance weights of the branches stacked in the model batch.

    Returns:
        x_out (B, C, L) fp32, d (B, C, L) fp32.
    """
    c_in, p, q, cx, ca, cb, cn = coef.index_select(0, k).reshape(-1).unbind(0)  # 7 scalars
    g = weights.shape[0]
    x_in = (c_in * x_eval).repeat(g, 1, 1)  # (G*B, C, L), branch-major
    out = model(x_in, k, sched, ctx).view(g, *x_eval.shape)  # (G, B, C, L) fp32
    guided = (weights.view(g, 1, 1, 1) * out).sum(0)  # (B, C, L): sum_g w_g out_g
    d = p * x_eval + q * guided
    n = noise.index_select(0, torch.remainder(k, noise.shape[0])).squeeze(0)  # (B, C, L)
    x_out = cx * x_base + ca * d + cb * d_prev + cn * n
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


def make_stage(model: StepModel, k: torch.Tensor, coef, noise, weights, sched, ctx):
    """The stage callable `sampler.solver_step` drives: runs `guided_stage` at k, then k += 1."""

    def stage(x_base, x_eval, d_prev):
        out = guided_stage(model, x_base, x_eval, d_prev, k, coef, noise, weights, sched, ctx)
        k.add_(1)
        return out

    return stage


# --- the v2m DiT as a step model --------------------------------------------------------------
class DiTStepModel:
    """`models/dit.py`'s DiT behind the `StepModel` interface.

    Args:
        dit: the DiT (eval mode) in its compute dtype.
        backbone: the per-step function (default `dit.backbone`); the fast path passes a
            compiled one or the fused Triton one (`torch_fused.triton_backbone`).
    """

    def __init__(self, dit: nn.Module, backbone=None):
        self.dit = dit
        self.backbone = backbone or dit.backbone
        self.dtype = next(dit.parameters()).dtype

    def context(self, text_g, mask_g, curve_g) -> tuple:
        """(curve (G*B, 1, L), per-block text K/V, key bias (G*B, 1, 1, S)) in the model dtype."""
        kvs, bias = self.dit.text_context(text_g.to(self.dtype), mask_g)
        return curve_g.to(self.dtype), kvs, bias

    @torch.no_grad()
    def schedule(self, t_model: torch.Tensor) -> tuple:
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

    def __call__(self, x_in, k, sched, ctx) -> torch.Tensor:
        mods, finals = sched
        curve, kvs, bias = ctx
        gb = x_in.shape[0]
        m = mods.index_select(1, k).expand(-1, gb, -1, -1)  # (depth, G*B, 6, D)
        f = finals.index_select(0, k).expand(gb, -1, -1)  # (G*B, 2, D)
        return self.backbone(x_in.to(self.dtype), curve, m, f, kvs, bias).float()
