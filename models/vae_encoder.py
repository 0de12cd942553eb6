"""Oobleck VAE encoder: stereo audio [B, 2, N] -> latents [B, C, N / hop], the training side of the VAE.

The encoder half of Stable Audio's autoencoder (stable-audio-tools
`models/autoencoders.py` `OobleckEncoder` + `VAEBottleneck`), matching diffusers'
`AutoencoderOobleck.encode(x).latent_dist.mean` (diffusers 0.42) to float32 rounding:

    audio [B, A, N] --WNConv1d(k=7)--> [B, ch, N]
    EncoderBlock x n:  ResidualUnit(dilation 1, 3, 9) -> Snake -> WNConv1d(k=2s, stride s)
    Snake -> WNConv1d(k=3) --> [B, 2C, N / hop] = (mean, scale) of the posterior

The latents a diffusion model trains on are the posterior mean (diffusers' `mode()`); the
std would be softplus(scale) + 1e-4. Snake and the residual unit are the decoder's
(`v2m.models.vae`); weight norm is folded at load as there. A bundle carries the encoder as
its optional `vae_encoder` component; its config is read off the weights' shapes
(`infer_encoder_config`), the sample rate from the bundle's `vae` section.

One function per foreign layout: `convert_diffusers_encoder` (`encoder.*` keys of an
`AutoencoderOobleck`) and `convert_stable_audio_encoder` (`...encoder.layers.N...`, the
pretransform's latent scale folded into the mean rows of the last conv).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from v2m.core.errors import BundleError

from .checkpoint import apply_state_dict, load_safetensors
from .vae import _SA_RES, OobleckConfig, ResidualUnit, Snake1d, _fold_all

__all__ = [
    "EncoderBlock",
    "OobleckEncoder",
    "convert_diffusers_encoder",
    "convert_stable_audio_encoder",
    "infer_encoder_config",
    "load_vae_encoder",
]


class EncoderBlock(nn.Module):
    """Three residual units, Snake, a downsampling conv (k = 2s, stride s)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.res_unit1 = ResidualUnit(in_dim, dilation=1)
        self.res_unit2 = ResidualUnit(in_dim, dilation=3)
        self.res_unit3 = ResidualUnit(in_dim, dilation=9)
        self.snake1 = Snake1d(in_dim)
        self.conv1 = nn.Conv1d(in_dim, out_dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_unit3(self.res_unit2(self.res_unit1(x)))
        return self.conv1(self.snake1(x))  # (B, out_dim, ~T / stride)


class OobleckEncoder(nn.Module):
    """Audio (B, audio_channels, N) -> posterior moments (B, 2 * latent_channels, ~N / hop).

    `cfg.channels` is the encoder's width (diffusers' `encoder_hidden_size`), multiplied by
    `channel_multiples` block by block in `strides` order.
    """

    def __init__(self, cfg: OobleckConfig):
        super().__init__()
        self.cfg = cfg
        mults = (1, *cfg.channel_multiples)
        ch = cfg.channels
        self.conv1 = nn.Conv1d(cfg.audio_channels, ch, kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            EncoderBlock(ch * mults[i], ch * mults[i + 1], s) for i, s in enumerate(cfg.strides)
        )
        self.snake1 = Snake1d(ch * mults[-1])
        self.conv2 = nn.Conv1d(ch * mults[-1], 2 * cfg.latent_channels, kernel_size=3, padding=1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = self.conv1(audio)  # (B, ch, N)
        for blk in self.block:
            h = blk(h)  # (B, ch * m[i + 1], ~N / prod(strides so far))
        return self.conv2(self.snake1(h))  # (B, 2C, ~N / hop)

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """The posterior mean (B, C, ~N / hop): the latents a diffusion model trains on."""
        return self.forward(audio)[:, : self.cfg.latent_channels]


# --- layouts --------------------------------------------------------------------------------
def convert_diffusers_encoder(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `AutoencoderOobleck` weights -> native: keep `encoder.*`, strip it, fold weight norm
    (diffusers' module names are the native ones). A dict without `encoder.` keys is the encoder alone."""
    if any(k.startswith("encoder.") for k in sd):
        sd = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    return _fold_all(sd)


_SA_ENCODER = re.compile(r"^(?:.*\.)?encoder\.(layers\..*)$")
_SA_ENC_BLOCK = {0: "res_unit1", 1: "res_unit2", 2: "res_unit3", 3: "snake1", 4: "conv1"}


def convert_stable_audio_encoder(sd: Mapping[str, torch.Tensor], scale: float = 1.0) -> dict[str, torch.Tensor]:
    """stable-audio-tools Oobleck encoder weights (`[pretransform.model.]encoder.layers.*`) -> native.

    `OobleckEncoder.layers` = [WNConv1d, EncoderBlock x n, SnakeBeta, WNConv1d(k=3)];
    `EncoderBlock.layers` = [ResidualUnit x 3, SnakeBeta, WNConv1d(k=2s, stride s)].
    `scale`: the pretransform's, whose encode is latents / scale: folded into the mean rows.
    """
    picked = {m.group(1): v for k, v in sd.items() if (m := _SA_ENCODER.match(k))}
    if not picked:
        raise BundleError("stable-audio-tools state dict: no `encoder.layers.*` keys (no VAE encoder)")
    folded = _fold_all(picked)
    last = max(int(k.split(".")[1]) for k in folded)
    out, bad = {}, []
    for key, value in folded.items():
        p = key.split(".")
        i, rest = int(p[1]), p[2:]
        name = None
        if i in (0, last) and len(rest) == 1:
            name = ("conv1." if i == 0 else "conv2.") + rest[0]
        elif i == last - 1 and len(rest) == 1:
            name = "snake1." + rest[0]
        elif len(rest) >= 3 and rest[0] == "layers" and rest[1].isdigit() and int(rest[1]) in _SA_ENC_BLOCK:
            sub = f"block.{i - 1}.{_SA_ENC_BLOCK[int(rest[1])]}"
            r = rest[2:]
            if sub.endswith(("snake1", "conv1")) and len(r) == 1:
                name = f"{sub}.{r[0]}"
            elif len(r) == 3 and r[0] == "layers" and r[1].isdigit() and int(r[1]) in _SA_RES:
                name = f"{sub}.{_SA_RES[int(r[1])]}.{r[2]}"
        if name is None:
            bad.append(key)
            continue
        out[name] = value.reshape(1, -1, 1) if name.endswith((".alpha", ".beta")) and value.ndim == 1 else value
    if bad:
        raise BundleError(f"stable-audio-tools state dict: {len(bad)} unrecognized encoder keys, e.g. {sorted(bad)[:3]}")
    if scale != 1.0:
        c = out["conv2.weight"].shape[0] // 2
        for k in ("conv2.weight", "conv2.bias"):
            if k in out:
                out[k] = out[k].clone()
                out[k][:c] = out[k][:c] / scale
    return out


def infer_encoder_config(sd: Mapping[str, torch.Tensor], sample_rate: int = 44100) -> OobleckConfig:
    """The OobleckConfig a native encoder state dict was made with (`channels` = encoder width)."""
    try:
        ch, audio_channels, _ = sd["conv1.weight"].shape
        latent = sd["conv2.weight"].shape[0] // 2
        n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("block."))
        mults, strides = [], []
        for b in range(n):
            out_dim, _, k = sd[f"block.{b}.conv1.weight"].shape  # (out, in, 2 * stride)
            if out_dim % ch or k % 2:
                raise BundleError(f"VAE encoder weights: block {b} has {out_dim} channels, kernel {k}")
            mults.append(out_dim // ch)
            strides.append(k // 2)
    except (KeyError, ValueError) as e:
        raise BundleError(f"VAE encoder weights: cannot infer the config ({type(e).__name__}: {e})") from None
    return OobleckConfig(latent, ch, tuple(mults), tuple(strides), audio_channels, sample_rate)


def load_vae_encoder(bundle_dir: str | Path, sample_rate: int = 44100, device="cpu") -> OobleckEncoder:
    """A bundle's `vae_encoder` component (eval, fp32), or one BundleError line saying what to add."""
    path = Path(bundle_dir) / "vae_encoder.safetensors"
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no VAE encoder (vae_encoder.safetensors), so its latents of music cannot "
                          "be made; convert the model again with a v2m that carries the encoder")
    sd = load_safetensors(path)
    model = OobleckEncoder(infer_encoder_config(sd, sample_rate))
    apply_state_dict(model, sd, where=str(path))
    return model.to(device=device, dtype=torch.float32).eval()
