"""Stable Audio Open diffusion transformer: the DiT of SAO 1.0 and SAO Small, latents [B, C, L].

Stable Audio Open (Evans et al. 2024, "Stable Audio Open"; Novack et al. 2025 for
SAO Small) denoises Oobleck VAE latents with the `DiffusionTransformer` of
stable-audio-tools (`models/dit.py`, `models/transformer.py`). This file matches
that module and diffusers' port, `diffusers.StableAudioDiTModel` (diffusers 0.42),
to float32 rounding given the same weights:

    t [B] --Fourier(2 pi t w: cos, sin)--> MLP --> t_emb [B, D]
    global_cond [B, Dg] (seconds embeddings) --MLP (no bias)--> g_emb [B, D]
    cross_cond [B, S, Dc] (T5 tokens + one token per seconds value) --MLP (no bias)--> ctx [B, S, Dx]
    x [B, C, L] --1x1 conv residual (zero-init)--> Linear(C -> D) --> h [B, L, D]
    h = [g_emb + t_emb ; h]                    # one prepended token: [B, 1 + L, D]
    block (pre-LayerNorm):  h += SelfAttn(LN(h))      fused QKV, partial rotary on the first R dims
                            h += CrossAttn(LN(h), ctx) K/V heads = Dx / Dh, repeated to H (GQA)
                            h += GLU-FF(LN(h))        Linear(D -> 2F), x * SiLU(gate), Linear(F -> D)
    out = Linear(D -> C)(h)[:, 1:] --1x1 conv residual (zero-init)--> [B, C, L]

Neither reference masks cross-attention: stable-audio-tools drops the mask ("kernel
issue") and diffusers' pipeline passes none; padded T5 positions are zero vectors
that are attended to. This model does the same, so there is no mask input.

The model output is what the objective defines: v-diffusion ("v", SAO 1.0) with the
k-diffusion VDenoiser convention (t = atan(sigma) * 2 / pi, input scaled by
c_in = 1 / sqrt(sigma^2 + 1)), or rectified flow ("rf_denoiser", SAO Small;
"rectified_flow"), t = sigma in [0, 1], output v = noise - data. Those scalings live in
`v2m.families.sao`, not here.

The curve channel (V2M-Zero): stable-audio-tools' `input_concat_dim` widens the
pre-process conv and the input projection to C + Ci input channels. Here those two
weights are stored split, latent block and concat block apart (`concat_*`), and the
latent path runs exactly the ops of a model without the channel; the concat path is
added after it. A zero-initialized channel (`add_curve_channel`) therefore leaves every
output bit-identical, and a model trained with the channel loads as is.

`forward` composes hoistable pieces: `time_embed(t)` (per schedule), `global_embed`
and `cross_context` (per generation), and `backbone` (per step). One small function per
foreign layout converts weights at load: `convert_diffusers_state_dict`,
`convert_stable_audio_state_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from v2m.core.errors import BundleError

from .checkpoint import config_from_dict

__all__ = [
    "SAODiTConfig",
    "PRESETS",
    "SAODiT",
    "config_from_diffusers",
    "config_from_stable_audio",
    "convert_diffusers_state_dict",
    "convert_stable_audio_state_dict",
    "add_curve_channel",
]

QK_NORMS = ("none", "ln")


@dataclass
class SAODiTConfig:
    latent_channels: int = 64  # C: stable-audio-tools `io_channels`
    width: int = 1536  # D: `embed_dim`
    depth: int = 24
    heads: int = 24  # H; head dim D / H
    cond_dim: int = 768  # Dc: conditioner token width (`cond_token_dim`)
    # Dx: context width after `to_cond_embed`; Dc when `project_cond_tokens` is false (SAO 1.0:
    # 768 = 12 K/V heads of 64), D when true (SAO Small).
    cross_dim: int = 768
    global_dim: int = 1536  # Dg: `global_cond_dim` (the seconds embeddings, concatenated)
    input_concat_dim: int = 0  # Ci: extra input channels (1 = V2M-Zero's curve)
    rotary_dim: int = 32  # R: rotated dims per head; stable-audio-tools uses max(Dh / 2, 32)
    ff_mult: float = 4.0
    qk_norm: str = "none"  # "ln": LayerNorm(Dh) on queries and keys (stable-audio-tools `attn_kwargs`)
    freq_dim: int = 256  # timestep Fourier features
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self):
        for name in ("latent_channels", "width", "depth", "heads", "cond_dim", "cross_dim", "global_dim", "freq_dim"):
            if int(getattr(self, name)) < 1:
                raise BundleError(f"SAO DiT config: {name} must be positive, got {getattr(self, name)}")
        if self.input_concat_dim < 0:
            raise BundleError(f"SAO DiT config: input_concat_dim must be >= 0, got {self.input_concat_dim}")
        if self.width % self.heads:
            raise BundleError(f"SAO DiT config: width {self.width} is not divisible by heads {self.heads}")
        dh = self.head_dim
        if self.cross_dim % dh or self.heads % (self.cross_dim // dh):
            raise BundleError(
                f"SAO DiT config: cross_dim {self.cross_dim} must be a whole number of {dh}-wide heads "
                f"that divides the {self.heads} query heads"
            )
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= dh:
            raise BundleError(f"SAO DiT config: rotary_dim {self.rotary_dim} must be even and in (0, head dim {dh}]")
        if self.qk_norm not in QK_NORMS:
            raise BundleError(f"SAO DiT config: qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.freq_dim % 2:
            raise BundleError(f"SAO DiT config: freq_dim {self.freq_dim} must be even")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def kv_heads(self) -> int:
        return self.cross_dim // self.head_dim

    @property
    def ff_dim(self) -> int:
        return int(self.width * self.ff_mult)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> SAODiTConfig:
        return config_from_dict(cls, d, "SAO DiT")

    def flops(self, batch: int, length: int, cross_len: int) -> float:
        """Forward FLOPs of one call (2 per MAC; the prepended token included), for roofline figures."""
        d, f, n = self.width, self.ff_dim, length + 1
        per_token = 2 * (4 * d * d + 2 * d * d + 3 * d * f)  # qkv + out, cross q + out, GLU in (2F) + out
        attn = 4 * n * n * d + 4 * n * cross_len * d
        io = 2 * (self.latent_channels + self.input_concat_dim) * d + 2 * d * self.latent_channels
        return float(batch * (self.depth * (n * per_token + attn) + length * io))


PRESETS: dict[str, SAODiTConfig] = {
    # stable-audio-open-1.0 model_config.json: 1.06B parameters.
    "sao-1.0": SAODiTConfig(),
    # stable-audio-open-small: 16 layers of 1024, 8 heads of 128 (rotary 64), T5 tokens projected to 1024.
    "sao-small": SAODiTConfig(width=1024, depth=16, heads=8, cross_dim=1024, global_dim=768, rotary_dim=64),
    # Tests and `v2m init-model --preset sao-tiny`: SAO 1.0's shape rules (GQA, partial rotary) in miniature.
    "sao-tiny": SAODiTConfig(latent_channels=8, width=64, depth=2, heads=4, cond_dim=32, cross_dim=32,
                             global_dim=64, rotary_dim=8, freq_dim=32),
    # SAO Small's rules in miniature: projected context, one seconds value, qk-norm off.
    "sao-small-tiny": SAODiTConfig(latent_channels=8, width=64, depth=2, heads=2, cond_dim=32, cross_dim=64,
                                   global_dim=32, rotary_dim=16, freq_dim=32),
}


# --- modules, leaves up ------------------------------------------------------------------
def timestep_features(t: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fourier features [cos(2 pi t w), sin(2 pi t w)] in fp32 (stable-audio-tools `FourierFeatures`). [B] -> [B, F]."""
    f = (2 * math.pi * t.to(torch.float32)[:, None]) @ weight.to(torch.float32)[None, :]  # (B, F/2)
    return torch.cat([f.cos(), f.sin()], dim=-1)


def rope_tables(length: int, rotary_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [N, R/2] in fp32 for positions 0..N-1 (the prepended token is position 0)."""
    inv = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))
    ang = torch.arange(length, dtype=torch.float32, device=device)[:, None] * inv[None, :]  # (N, R/2)
    return ang.cos(), ang.sin()


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate halves (x[..., :R/2], x[..., R/2:R]) of the first R dims; the rest pass. x: (B, H, N, Dh)."""
    half = cos.shape[-1]
    xf = x.float()
    x1, x2, rest = xf[..., :half], xf[..., half : 2 * half], xf[..., 2 * half :]  # (B, H, N, R/2) x2, (B, H, N, Dh-R)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)
    return out.to(x.dtype)


class FourierFeatures(nn.Module):
    """The frequencies w [F/2] of `timestep_features` (std-1 Gaussian at init, then trained)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim // 2), requires_grad=False)


class Mlp2(nn.Sequential):
    """Linear -> SiLU -> Linear: the timestep, global and context embedders (indices 0, 2 as in both references)."""

    def __init__(self, d_in: int, d_out: int, bias: bool):
        super().__init__(nn.Linear(d_in, d_out, bias=bias), nn.SiLU(), nn.Linear(d_out, d_out, bias=bias))


class SelfAttention(nn.Module):
    def __init__(self, cfg: SAODiTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.out = nn.Linear(cfg.width, cfg.width, bias=False)
        if cfg.qk_norm == "ln":
            self.q_norm = nn.LayerNorm(cfg.head_dim, eps=1e-6)
            self.k_norm = nn.LayerNorm(cfg.head_dim, eps=1e-6)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, Dh)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.out(o.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class CrossAttention(nn.Module):
    def __init__(self, cfg: SAODiTConfig):
        super().__init__()
        self.heads, self.head_dim, self.kv_heads = cfg.heads, cfg.head_dim, cfg.kv_heads
        self.q = nn.Linear(cfg.width, cfg.width, bias=False)
        self.kv = nn.Linear(cfg.cross_dim, 2 * cfg.cross_dim, bias=False)
        self.out = nn.Linear(cfg.width, cfg.width, bias=False)
        if cfg.qk_norm == "ln":
            self.q_norm = nn.LayerNorm(cfg.head_dim, eps=1e-6)
            self.k_norm = nn.LayerNorm(cfg.head_dim, eps=1e-6)

    def context(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the context, repeated to every query head: (B, H, S, Dh) each. Per generation."""
        b, s, _ = ctx.shape
        k, v = self.kv(ctx).view(b, s, 2, self.kv_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (B, Hkv, S, Dh)
        if hasattr(self, "k_norm"):
            k = self.k_norm(k)
        rep = self.heads // self.kv_heads
        if rep > 1:  # GQA: K/V head j serves query heads j*rep .. j*rep + rep - 1
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # (B, H, S, Dh)
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)
        if hasattr(self, "q_norm"):
            q = self.q_norm(q)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.out(o.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class GLUFeedForward(nn.Module):
    """Linear(D -> 2F) split into (x, gate), x * SiLU(gate), Linear(F -> D): SwiGLU with biases."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(width, 2 * hidden)
        self.out = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)  # (B, N, F) each
        return self.out(h * F.silu(gate))


class SAOBlock(nn.Module):
    def __init__(self, cfg: SAODiTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.cross = CrossAttention(cfg)
        self.norm3 = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.ff = GLUFeedForward(cfg.width, cfg.ff_dim)

    def forward(self, h, cos, sin, k, v):
        h = h + self.attn(self.norm1(h), cos, sin)
        h = h + self.cross(self.norm2(h), k, v)
        return h + self.ff(self.norm3(h))


class SAODiT(nn.Module):
    """forward(x [B,C,L], t [B], cross_cond [B,S,Dc], global_cond [B,Dg], input_concat [B,Ci,L]) -> [B,C,L]."""

    def __init__(self, cfg: SAODiTConfig):
        super().__init__()
        self.cfg = cfg
        c, d, ci = cfg.latent_channels, cfg.width, cfg.input_concat_dim
        self.timestep_features = FourierFeatures(cfg.freq_dim)
        self.to_timestep_embed = Mlp2(cfg.freq_dim, d, bias=True)
        self.to_global_embed = Mlp2(cfg.global_dim, d, bias=False)
        self.to_cond_embed = nn.Sequential(
            nn.Linear(cfg.cond_dim, cfg.cross_dim, bias=False), nn.SiLU(), nn.Linear(cfg.cross_dim, cfg.cross_dim, bias=False)
        )
        self.preprocess_conv = nn.Conv1d(c, c, 1, bias=False)
        self.proj_in = nn.Linear(c, d, bias=False)
        if ci:
            # The widened conv [C+Ci, C+Ci] and projection [D, C+Ci] of stable-audio-tools, split by block.
            self.concat_pre_in = nn.Conv1d(ci, c, 1, bias=False)  # concat channels -> latent rows
            self.concat_pre_out = nn.Conv1d(c + ci, ci, 1, bias=False)  # every channel -> concat rows
            self.concat_proj_in = nn.Linear(ci, d, bias=False)
        self.blocks = nn.ModuleList([SAOBlock(cfg) for _ in range(cfg.depth)])
        self.proj_out = nn.Linear(d, c, bias=False)
        self.postprocess_conv = nn.Conv1d(c, c, 1, bias=False)

    @classmethod
    def from_config(cls, cfg: SAODiTConfig | Mapping) -> SAODiT:
        return cls(cfg if isinstance(cfg, SAODiTConfig) else SAODiTConfig.from_dict(cfg))

    def init_weights(self, generator: torch.Generator | None = None) -> SAODiT:
        """Random init for random bundles: every weight nonzero, so each input visibly matters
        (trained SAO zero-initializes the pre/post convs and the block outputs instead)."""
        with torch.no_grad():
            for p in self.parameters():
                g = torch.randn(p.shape, generator=generator, device=p.device)
                p.copy_(0.02 * g if p.ndim == 1 else g / math.sqrt(p[0].numel()))
            self.timestep_features.weight.copy_(
                torch.randn(self.timestep_features.weight.shape, generator=generator, device=self.proj_in.weight.device)
            )  # std 1, as stable-audio-tools' FourierFeatures
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.fill_(1.0)
            for conv in (self.preprocess_conv, self.postprocess_conv):
                conv.weight.mul_(0.1)
        return self

    # --- the hoistable pieces ---------------------------------------------------------------
    def time_embed(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] (the model's time: see the objective) -> [B, D]. Depends on t only: cache per schedule."""
        feats = timestep_features(t, self.timestep_features.weight)  # (B, F) fp32
        return self.to_timestep_embed(feats.to(self.proj_in.weight.dtype))

    def global_embed(self, global_cond: torch.Tensor) -> torch.Tensor:
        """global_cond [B, Dg] -> [B, D]. Per generation."""
        return self.to_global_embed(global_cond)

    def cross_context(self, cross_cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """cross_cond [B, S, Dc] -> per-block keys and values (B, H, S, Dh). Per generation and branch."""
        ctx = self.to_cond_embed(cross_cond)  # (B, S, Dx)
        return [blk.cross.context(ctx) for blk in self.blocks]

    def backbone(
        self,
        x: torch.Tensor,
        t_emb: torch.Tensor,
        g_emb: torch.Tensor,
        kvs: list[tuple[torch.Tensor, torch.Tensor]],
        input_concat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The per-step work: x [B, C, L] (already scaled by c_in for "v") -> model output [B, C, L]."""
        n = x.shape[-1]
        h_x = self.preprocess_conv(x) + x  # (B, C, L): the same ops with or without a concat block
        if self.cfg.input_concat_dim:
            if input_concat is None or input_concat.shape[1] != self.cfg.input_concat_dim:
                raise ValueError(f"this model takes {self.cfg.input_concat_dim} input-concat channels")
            c = input_concat.to(x.dtype)
            h_c = self.concat_pre_out(torch.cat([x, c], dim=1)) + c  # (B, Ci, L)
            h_x = h_x + self.concat_pre_in(c)
        h = self.proj_in(h_x.transpose(1, 2))  # (B, L, D)
        if self.cfg.input_concat_dim:
            h = h + self.concat_proj_in(h_c.transpose(1, 2))
        h = torch.cat([(g_emb + t_emb)[:, None, :], h], dim=1)  # (B, 1 + L, D): the prepended global token
        cos, sin = rope_tables(n + 1, self.cfg.rotary_dim, self.cfg.rope_theta, x.device)
        for blk, (k, v) in zip(self.blocks, kvs):
            h = blk(h, cos, sin, k, v)
        out = self.proj_out(h).transpose(1, 2)[:, :, 1:]  # (B, C, L): the prepended token dropped
        return self.postprocess_conv(out) + out

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cross_cond: torch.Tensor,
        global_cond: torch.Tensor,
        input_concat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.backbone(
            x, self.time_embed(t), self.global_embed(global_cond), self.cross_context(cross_cond), input_concat
        )


# --- configs of the foreign layouts -------------------------------------------------------------
def config_from_diffusers(d: Mapping) -> SAODiTConfig:
    """An SAODiTConfig from a diffusers `StableAudioDiTModel` config.json.

    diffusers has no input-concat option; a transformer whose `in_channels` exceeds its
    `out_channels` is read as one with `in - out` concat channels (fed `cat([x, c])`).
    """
    try:
        dh, heads = int(d.get("attention_head_dim", 64)), int(d.get("num_attention_heads", 24))
        kv_heads = int(d.get("num_key_value_attention_heads", 12))
        c_in, c_out = int(d.get("in_channels", 64)), int(d.get("out_channels", 64))
        cross = int(d.get("cross_attention_dim", 768))
        if kv_heads * dh != cross:
            raise BundleError(
                f"diffusers transformer config: {kv_heads} key/value heads of {dh} != cross_attention_dim {cross}"
            )
        return SAODiTConfig(
            latent_channels=c_out, width=heads * dh, depth=int(d.get("num_layers", 24)), heads=heads,
            cond_dim=int(d.get("cross_attention_input_dim", 768)), cross_dim=cross,
            global_dim=int(d.get("global_states_input_dim", 1536)), input_concat_dim=c_in - c_out,
            rotary_dim=dh // 2,  # the pipeline's `rotary_embed_dim`
            freq_dim=int(d.get("time_proj_dim", 256)),
        )
    except (TypeError, ValueError) as e:
        raise BundleError(f"diffusers transformer config is malformed: {e}") from None


# stable-audio-tools options this port implements, with the values it implements.
_SA_FIXED = {
    "patch_size": 1, "transformer_type": "continuous_transformer", "global_cond_type": "prepend",
    "timestep_cond_type": "global", "prepend_cond_dim": 0, "conformer": False, "layer_scale": False,
    "num_memory_tokens": 0, "use_sinusoidal_emb": False, "use_abs_pos_emb": False, "rotary_pos_emb": True,
    "causal": False, "final_cross_attn_ix": -1, "remove_norms": False, "sliding_window": None,
}
_ANY = lambda v: True  # noqa: E731
_SA_KWARGS = {  # option -> the values this port implements
    "attn_kwargs": {"qk_norm": lambda v: v in QK_NORMS, "differential": lambda v: v is False,
                    "feat_scale": lambda v: v is False},
    "ff_kwargs": {"mult": _ANY, "glu": lambda v: v is True, "no_bias": lambda v: v is False,
                  "use_conv": lambda v: v is False, "zero_init_output": _ANY},
    "norm_kwargs": {"eps": _ANY, "bias": _ANY, "fix_scale": _ANY, "force_fp32": _ANY},
}
_SA_KNOWN = {"io_channels", "embed_dim", "depth", "num_heads", "cond_token_dim", "project_cond_tokens",
             "global_cond_dim", "project_global_cond", "input_concat_dim", "attn_kwargs", "ff_kwargs",
             "norm_kwargs", "zero_init_branch_outputs", "diffusion_objective", "timestep_embed_dim"} | set(_SA_FIXED)


def config_from_stable_audio(diffusion: Mapping) -> SAODiTConfig:
    """An SAODiTConfig from a stable-audio-tools `model.diffusion` section (`type: dit`).

    Options this port does not implement (adaLN global conditioning, patching, memory
    tokens, differential attention, ...) are refused with a BundleError naming them.
    """
    if diffusion.get("type") != "dit":
        raise BundleError(f"stable-audio-tools model: diffusion type {diffusion.get('type')!r} is not a DiT ('dit')")
    c = dict(diffusion.get("config") or {})
    unknown = sorted(set(c) - _SA_KNOWN)
    bad = [f"{k}={c[k]!r}" for k, v in _SA_FIXED.items() if k in c and c[k] != v]
    for group, allowed in _SA_KWARGS.items():
        for k, v in dict(c.get(group) or {}).items():
            if k not in allowed or not allowed[k](v):
                bad.append(f"{group}.{k}={v!r}")
    if c.get("project_global_cond", True) is False:
        bad.append("project_global_cond=False")
    if unknown or bad:
        raise BundleError(
            "stable-audio-tools DiT options not supported by v2m: " + ", ".join(unknown + bad)
        )
    attn, ff, norm = dict(c.get("attn_kwargs") or {}), dict(c.get("ff_kwargs") or {}), dict(c.get("norm_kwargs") or {})
    try:
        width, heads = int(c["embed_dim"]), int(c["num_heads"])
        cond = int(c.get("cond_token_dim", 0))
        global_dim = int(c.get("global_cond_dim", 0))
        if cond < 1 or global_dim < 1:
            raise BundleError("stable-audio-tools DiT without cross-attention or global conditioning is not supported")
        dh = width // heads
        return SAODiTConfig(
            latent_channels=int(c["io_channels"]), width=width, depth=int(c["depth"]), heads=heads,
            cond_dim=cond, cross_dim=width if c.get("project_cond_tokens", True) else cond,
            global_dim=global_dim, input_concat_dim=int(c.get("input_concat_dim", 0)),
            rotary_dim=max(dh // 2, 32),  # ContinuousTransformer: RotaryEmbedding(max(dim_heads // 2, 32))
            ff_mult=float(ff.get("mult", 4)), qk_norm=str(attn.get("qk_norm", "none")),
            norm_eps=float(norm.get("eps", 1e-5)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"stable-audio-tools DiT config is malformed ({type(e).__name__}: {e})") from None


# --- weight layout conversions (once, at load) -----------------------------------------------
def _split_input_weights(out: dict[str, torch.Tensor], cfg: SAODiTConfig, pre: torch.Tensor, proj: torch.Tensor) -> None:
    """Fused pre-process conv [C+Ci, C+Ci, 1] and input projection [D, C+Ci] -> the native blocks."""
    c = cfg.latent_channels
    if pre.shape[0] != c + cfg.input_concat_dim or proj.shape[1] != c + cfg.input_concat_dim:
        raise BundleError(
            f"SAO DiT weights: pre-process conv {tuple(pre.shape)} / input projection {tuple(proj.shape)} do not fit "
            f"{c} latent + {cfg.input_concat_dim} concat channels"
        )
    out["preprocess_conv.weight"] = pre[:c, :c].contiguous()
    out["proj_in.weight"] = proj[:, :c].contiguous()
    if cfg.input_concat_dim:
        out["concat_pre_in.weight"] = pre[:c, c:].contiguous()
        out["concat_pre_out.weight"] = pre[c:, :].contiguous()
        out["concat_proj_in.weight"] = proj[:, c:].contiguous()


_DF_TOP = {
    "time_proj.weight": "timestep_features.weight",
    "timestep_proj.": "to_timestep_embed.",
    "global_proj.": "to_global_embed.",
    "cross_attention_proj.": "to_cond_embed.",
    "proj_out.weight": "proj_out.weight",
    "postprocess_conv.weight": "postprocess_conv.weight",
}
_DF_BLOCK = {
    "norm1.": "norm1.", "norm2.": "norm2.", "norm3.": "norm3.",
    "attn1.to_out.0.weight": "attn.out.weight", "attn2.to_q.weight": "cross.q.weight",
    "attn2.to_out.0.weight": "cross.out.weight", "ff.net.0.proj.": "ff.proj.", "ff.net.2.": "ff.out.",
}


def convert_diffusers_state_dict(sd: Mapping[str, torch.Tensor], cfg: SAODiTConfig) -> dict[str, torch.Tensor]:
    """diffusers `StableAudioDiTModel` weights -> native: fuse Q/K/V and K/V, split the input weights."""
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in ("preprocess_conv.weight", "proj_in.weight"):
            continue
        if key.startswith("transformer_blocks."):
            _, i, rest = key.split(".", 2)
            if rest in ("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn2.to_k.weight", "attn2.to_v.weight"):
                which, proj, _ = rest.split(".")  # attn1 | attn2, to_q | to_k | to_v
                fused.setdefault(f"{i}.{which}", {})[proj[-1]] = value
                continue
            new = next((rest.replace(a, b, 1) for a, b in _DF_BLOCK.items() if rest.startswith(a)), None)
            if new is None:
                bad.append(key)
            else:
                out[f"blocks.{i}.{new}"] = value
            continue
        new = next((key.replace(a, b, 1) for a, b in _DF_TOP.items() if key.startswith(a)), None)
        if new is None:
            bad.append(key)
        else:
            out[new] = value
    if bad:
        raise BundleError(f"diffusers transformer weights: {len(bad)} unrecognized keys, e.g. {sorted(bad)[:3]}")
    for name, parts in fused.items():
        i, which = name.split(".")
        need = "qkv" if which == "attn1" else "kv"
        if set(parts) != set(need):
            raise BundleError(f"diffusers transformer weights: block {i} {which} lacks {sorted(set(need) - set(parts))}")
        out[f"blocks.{i}.{'attn.qkv' if which == 'attn1' else 'cross.kv'}.weight"] = torch.cat([parts[p] for p in need])
    if "preprocess_conv.weight" not in sd or "proj_in.weight" not in sd:
        raise BundleError("diffusers transformer weights: preprocess_conv.weight or proj_in.weight is missing")
    _split_input_weights(out, cfg, sd["preprocess_conv.weight"], sd["proj_in.weight"])
    return out


_SA_BLOCK = {
    "pre_norm.gamma": "norm1.weight", "pre_norm.beta": "norm1.bias",
    "cross_attend_norm.gamma": "norm2.weight", "cross_attend_norm.beta": "norm2.bias",
    "ff_norm.gamma": "norm3.weight", "ff_norm.beta": "norm3.bias",
    "self_attn.to_qkv.weight": "attn.qkv.weight", "self_attn.to_out.weight": "attn.out.weight",
    "cross_attn.to_q.weight": "cross.q.weight", "cross_attn.to_kv.weight": "cross.kv.weight",
    "cross_attn.to_out.weight": "cross.out.weight",
    "ff.ff.0.proj.weight": "ff.proj.weight", "ff.ff.0.proj.bias": "ff.proj.bias",
    "ff.ff.2.weight": "ff.out.weight", "ff.ff.2.bias": "ff.out.bias",
}
for _a, _b in (("self_attn", "attn"), ("cross_attn", "cross")):
    for _n in ("q_norm", "k_norm"):
        for _p in ("weight", "bias"):
            _SA_BLOCK[f"{_a}.{_n}.{_p}"] = f"{_b}.{_n}.{_p}"
_SA_TOP = {
    "timestep_features.weight": "timestep_features.weight",
    "transformer.project_in.weight": None,  # split with the pre-process conv
    "preprocess_conv.weight": None,
    "transformer.project_out.weight": "proj_out.weight",
    "postprocess_conv.weight": "postprocess_conv.weight",
}


def convert_stable_audio_state_dict(sd: Mapping[str, torch.Tensor], cfg: SAODiTConfig) -> dict[str, torch.Tensor]:
    """stable-audio-tools `DiffusionTransformer` weights (`model.model.*` in a whole checkpoint) -> native.

    LayerNorm `gamma`/`beta` become `weight`/`bias` (a missing `beta`, a zero buffer in the
    reference, reads as zeros); the rotary `inv_freq` buffer is checked against the
    config's and dropped; `timestep_features.weight` [F/2, 1] is flattened.
    """
    if any(k.startswith("model.model.") for k in sd):
        sd = {k[len("model.model."):]: v for k, v in sd.items() if k.startswith("model.model.")}
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for key, value in sd.items():
        if key.startswith("transformer.layers."):
            _, _, i, rest = key.split(".", 3)
            if rest not in _SA_BLOCK:
                bad.append(key)
            else:
                out[f"blocks.{i}.{_SA_BLOCK[rest]}"] = value
        elif key == "transformer.rotary_pos_emb.inv_freq":
            want = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.rotary_dim, 2, dtype=torch.float32) / cfg.rotary_dim))
            if value.shape != want.shape or not torch.allclose(value.float(), want, rtol=1e-5):
                raise BundleError("stable-audio-tools DiT: rotary frequencies differ from the config's (a rescaled base?)")
        elif key.startswith(("to_timestep_embed.", "to_global_embed.", "to_cond_embed.")):
            out[key] = value
        elif key in _SA_TOP:
            if _SA_TOP[key] is not None:
                out[_SA_TOP[key]] = value.reshape(-1) if key == "timestep_features.weight" else value
        else:
            bad.append(key)
    if bad:
        raise BundleError(f"stable-audio-tools DiT weights: {len(bad)} unrecognized keys, e.g. {sorted(bad)[:3]}")
    for i in range(cfg.depth):  # the bias-free LayerNorm's beta is a buffer: absent means zero
        for n in ("norm1", "norm2", "norm3"):
            w = out.get(f"blocks.{i}.{n}.weight")
            if w is not None and f"blocks.{i}.{n}.bias" not in out:
                out[f"blocks.{i}.{n}.bias"] = torch.zeros_like(w)
    if "preprocess_conv.weight" not in sd or "transformer.project_in.weight" not in sd:
        raise BundleError("stable-audio-tools DiT weights: preprocess_conv or transformer.project_in is missing")
    _split_input_weights(out, cfg, sd["preprocess_conv.weight"], sd["transformer.project_in.weight"])
    return out


def add_curve_channel(
    sd: Mapping[str, torch.Tensor], cfg: SAODiTConfig, channels: int = 1
) -> tuple[dict[str, torch.Tensor], SAODiTConfig]:
    """Give a native SAO DiT without input-concat channels `channels` zero-initialized ones.

    The widened pre-process conv and input projection are zero in every new row and
    column, so the model's output stays bit-identical until the channel is trained.
    """
    if cfg.input_concat_dim:
        raise BundleError(
            f"this SAO DiT already has {cfg.input_concat_dim} input-concat channel(s); it loads as is "
            "(drop --add-curve-channel)"
        )
    new_cfg = SAODiTConfig.from_dict({**cfg.to_dict(), "input_concat_dim": channels})
    c, d = cfg.latent_channels, cfg.width
    ref = sd["proj_in.weight"]
    out = dict(sd)
    out["concat_pre_in.weight"] = ref.new_zeros(c, channels, 1)
    out["concat_pre_out.weight"] = ref.new_zeros(channels, c + channels, 1)
    out["concat_proj_in.weight"] = ref.new_zeros(d, channels)
    return out, new_cfg
