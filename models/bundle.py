"""Create and load model bundles (the directory format is described in `v2m.core.bundle`).

`init_bundle` writes a random-weight bundle for any preset: the tiny one is what
`v2m demo` and the tests run. `load_component` builds one PyTorch module from a
bundle with strict, one-line-error loading.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import math
from pathlib import Path

import torch
from torch import nn

from v2m import families
from v2m.core import curves
from v2m.core.bundle import (
    AudioConfig,
    BundleConfig,
    CurveConfig,
    SamplerConfig,
    encoder_config,
    has_encoder_weights,
    load_config,
)
from v2m.core.errors import BundleError, OutputError

from . import dinov2 as dinov2_mod
from . import dit as dit_mod
from . import sao_bundle, t5
from . import text as text_mod
from . import vae as vae_mod
from .checkpoint import apply_state_dict, load_safetensors, save_safetensors

__all__ = ["BUNDLE_PRESETS", "PRESET_NAMES", "bundle_config", "init_bundle", "load_component", "build_component", "randomize_weights"]

log = logging.getLogger("v2m.bundle")

IMAGENET_MEAN, IMAGENET_STD = dinov2_mod.IMAGENET_MEAN, dinov2_mod.IMAGENET_STD

# preset -> (DiT, VAE, DINOv2 preset, encoder input px, text preset)
BUNDLE_PRESETS: dict[str, tuple[str, str, str, int, str]] = {
    "tiny": ("tiny", "tiny", "tiny", 112, "tiny"),
    "small": ("small", "small", "vits14", 224, "small"),
    "full": ("full", "full", "vitl14", 224, "full"),
}
# Every preset `init_bundle` takes: V2M-Zero's and Stable Audio Open's (`v2m.models.sao_bundle`).
PRESET_NAMES = (*BUNDLE_PRESETS, *sao_bundle.SAO_PRESETS)


def bundle_config(preset: str, encoder: str = "dinov2") -> BundleConfig:
    """The config of a random bundle of `preset` (tiny, small, full, or an SAO preset) with frame
    encoder `encoder` (dinov2, or weight-free cut / motion: `v2m.runtime.encoders`)."""
    if preset in sao_bundle.SAO_PRESETS:
        cfg = sao_bundle.bundle_config(preset)
        return cfg if encoder == "dinov2" else dataclasses.replace(cfg, encoder=encoder_config(encoder))
    if preset not in BUNDLE_PRESETS:
        raise BundleError(f"unknown preset {preset!r}; choose one of {sorted(PRESET_NAMES)}")
    dit_p, vae_p, enc_p, px, text_p = BUNDLE_PRESETS[preset]
    dit_cfg = dit_mod.PRESETS[dit_p]
    vae_cfg = vae_mod.PRESETS[vae_p]
    if vae_cfg.latent_channels != dit_cfg.latent_channels:
        raise AssertionError(f"preset {preset}: VAE and DiT latent channels differ")
    if encoder == "dinov2":
        enc = dinov2_mod.encoder_section(enc_p, px)
    else:
        enc = encoder_config(encoder)  # InputError for an unknown kind
    return BundleConfig(
        preset=preset,
        dit=dit_cfg.to_dict(),
        vae=vae_cfg.to_dict(),
        encoder=enc,
        text=text_mod.PRESETS[text_p].to_dict(),
        sampler=SamplerConfig(),
        curve=CurveConfig(std_floor=curves.STD_FLOORS.get(enc.get("kind"), 0.0)),
        audio=AudioConfig(hop_length=vae_cfg.hop_length),
    )


def build_component(cfg: BundleConfig, name: str) -> nn.Module:
    """An uninitialized module for one component of a bundle config (dispatching on its family)."""
    builder = families.of(cfg).builders.get(name)
    if builder is not None:  # the family's own DiT or conditioner (`v2m.families`)
        module, cls, config_cls = builder.split(":")
        mod = importlib.import_module(module)
        section = cfg.sao["cond"] if name == "cond" else cfg.dit
        return getattr(mod, cls)(getattr(mod, config_cls).from_dict(section))
    if name == "text" and cfg.text.get("kind") == "t5":
        return t5.T5Encoder(t5.T5Config.from_dict(cfg.text["config"]))
    if name == "vae":
        return vae_mod.OobleckDecoder(vae_mod.OobleckConfig.from_dict(cfg.vae))
    if name == "vae_encoder":  # optional (training): a random bundle's is as wide as its decoder
        from .vae_encoder import OobleckEncoder

        return OobleckEncoder(vae_mod.OobleckConfig.from_dict(cfg.vae))
    if name == "encoder":
        if cfg.encoder.get("kind") == "none":
            raise BundleError("this bundle has no frame encoder (converted without --encoder): it runs text-only")
        if cfg.encoder.get("kind", "dinov2") != "dinov2":
            raise BundleError(f"unknown frame encoder kind {cfg.encoder.get('kind')!r}")
        return dinov2_mod.DINOv2(dinov2_mod.DINOv2Config.from_dict(cfg.encoder["config"]))
    raise BundleError(f"unknown bundle component {name!r}")


def randomize_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Deterministic random init of every parameter, whatever the module's own init does."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=generator, device=p.device) / fan_in**0.5)
            elif name.endswith(("alpha", "beta")):  # Snake: log-scale parameters start at 0 (= 1)
                p.copy_(torch.randn(p.shape, generator=generator, device=p.device) * 0.1)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif "lambda" in name or "gamma" in name or name.endswith(("ls1", "ls2")):
                p.fill_(0.1)  # LayerScale
            else:
                p.copy_(torch.randn(p.shape, generator=generator, device=p.device) * 0.02)


@torch.no_grad()
def _calibrate_vae(vae: nn.Module, generator: torch.Generator, channels: int, target_rms: float = 0.1) -> None:
    """Scale the last conv so unit-Gaussian latents decode to audio of RMS `target_rms`.

    A randomly initialized Oobleck decoder's gain compounds over ~20 layers (Snake
    adds sin^2 terms); without this the random bundles' audio would sit at +40 dB
    and be clipped flat. Trained checkpoints never go through here.
    """
    z = torch.randn(1, channels, 8, generator=generator, device=next(vae.parameters()).device)
    rms = vae(z).pow(2).mean().sqrt().item()
    if rms > 0 and math.isfinite(rms):
        last = [m for m in vae.modules() if isinstance(m, nn.Conv1d) and not isinstance(m, nn.ConvTranspose1d)][-1]
        last.weight.mul_(target_rms / rms)


@torch.no_grad()
def _calibrate_encoder(enc: nn.Module, generator: torch.Generator) -> None:
    """Scale the last conv so audio of RMS 0.1 encodes to latents of RMS about 1 (the decoder's
    calibration's other side: a random encoder's gain compounds as the decoder's does)."""
    hop = math.prod(enc.cfg.strides)
    x = 0.1 * torch.randn(1, enc.cfg.audio_channels, 8 * hop, generator=generator, device=enc.conv2.weight.device)
    rms = enc.encode(x).pow(2).mean().sqrt().item()
    if rms > 0 and math.isfinite(rms):
        enc.conv2.weight.mul_(1.0 / rms)
        enc.conv2.bias.mul_(1.0 / rms)


def _init_vae_encoder(cfg: BundleConfig, out: Path, gen: torch.Generator, device, dtype, meta: dict) -> None:
    """The optional `vae_encoder` component (what `v2m train finetune` encodes music with), from its
    own generator so the other components' weights for a seed stay what they were."""
    with device:
        enc = build_component(cfg, "vae_encoder")
    randomize_weights(enc, gen)
    _calibrate_encoder(enc, gen)
    state = {k: v.to(dtype).cpu() for k, v in enc.state_dict().items()}
    save_safetensors(state, out / "vae_encoder.safetensors", metadata={**meta, "component": "vae_encoder"})


def init_bundle(
    preset: str,
    out_dir: str | Path,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    encoder: str = "dinov2",
    config: BundleConfig | None = None,
) -> Path:
    """Write a random-weight bundle of `preset` to `out_dir`.

    Args:
        encoder: the frame encoder: dinov2 (random weights), or weight-free cut / motion
            (no encoder component).
        config: a bundle config of its own instead of the preset's (`preset` and `encoder`
            are then unused): a recipe's model of a size no preset has.
        device: where the random weights are made ("cuda" makes the 1.5B-parameter
            `full` preset in seconds). Each device's generator gives its own
            weights for a seed: bundles are reproducible per device, not across.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file, not a folder; give a new or empty folder for the bundle")
    if out.exists() and any(out.iterdir()):
        if not (out / "config.json").is_file():
            raise OutputError(f"{out} exists and is not empty; choose another directory")
        if not overwrite:  # a bundle, even of this preset: its weights are not replaced silently
            raise OutputError(f"{out} holds a bundle already; pass --overwrite to replace it, or choose another directory")
    cfg = config if config is not None else bundle_config(preset, encoder)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    meta = {"format": "v2m", "preset": preset, "seed": str(seed), "weights": "random"}
    if device.type != "cpu":
        meta["made_on"] = device.type
    sao = "text" in families.of(cfg).components(cfg)  # the text encoder's weights are a component
    for name in families.of(cfg).components(cfg):
        if name == "encoder" and not has_encoder_weights(cfg.encoder):
            (out / "encoder.safetensors").unlink(missing_ok=True)  # a stale one from --overwrite
            continue
        with device:
            module = build_component(cfg, name)
        randomize_weights(module, gen)
        if name == "dit":
            module.init_weights(gen)
        if name == "vae":
            _calibrate_vae(module, gen, cfg.latent_channels)
        state = {k: v.to(dtype).cpu() for k, v in module.state_dict().items()}
        del module
        save_safetensors(state, out / f"{name}.safetensors", metadata={**meta, "component": name})
        log.info("wrote %s (%.1fM parameters)", out / f"{name}.safetensors", sum(v.numel() for v in state.values()) / 1e6)
    _init_vae_encoder(cfg, out, torch.Generator(device=device).manual_seed(seed + 2), device, dtype, meta)
    if sao:  # the T5 weights went with the components; its tokenizer is generated
        t5.make_tokenizer(out / cfg.text["tokenizer"], t5.T5Config.from_dict(cfg.text["config"]).vocab_size)
        cfg.save(out)
        return out
    text_cfg = text_mod.TextConfig(**cfg.text)
    save_safetensors(
        text_mod.init_builtin_table(text_cfg, cfg.text_dim, torch.Generator().manual_seed(seed + 1) if device.type != "cpu" else gen), out / "text.safetensors", metadata={**meta, "component": "text"}
    )
    cfg.save(out)
    return out


def load_component(
    bundle_dir: str | Path,
    name: str,
    cfg: BundleConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Build component `name` of a bundle and load its weights strictly, in eval mode."""
    bundle_dir = Path(bundle_dir)
    cfg = cfg or load_config(bundle_dir)
    path = bundle_dir / f"{name}.safetensors"
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: component '{name}' is missing ({path.name}); the bundle is incomplete")
    module = build_component(cfg, name)
    apply_state_dict(module, load_safetensors(path), where=str(path))
    return module.to(device=device, dtype=dtype).eval()
