"""V2M-Zero diffusion transformer: a DiT over audio latents, conditioned on an event curve.

The V2M-Zero paper (zero-pair video-to-music) fine-tunes a text-to-music DiT so
that one extra input channel, the event curve, steers *when* the music changes.
This follows the DiT recipe (Peebles & Xie, adaLN-Zero) with the audio-DiT
choices of Stable Audio Open (rotary self-attention over latent frames,
cross-attention to text embeddings with a key mask):

    x [B, C, L] ++ curve [B, 1, L]  --per-frame Linear(C+1 -> D)-->  h [B, L, D]
    t [B] --sinusoid--> MLP --> c [B, D] --SiLU, Linear--> 6 modulations per block
    block:  h += g1 * SelfAttn_RoPE(modulate(LN(h), s1, b1))
            h += CrossAttn(LN(h), text [B, S, D], key mask)
            h += g2 * MLP(modulate(LN(h), s2, b2))
    out = Linear(modulate(LN(h), s, b)) --> velocity [B, C, L]

The curve channel is exactly D extra input weights (one column of `in_proj`).

`forward` composes three pure pieces so the runtime can hoist work that does
not change across sampler steps: `time_modulations(t)` (depends on t only, so
it can be cached for a fixed schedule), `text_context(text, text_mask)` (once
per generation), and `backbone(...)` (the per-step work).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from v2m.core.errors import BundleError

from .checkpoint import config_from_dict

__all__ = ["DiTConfig", "PRESETS", "DiT", "mask_to_bias", "MASK_BIAS"]

# Additive bias for masked text keys. Finite (not -inf) so a fully masked row
# gives uniform weights rather than NaN, and small enough to survive fp16.
MASK_BIAS = -30000.0


@dataclass
class DiTConfig:
    latent_channels: int = 64  # C: VAE latent channels
    width: int = 2048  # D
    depth: int = 16
    heads: int = 16
    mlp_dim: int = 8192
    text_dim: int = 2560  # E: text encoder width
    freq_dim: int = 256  # sinusoidal timestep features
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        if self.width % self.heads:
            raise BundleError(f"DiT width {self.width} is not divisible by heads {self.heads}")
        if (self.width // self.heads) % 2:
            raise BundleError(f"DiT head dim {self.width // self.heads} must be even for RoPE")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DiTConfig:
        return config_from_dict(cls, d, "DiT")

    def flops_per_token(self, text_len: int) -> float:
        """Forward FLOPs per latent frame (2 per MAC), for roofline figures."""
        d, m = self.width, self.mlp_dim
        per_block = 2 * (4 * d * d + 2 * d * d + 2 * d * m)  # qkv+o, cross q+o, mlp
        return self.depth * per_block + 2 * (self.latent_channels + 1) * d + 2 * d * self.latent_channels

    def flops(self, batch: int, length: int, text_len: int) -> float:
        """Forward FLOPs of one call: projections plus attention score/value products."""
        d = self.width
        dense = batch * length * self.flops_per_token(text_len)
        attn = self.depth * batch * (4 * length * length * d + 4 * length * text_len * d)
        text_kv = self.depth * batch * text_len * 2 * (2 * d * d)  # per-step unless hoisted
        return float(dense + attn + text_kv)


PRESETS: dict[str, DiTConfig] = {
    # Runs 96 CFG steps of a 5 s clip (L = 62) on a 2-core CPU in about a second.
    "tiny": DiTConfig(latent_channels=16, width=64, depth=2, heads=4, mlp_dim=128, text_dim=64, freq_dim=64),
    "small": DiTConfig(latent_channels=64, width=512, depth=8, heads=8, mlp_dim=2048, text_dim=768),
    # The paper's size: ~1.5 TFLOP per CFG step at L = 394.
    "full": DiTConfig(),
}


def mask_to_bias(text_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Key mask [B, S] (1 = keep) -> additive attention bias [B, 1, 1, S]."""
    keep = text_mask.to(torch.float32)
    return ((1.0 - keep) * MASK_BIAS).to(dtype)[:, None, None, :]  # (B, 1, 1, S)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DiT), in fp32. [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = (t.to(torch.float32) * 1000.0)[:, None] * freqs[None, :]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope_tables(length: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, head_dim / 2] for positions 0..L-1, computed in fp32."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    pos = torch.arange(length, dtype=torch.float32, device=device)
    ang = pos[:, None] * inv[None, :]  # (L, Dh/2)
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :Dh/2], x[..., Dh/2:]) by the angles; math in fp32. x: (B, H, L, Dh)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)  # (B, H, L, Dh/2) each
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.to(x.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, L, D) * (1 + scale) + shift, scale/shift (B, D)."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class TimestepEmbedder(nn.Module):
    def __init__(self, freq_dim: int, width: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t, self.freq_dim)  # (B, F) fp32
        return self.mlp(feats.to(self.mlp[0].weight.dtype))  # (B, D)


class SelfAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim)  # (B, L, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, Dh)
        return self.out(o.transpose(1, 2).reshape(b, n, d))  # (B, L, D)


class CrossAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.q = nn.Linear(cfg.width, cfg.width)
        self.kv = nn.Linear(cfg.width, 2 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)

    def context(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the text, (B, H, S, Dh) each: constant across sampler steps."""
        b, s, _ = ctx.shape
        kv = self.kv(ctx).view(b, s, 2, self.heads, self.head_dim)  # (B, S, 2, H, Dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (B, H, S, Dh)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, L, Dh)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # (B, H, L, Dh)
        return self.out(o.transpose(1, 2).reshape(b, n, d))  # (B, L, D)


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        eps = cfg.norm_eps
        self.norm1 = nn.LayerNorm(cfg.width, eps=eps, elementwise_affine=False)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=eps)  # cross-attn is not modulated (PixArt)
        self.cross = CrossAttention(cfg)
        self.norm3 = nn.LayerNorm(cfg.width, eps=eps, elementwise_affine=False)
        self.mlp = MLP(cfg.width, cfg.mlp_dim)
        self.ada = nn.Linear(cfg.width, 6 * cfg.width)  # adaLN-Zero: shift/scale/gate x 2

    def modulation(self, c_act: torch.Tensor) -> torch.Tensor:
        """SiLU(c) (B, D) -> (B, 6, D): shift1, scale1, gate1, shift2, scale2, gate2."""
        return self.ada(c_act).view(c_act.shape[0], 6, -1)  # (B, 6, D)

    def forward(self, h, mod, cos, sin, k, v, bias):
        sh1, sc1, g1, sh2, sc2, g2 = mod.unbind(1)  # 6 x (B, D)
        h = h + g1[:, None, :] * self.attn(modulate(self.norm1(h), sh1, sc1), cos, sin)
        h = h + self.cross(self.norm2(h), k, v, bias)
        h = h + g2[:, None, :] * self.mlp(modulate(self.norm3(h), sh2, sc2))
        return h


class DiT(nn.Module):
    """forward(x [B,C,L], curve [B,1,L], t [B], text [B,S,E], text_mask [B,S]) -> v [B,C,L]."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.in_proj = nn.Linear(cfg.latent_channels + 1, d)  # +1: the event-curve channel
        self.t_embed = TimestepEmbedder(cfg.freq_dim, d)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(d, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_out = nn.Linear(d, 2 * d)
        self.out_proj = nn.Linear(d, cfg.latent_channels)

    @classmethod
    def from_config(cls, cfg: DiTConfig | dict) -> DiT:
        return cls(cfg if isinstance(cfg, DiTConfig) else DiTConfig.from_dict(cfg))

    def init_weights(self, generator: torch.Generator | None = None, zero_init: bool = False) -> DiT:
        """Random init. `zero_init=True` is adaLN-Zero as trained (every block starts as the
        identity and the output is 0); random bundles use False so that every input,
        the curve included, visibly affects the output of an untrained model."""
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    std = 1.0 / math.sqrt(m.in_features)
                    m.weight.copy_(torch.randn(m.weight.shape, generator=generator, device=m.weight.device) * std)
                    m.bias.zero_()
            for lin in [blk.ada for blk in self.blocks] + [self.ada_out]:
                lin.weight.mul_(0.0 if zero_init else 0.25)
            if zero_init:
                self.out_proj.weight.zero_()
        return self

    # --- the three pieces -----------------------------------------------------------
    def time_modulations(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t [B] -> per-block modulations (depth, B, 6, D) and final (B, 2, D). Depends on t only."""
        c_act = F.silu(self.t_embed(t))  # (B, D)
        mods = torch.stack([blk.modulation(c_act) for blk in self.blocks])  # (depth, B, 6, D)
        final = self.ada_out(c_act).view(c_act.shape[0], 2, -1)  # (B, 2, D)
        return mods, final

    def text_context(
        self, text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Per-block text keys/values and the key bias. Constant across sampler steps."""
        ctx = self.text_proj(text)  # (B, S, D)
        kvs = [blk.cross.context(ctx) for blk in self.blocks]
        return kvs, mask_to_bias(text_mask, ctx.dtype)

    def backbone(self, x, curve, mods, final, kvs, bias) -> torch.Tensor:
        """The per-step work: x (B, C, L), curve (B, 1, L) -> velocity (B, C, L)."""
        b, _, n = x.shape
        h = self.in_proj(torch.cat([x, curve], dim=1).transpose(1, 2))  # (B, L, D)
        cos, sin = rope_tables(n, self.cfg.head_dim, self.cfg.rope_theta, x.device)
        for blk, mod, (k, v) in zip(self.blocks, mods.unbind(0), kvs):
            h = blk(h, mod, cos, sin, k, v, bias)
        shift, scale = final.unbind(1)  # (B, D) each
        out = self.out_proj(modulate(self.norm_out(h), shift, scale))  # (B, L, C)
        return out.transpose(1, 2)  # (B, C, L)

    def forward(
        self,
        x: torch.Tensor,
        curve: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        mods, final = self.time_modulations(t)
        kvs, bias = self.text_context(text, text_mask)
        return self.backbone(x, curve.to(x.dtype), mods, final, kvs, bias)
