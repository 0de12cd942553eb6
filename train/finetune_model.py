"""The model side of `v2m train finetune`: a bundle's DiT made trainable, LoRA, and the bundle written back.

`Base` loads any family's DiT with one call signature for the loop,
`base(x_in, t, text, text_mask, curve, seconds) -> model output`:

- v2m's DiT (`v2m.models.dit`): the curve is an input already; `seconds` is unused.
- Stable Audio Open (`v2m.models.sao_dit`): a DiT without a curve channel gets V2M-Zero's
  zero-initialized one (`sao_dit.add_curve_channel`, the code of `v2m convert
  --add-curve-channel`); the frozen conditioner (`cond`) turns text and seconds into the
  cross-attention tokens and the global embedding each step.

LoRA (Hu et al. 2021) on the attention and MLP projections: every `nn.Linear` inside the
transformer blocks gets a rank-r update B A (A Gaussian / sqrt(in), B zero: the model starts
exactly at the base), scaled alpha / r, and is merged (W + alpha / r B A) before the bundle is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from v2m.core.bundle import BundleConfig, load_config
from v2m.models.bundle import load_component
from v2m.models.checkpoint import save_safetensors

__all__ = ["Base", "LoRALinear", "add_lora", "merge_lora", "write_bundle", "text_key"]

log = logging.getLogger("v2m.train.finetune")


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) x A^T B^T, base frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale  # (..., out)

    def merged(self) -> nn.Linear:
        lin = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        return lin


def _block_linears(dit: nn.Module):
    for name, mod in dit.named_modules():
        if name.startswith("blocks.") and isinstance(mod, nn.Linear):
            yield name, mod


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def add_lora(dit: nn.Module, rank: int, alpha: float | None, seed: int) -> int:
    """Freeze `dit` and give every Linear of its blocks a LoRA update; returns the LoRA parameter count.
    The curve channel's weights (`concat_*`, new in the base) stay trainable in full: they start at zero."""
    dit.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    for name, lin in list(_block_linears(dit)):
        _set(dit, name, LoRALinear(lin, rank, float(alpha or rank), gen))
    for name, p in dit.named_parameters():
        if name.startswith("concat_"):
            p.requires_grad_(True)
    return sum(p.numel() for p in dit.parameters() if p.requires_grad)


def merge_lora(dit: nn.Module) -> nn.Module:
    """Fold every LoRA update into its Linear (in place); the module then loads as the base's class."""
    for name, mod in list(dit.named_modules()):
        if isinstance(mod, LoRALinear):
            _set(dit, name, mod.merged())
    return dit


class Base(nn.Module):
    """A bundle's DiT (trainable) and, for Stable Audio Open, its frozen conditioner."""

    def __init__(self, bundle: Path):
        super().__init__()
        self.bundle = Path(bundle)
        self.cfg: BundleConfig = load_config(self.bundle)
        self.family = self.cfg.family
        self.added_curve = False
        dit = load_component(self.bundle, "dit", self.cfg)
        if self.family == "sao":
            from v2m.models import sao_dit

            sao = self.cfg.sao_config
            self.objective, self.clip_frames = sao.objective, sao.latent_frames
            if not dit.cfg.input_concat_dim:  # V2M-Zero's curve channel, zero-initialized
                sd, new_cfg = sao_dit.add_curve_channel(dit.state_dict(), dit.cfg)
                dit = sao_dit.SAODiT(new_cfg)
                dit.load_state_dict(sd)
                self.added_curve = True
            self.cond = load_component(self.bundle, "cond", self.cfg).requires_grad_(False)
            self.seconds_names = sao.seconds_names
        else:
            self.objective, self.clip_frames, self.cond = "v2m", None, None
        self.dit = dit.train()

    def forward(self, x, t, text, text_mask, curve, seconds):
        if self.cond is None:
            return self.dit(x, curve, t, text, text_mask)
        with torch.no_grad():
            cross, glob = self.cond(text, text_mask, seconds)
            # a dropped prompt (all-zero text rows) is the branch the sampler's CFG runs: zero cross
            # tokens, seconds' included (stable-audio-tools' null_embed), not the conditioner's output
            kept = text.flatten(1).ne(0).any(dim=1)  # (B,)
            cross = cross * kept[:, None, None].to(cross.dtype)
        return self.dit(x, t, cross, glob, curve)


def text_key(bundle: Path, cfg: BundleConfig) -> str:
    """What a bundle's text embeddings depend on: its text weights (a content key)."""
    f = bundle / cfg.text.get("file", "text.safetensors")
    h = hashlib.sha256(json.dumps(cfg.text, sort_keys=True).encode())
    if f.is_file():
        h.update(hashlib.sha256(f.read_bytes()).digest())
    folder = bundle / cfg.text["dir"] if "dir" in cfg.text else None  # a sentence encoder: its graph and tokenizer
    if folder is not None and folder.is_dir():
        for g in sorted(folder.rglob("*")):
            if g.is_file():
                h.update(g.name.encode() + hashlib.sha256(g.read_bytes()).digest())
    return h.hexdigest()[:12]


_NOT_COPIED = {"dit.safetensors", "config.json", "manifest.json", "onnx", "music_encoder"}


def write_bundle(out: Path, base: Base, dit: nn.Module, kernel: int, dtype: torch.dtype, meta: dict,
                 music: tuple[str, str] = ("logmel", "")) -> Path:
    """An ordinary bundle: the base's files, this DiT (LoRA merged, `dtype`), its config; written beside
    `out` and renamed (never half-written). The base's exported graphs are not copied (other weights)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for f in base.bundle.iterdir():
            if f.name in _NOT_COPIED or f.name.startswith("."):
                continue
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
            elif f.is_dir():  # a component folder (the sentence text encoder's graph and tokenizer)
                shutil.copytree(f, tmp / f.name)
        state = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in dit.state_dict().items()}
        save_safetensors(state, tmp / "dit.safetensors", metadata={"format": "v2m", "component": "dit",
                                                                  "weights": "finetuned", **meta})
        d = base.cfg.to_dict()
        d["dit"] = dit.cfg.to_dict()
        d["preset"] = "finetuned"
        d["curve"] = {**d["curve"], "kernel": int(kernel), "music": music[0]}  # `v2m curve music.wav` reads it
        d["sampler"] = {**d["sampler"], "empty_prompt": "null"}  # text dropout trained no prompt as the null branch
        if music[1]:  # a Hugging Face music encoder travels with the bundle
            from v2m.runtime.music_encoders import HF_DIR

            shutil.copytree(music[1], tmp / HF_DIR)
        BundleConfig.from_dict(d).save(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
