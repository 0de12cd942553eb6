"""The DiT backbone with its elementwise work in Triton kernels (`FastConfig(kernels="triton")`).

Same signature and math as `v2m.models.dit.DiT.backbone`, same weights (the
module's own Linears, read in place), but the glue between the matmuls runs
as fused kernels from `v2m.kernels`:

- `add_norm_modulate`: each branch's gated residual is folded into the next
  norm, so a block is three launches (before self-attention, before
  cross-attention, before the MLP) instead of about twenty elementwise and
  LayerNorm kernels, and the final norm + modulate is one more;
- `rope_qkv`: the QKV split, head permute and fp32 rotation of q and k in one
  launch that writes the (B, H, L, Dh) layout attention reads.

Matmuls (cuBLAS), attention (SDPA's flash / memory-efficient kernels) and GELU
stay PyTorch's. The residual stream is updated in place, so the step's peak
activation memory drops too. Numerically the kernels do the elementwise math in
fp32 and round once, where eager fp16 rounds after each op; tests hold the two
to the fp32 model within the same tolerance.

The VAE decoder gets the same treatment: `use_triton_snake` swaps every SnakeBeta
activation (seven a decoder block, at up to the audio rate) for the one-pass
`v2m.kernels.snake`, the decoder's memory-bound hot spot.

This is the alternative to `compile="inductor"`: `bench/bench_dit.py` times
both (graph+triton, graph+compile) in one run, and the choice is explicit in
`FastConfig` and logged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from v2m.core.errors import BackendUnavailable

__all__ = ["triton_backbone", "TritonSnake1d", "use_triton_snake"]


def triton_backbone(dit: nn.Module):
    """`dit.backbone` with fused Triton elementwise kernels: (x, curve, mods, final, kvs, bias) -> v."""
    from v2m.kernels.adaln import add_norm_modulate
    from v2m.kernels.rope import rope_qkv, triton_available
    from v2m.models.dit import rope_tables

    if not triton_available():
        raise BackendUnavailable(
            "kernels='triton' needs the triton package and a CUDA device; use kernels='torch' (CLI --kernels torch)"
        )
    cfg = dit.cfg
    eps, heads, width = cfg.norm_eps, cfg.heads, cfg.width
    tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (L, device) -> cos, sin: fixed per shape

    def backbone(x, curve, mods, final, kvs, bias):
        b, _, n = x.shape
        h = dit.in_proj(torch.cat([x, curve], dim=1).transpose(1, 2))  # (B, L, D), updated in place below
        key = (n, x.device)
        if key not in tables:  # made on the first (warm-up) call, so a captured graph only reads them
            tables[key] = rope_tables(n, cfg.head_dim, cfg.rope_theta, x.device)  # (L, Dh/2) fp32
        cos, sin = tables[key]
        y = gate = None  # the previous branch's output, joined to h inside the next norm
        for blk, mod, (k, v) in zip(dit.blocks, mods.unbind(0), kvs):
            sh1, sc1, g1, sh2, sc2, g2 = mod.unbind(1)  # 6 x (B, D)
            h, a = add_norm_modulate(h, y, gate, None, None, sh1, sc1, eps, out_h=h)
            q, kk, vv = rope_qkv(blk.attn.qkv(a), cos, sin, heads)  # 3 x (B, H, L, Dh)
            o = F.scaled_dot_product_attention(q, kk, vv)  # (B, H, L, Dh)
            y = blk.attn.out(o.transpose(1, 2).reshape(b, n, width))  # (B, L, D)
            h, c = add_norm_modulate(h, y, g1, blk.norm2.weight, blk.norm2.bias, None, None, eps, out_h=h)
            y = blk.cross(c, k, v, bias)
            h, m = add_norm_modulate(h, y, None, None, None, sh2, sc2, eps, out_h=h)
            y, gate = blk.mlp(m), g2
        shift, scale = final.unbind(1)  # (B, D) each
        _, out = add_norm_modulate(h, y, gate, None, None, shift, scale, eps, out_h=h)
        return dit.out_proj(out).transpose(1, 2)  # (B, L, C) -> (B, C, L)

    return backbone


class TritonSnake1d(nn.Module):
    """`Snake1d` through `v2m.kernels.snake`, sharing the original's parameters (same state-dict keys).

    The fp32 exp'd parameters are computed once here: weights do not change at inference.
    """

    def __init__(self, src: nn.Module):
        from v2m.kernels.snake import snake_params

        super().__init__()
        self.alpha, self.beta = src.alpha, src.beta
        self._alpha, self._inv_beta = snake_params(src.alpha, src.beta)

    def _apply(self, fn, recurse=True):  # .to(device / dtype): move the cache, keep it fp32
        super()._apply(fn, recurse)
        from v2m.kernels.snake import snake_params

        self._alpha, self._inv_beta = snake_params(self.alpha, self.beta)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from v2m.kernels.snake import snake

        return snake(x, self._alpha, self._inv_beta)


def use_triton_snake(vae: nn.Module) -> int:
    """Replace every `Snake1d` of a VAE decoder in place by `TritonSnake1d`; returns how many."""
    from v2m.kernels.snake import triton_available
    from v2m.models.vae import Snake1d

    if not triton_available():
        raise BackendUnavailable(
            "kernels='triton' needs the triton package and a CUDA device; use kernels='torch' (CLI --kernels torch)"
        )
    n = 0
    for parent in list(vae.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Snake1d):
                setattr(parent, name, TritonSnake1d(child))
                n += 1
    return n
