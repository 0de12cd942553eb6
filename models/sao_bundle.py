"""Stable Audio Open bundles: random presets, and conversion of downloaded SAO weights to a v2m bundle.

    v2m convert SRC -o BUNDLE [--t5 DIR] [--add-curve-channel] [--encoder DIR]

SRC is either layout Stability AI and diffusers publish:

- stable-audio-tools: `model_config.json` + `model.safetensors` (`model.model.*` DiT,
  `conditioner.conditioners.*` seconds embedders, `pretransform.model.*` VAE). T5 is not
  included: `--t5` names a local Hugging Face T5 directory (config.json, model.safetensors,
  tokenizer.json) matching the config's `t5_model_name`.
- diffusers: a `StableAudioPipeline` folder (`transformer/`, `projection_model/`, `vae/`,
  `text_encoder/`, `tokenizer/`, `scheduler/`).

The bundle gets `dit`, `cond`, `vae`, `text` (T5) safetensors, the tokenizer.json, and a
config.json whose `family` is "sao" and whose `sao` section records the objective, the
sigma range and schedule, the default sampler, the fixed latent length and the
conditioner (`v2m.families.sao.SAOConfig`). `--add-curve-channel` gives a checkpoint
without one V2M-Zero's zero-initialized curve channel (outputs unchanged until trained).
A frame encoder (for the curve) comes from `--encoder` (a Hugging Face Dinov2Model
directory); without it the bundle has none and runs text-only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from v2m.core import jsonio
from v2m.core.bundle import (
    DEFAULT_SAMPLER,
    AudioConfig,
    BundleConfig,
    CurveConfig,
    SamplerConfig,
    SAOConfig,
)
from v2m.core.errors import BundleError, InputError, OutputError

from . import dinov2, sao_cond, sao_dit, t5
from . import vae as vae_mod
from .checkpoint import apply_state_dict, load_safetensors, save_safetensors

__all__ = ["SAO_PRESETS", "OBJECTIVE_DEFAULTS", "assemble", "text_config", "bundle_config", "detect_layout", "convert"]

log = logging.getLogger("v2m.convert")

# Model-card sampling defaults per objective (stable-audio-tools' configs carry none):
# SAO 1.0 samples 100 steps at CFG 7 over sigma 0.3..500; SAO Small 8 ping-pong steps without CFG.
OBJECTIVE_DEFAULTS = {
    "v": dict(steps=100, cfg_scale=7.0, sigma_min=0.3, sigma_max=500.0, sigma_schedule="exponential"),
    "rf_denoiser": dict(steps=8, cfg_scale=1.0, sigma_min=0.0, sigma_max=1.0, sigma_schedule="logsnr"),
    "rectified_flow": dict(steps=50, cfg_scale=7.0, sigma_min=0.0, sigma_max=1.0, sigma_schedule="logsnr"),
}
SAO_STRIDES = (2, 4, 4, 8, 8)  # Oobleck as Stable Audio Open ships it: hop 2048, 21.5 latent frames/s

# preset -> (DiT and conditioner preset, objective, VAE config, T5 preset, max tokens, latent frames, encoder of)
SAO_PRESETS: dict[str, tuple] = {
    "sao-1.0": ("sao-1.0", "v", vae_mod.OobleckConfig(strides=SAO_STRIDES), "t5-base", 128, 1024, "full"),
    "sao-small": ("sao-small", "rf_denoiser", vae_mod.OobleckConfig(strides=SAO_STRIDES), "t5-base", 64, 256, "full"),
    "sao-tiny": ("sao-tiny", "v", vae_mod.OobleckConfig(latent_channels=8, channels=8, strides=SAO_STRIDES),
                 "tiny", 16, 64, "tiny"),
    "sao-small-tiny": ("sao-small-tiny", "rf_denoiser",
                       vae_mod.OobleckConfig(latent_channels=8, channels=8, strides=SAO_STRIDES), "tiny", 16, 32, "tiny"),
}


def assemble(preset: str, dit: dict, cond: dict, vae_cfg: vae_mod.OobleckConfig, text_cfg: dict, objective: str,
              latent_frames: int, encoder: dict, sampler: str | None = None, **overrides) -> BundleConfig:
    """A Stable Audio Open bundle's config from its parts' config dicts, with the objective's
    model-card sampling defaults (`OBJECTIVE_DEFAULTS`, `overrides` replacing any of them)."""
    d = {**OBJECTIVE_DEFAULTS[objective], **overrides}
    sao = SAOConfig(objective=objective, sigma_min=d["sigma_min"], sigma_max=d["sigma_max"],
                    sigma_schedule=d["sigma_schedule"], sampler=sampler or DEFAULT_SAMPLER[objective],
                    latent_frames=latent_frames, cond=cond)
    # the sampler v2m runs by default: the model's own, where v2m has it (DPM++ 3M SDE, the SAO 1.0
    # model card's, needs two previous estimates; its 2M sibling is the closest one-history solver)
    solver = {"dpmpp-3m-sde": "dpmpp-2m-sde"}.get(sao.sampler, sao.sampler)
    if solver != sao.sampler:
        log.info("the model's sampler %s is not in v2m; its default solver is %s", sao.sampler, solver)
    return BundleConfig(
        preset=preset, dit=dit, vae=vae_cfg.to_dict(), encoder=encoder, text=text_cfg,
        sampler=SamplerConfig(steps=d["steps"], cfg_scale=d["cfg_scale"], max_frames=latent_frames, solver=solver),
        curve=CurveConfig(), audio=AudioConfig(sample_rate=vae_cfg.sample_rate, hop_length=vae_cfg.hop_length),
        family="sao", sao=sao.to_dict(),
    )


def text_config(t5_cfg: t5.T5Config, max_tokens: int) -> dict:
    return {"kind": "t5", "config": t5_cfg.to_dict(), "max_tokens": int(max_tokens),
            "tokenizer": "tokenizer.json", "file": "text.safetensors"}


def bundle_config(preset: str) -> BundleConfig:
    """The config of a random Stable Audio Open bundle of `preset`."""
    net, objective, vae_cfg, t5_preset, tokens, frames, enc_of = SAO_PRESETS[preset]
    return assemble(preset, sao_dit.PRESETS[net].to_dict(), sao_cond.PRESETS[net].to_dict(), vae_cfg,
                     text_config(t5.PRESETS[t5_preset], tokens), objective, frames, dinov2.encoder_section(enc_of))


# --- conversion ----------------------------------------------------------------------------------
def detect_layout(src: Path) -> str:
    """"stable-audio-tools" or "diffusers", or InputError naming what a folder of each holds."""
    if (src / "model_config.json").is_file():
        return "stable-audio-tools"
    if (src / "model_index.json").is_file() or (src / "transformer" / "config.json").is_file():
        return "diffusers"
    raise InputError(
        f"{src}: not a Stable Audio Open folder: expected model_config.json + model.safetensors "
        "(stable-audio-tools) or a diffusers pipeline (transformer/, vae/, text_encoder/, ...)"
    )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise BundleError(f"{path}: missing")
    d = jsonio.load_file(path, BundleError)
    if not isinstance(d, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return d


def _weights(d: Path, names: tuple[str, ...]) -> Path:
    for n in names:
        if (d / n).is_file():
            return d / n
    pickled = sorted(p.name for p in d.glob("*") if p.suffix in (".ckpt", ".bin", ".pt", ".pth"))
    raise BundleError(
        f"{d}: no safetensors weights (looked for {', '.join(names)})"
        + (f"; {pickled[0]} is pickled and is not loaded: save it as safetensors first" if pickled else "")
    )


def _t5_from(d: Path) -> tuple[t5.T5Encoder, Path]:
    """The T5 encoder of a local directory and its tokenizer.json (in it or in ../tokenizer/)."""
    if not (d / "config.json").is_file():
        raise InputError(f"{d}: not a T5 directory (no config.json)")
    model = t5.T5Encoder.from_pretrained(d)
    for tok in (d / "tokenizer.json", d.parent / "tokenizer" / "tokenizer.json"):
        if tok.is_file():
            return model, tok
    raise BundleError(
        f"{d}: no tokenizer.json beside the T5 weights (or in ../tokenizer/); v2m reads tokenizers only in "
        "the `tokenizers` format: save one with transformers' T5TokenizerFast(...).save_pretrained(DIR)"
    )


def _native(module: nn.Module, state: dict, where: str) -> dict[str, torch.Tensor]:
    apply_state_dict(module, state, where=where)  # strict: names and shapes checked, one line on mismatch
    return {k: v.contiguous() for k, v in module.state_dict().items()}


def _from_stable_audio(src: Path, t5_dir: Path | None) -> tuple[dict, dict]:
    cfg = _read_json(src / "model_config.json")
    if cfg.get("model_type") != "diffusion_cond":
        raise BundleError(f"{src / 'model_config.json'}: model_type {cfg.get('model_type')!r} is not 'diffusion_cond'")
    model = cfg.get("model") or {}
    if t5_dir is None:
        raise InputError(f"{src} is a stable-audio-tools checkpoint without T5 weights: pass --t5 DIR "
                         "(a local copy of the T5 model its config names, with tokenizer.json)")
    path = _weights(src, ("model.safetensors", "model.safetensors.index.json"))
    text_model, tokenizer = _t5_from(t5_dir)
    dit_cfg = sao_dit.config_from_stable_audio(model.get("diffusion") or {})
    cond_cfg, t5_name, max_tokens = sao_cond.config_from_stable_audio(model, text_model.cfg.d_model)
    log.info("stable-audio-tools model conditioned on %s (%d tokens); T5 from %s", t5_name, max_tokens, t5_dir)
    pre = model.get("pretransform") or {}
    pcfg = pre.get("config") or {}
    dec = (pcfg.get("decoder") or {})
    if pre.get("type") != "autoencoder" or dec.get("type") != "oobleck":
        raise BundleError(f"{src}: the pretransform must be an Oobleck autoencoder (got {pre.get('type')}/{dec.get('type')})")
    if (dec.get("config") or {}).get("final_tanh", True) or not (dec.get("config") or {}).get("use_snake", False):
        raise BundleError(f"{src}: an Oobleck decoder with final_tanh or without Snake is not supported")
    sd = load_safetensors(path)
    vae_native = vae_mod.convert_stable_audio_state_dict({k: v for k, v in sd.items() if k.startswith("pretransform.")})
    scale = float(pre.get("scale", 1.0))
    if scale != 1.0:  # decode(z) = decoder(z * scale): folded into the first (linear) conv
        vae_native["conv1.weight"] = vae_native["conv1.weight"] * scale
    vae_cfg = vae_mod.infer_config(vae_native, sample_rate=int(cfg.get("sample_rate", 44100)))
    objective = (model.get("diffusion") or {}).get("diffusion_objective", "v")
    if objective not in OBJECTIVE_DEFAULTS:
        raise BundleError(f"{src}: diffusion objective {objective!r} is not supported (v, rf_denoiser, rectified_flow)")
    frames = int(cfg.get("sample_size", 0)) // vae_cfg.hop_length
    if frames < 1:
        raise BundleError(f"{src / 'model_config.json'}: sample_size {cfg.get('sample_size')} is under one latent frame")
    dit_sd = sao_dit.convert_stable_audio_state_dict(sd, dit_cfg)
    cond_sd = sao_cond.convert_stable_audio_state_dict(sd, cond_cfg, prompt=(model["diffusion"]["cross_attention_cond_ids"][0]))
    parts = {"dit": (dit_cfg, dit_sd), "cond": (cond_cfg, cond_sd), "vae": (vae_cfg, vae_native),
             "text": (text_model, tokenizer, max_tokens)}
    if any(".encoder.layers." in k for k in sd if k.startswith("pretransform.")):  # for `v2m train finetune`
        from .vae_encoder import convert_stable_audio_encoder

        parts["vae_encoder"] = convert_stable_audio_encoder(
            {k: v for k, v in sd.items() if k.startswith("pretransform.")}, scale=scale)
    meta = {"objective": objective, "latent_frames": frames, "source": "stable-audio-tools", "where": str(path)}
    return parts, meta


_SCHEDULERS = {  # diffusers scheduler -> the sampler it runs
    "CosineDPMSolverMultistepScheduler": "dpmpp-2m-sde",  # what SAO 1.0 ships: DPM-Solver++(2M) SDE
}


def _from_diffusers(src: Path, t5_dir: Path | None) -> tuple[dict, dict]:
    tdir, pdir = src / "transformer", src / "projection_model"
    dit_cfg = sao_dit.config_from_diffusers(_read_json(tdir / "config.json"))
    dit_sd = sao_dit.convert_diffusers_state_dict(
        load_safetensors(_weights(tdir, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"))),
        dit_cfg)
    cond_cfg = sao_cond.config_from_diffusers(_read_json(pdir / "config.json"))
    cond_sd = sao_cond.convert_diffusers_state_dict(
        load_safetensors(_weights(pdir, ("diffusion_pytorch_model.safetensors", "model.safetensors"))), cond_cfg)
    vae = vae_mod.OobleckDecoder.from_pretrained(src / "vae")
    text_model, tokenizer = _t5_from(t5_dir or src / "text_encoder")
    if text_model.cfg.d_model != cond_cfg.text_dim:
        raise BundleError(f"{src}: T5 width {text_model.cfg.d_model} != the projection model's {cond_cfg.text_dim}")
    tok_cfg = src / "tokenizer" / "tokenizer_config.json"
    max_tokens = int(_read_json(tok_cfg).get("model_max_length", 128)) if tok_cfg.is_file() else 128
    if max_tokens > 4096:  # transformers' "no limit" sentinel
        max_tokens = 128
    sched = _read_json(src / "scheduler" / "scheduler_config.json") if (src / "scheduler" / "scheduler_config.json").is_file() else {}
    if sched.get("prediction_type", "v_prediction") != "v_prediction":
        raise BundleError(f"{src}: scheduler prediction_type {sched.get('prediction_type')!r}; SAO models predict v")
    name = sched.get("_class_name", "CosineDPMSolverMultistepScheduler")
    sampler = _SCHEDULERS.get(name)
    if sampler is None and name == "EDMDPMSolverMultistepScheduler":
        sampler = "dpmpp-2m-sde" if sched.get("algorithm_type", "dpmsolver++").startswith("sde-") else "dpmpp-2m"
    if sampler is None:
        log.warning("scheduler %s is unknown; the bundle defaults to %s", name, DEFAULT_SAMPLER["v"])
    parts = {"dit": (dit_cfg, dit_sd), "cond": (cond_cfg, cond_sd), "vae": (vae.cfg, vae.state_dict()),
             "text": (text_model, tokenizer, max_tokens)}
    vae_weights = next((src / "vae" / f for f in vae_mod._WEIGHT_FILES if (src / "vae" / f).is_file()), None)
    if vae_weights is not None:  # the encoder beside the decoder, for `v2m train finetune`
        from .vae_encoder import convert_diffusers_encoder

        raw = load_safetensors(vae_weights)
        if any(k.startswith("encoder.") for k in raw):
            parts["vae_encoder"] = convert_diffusers_encoder(raw)
    meta = {"objective": "v", "latent_frames": int(_read_json(tdir / "config.json").get("sample_size", 1024)),
            "source": "diffusers", "where": str(src), "sampler": sampler,
            "sigma_min": float(sched.get("sigma_min", 0.3)), "sigma_max": float(sched.get("sigma_max", 500.0))}
    return parts, meta


def convert(
    src: str | Path,
    out: str | Path,
    t5_dir: str | Path | None = None,
    add_curve_channel: bool = False,
    encoder_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a stable-audio-tools or diffusers Stable Audio Open folder to a v2m bundle.

    Args:
        src: the downloaded model folder.
        out: the bundle directory to write (written beside, then renamed: never half-written).
        t5_dir: a local Hugging Face T5 directory; required for stable-audio-tools, optional
            for diffusers (overrides `text_encoder/`).
        add_curve_channel: give a model without input-concat channels a zero-initialized curve channel.
        encoder_dir: a Hugging Face Dinov2Model directory for the curve's frame encoder.
        overwrite: replace an existing bundle at `out`.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(f"{src}: no such folder")
    layout = detect_layout(src)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputError(f"{out} exists and is not empty; choose another directory or pass --overwrite")
    if out.resolve() == src.resolve():
        raise OutputError("the bundle cannot be written into the source folder")
    if not out.parent.is_dir():
        raise OutputError(f"{out.parent}: the output's parent folder does not exist")
    t5_path = Path(t5_dir) if t5_dir is not None else None
    if t5_path is not None and not t5_path.is_dir():
        raise InputError(f"--t5 {t5_path}: no such folder")
    if encoder_dir is not None and not Path(encoder_dir).is_dir():
        raise InputError(f"--encoder {encoder_dir}: no such folder")

    parts, meta = (_from_stable_audio if layout == "stable-audio-tools" else _from_diffusers)(src, t5_path)
    dit_cfg, dit_sd = parts["dit"]
    dit = sao_dit.SAODiT(dit_cfg)
    dit_sd = _native(dit, dit_sd, meta["where"])
    if add_curve_channel:
        dit_sd, dit_cfg = sao_dit.add_curve_channel(dit_sd, dit_cfg)
        log.info("added a zero-initialized curve channel (input_concat_dim 1)")
    elif dit_cfg.input_concat_dim:
        log.info("the model has %d input-concat channel(s): loaded as is", dit_cfg.input_concat_dim)
    cond_cfg, cond_sd = parts["cond"]
    cond_sd = _native(sao_cond.SAOConditioner(cond_cfg), cond_sd, meta["where"])
    if cond_cfg.global_dim != dit_cfg.global_dim or cond_cfg.cond_dim != dit_cfg.cond_dim:
        raise BundleError(f"{src}: the conditioner's outputs ({cond_cfg.cond_dim}, global {cond_cfg.global_dim}) "
                          f"do not fit the DiT's inputs ({dit_cfg.cond_dim}, global {dit_cfg.global_dim})")
    vae_cfg, vae_sd = parts["vae"]
    vae_sd = _native(vae_mod.OobleckDecoder(vae_cfg), vae_sd, meta["where"])
    if vae_cfg.latent_channels != dit_cfg.latent_channels:
        raise BundleError(f"{src}: VAE latent channels {vae_cfg.latent_channels} != DiT's {dit_cfg.latent_channels}")
    text_model, tokenizer, max_tokens = parts["text"]
    if encoder_dir is not None:
        enc = dinov2.DINOv2.from_pretrained(encoder_dir)
        encoder = {"kind": "dinov2", "config": enc.cfg.to_dict(), "input_size": 224, "mean": dinov2.IMAGENET_MEAN,
                   "std": dinov2.IMAGENET_STD, "pooling": "mean_patch"}
    else:
        enc, encoder = None, {"kind": "none"}
    overrides = {k: meta[k] for k in ("sigma_min", "sigma_max") if k in meta}
    cfg = assemble("converted", dit_cfg.to_dict(), cond_cfg.to_dict(), vae_cfg,
                    text_config(text_model.cfg, max_tokens), meta["objective"], meta["latent_frames"], encoder,
                    sampler=meta.get("sampler"), **overrides)
    BundleConfig.from_dict(cfg.to_dict())  # validated as `load_config` will read it

    md = {"format": "v2m", "source": meta["source"], "converted_from": src.name, "weights": "converted"}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_safetensors(dit_sd, tmp / "dit.safetensors", metadata={**md, "component": "dit"})
        save_safetensors(cond_sd, tmp / "cond.safetensors", metadata={**md, "component": "cond"})
        save_safetensors(vae_sd, tmp / "vae.safetensors", metadata={**md, "component": "vae"})
        save_safetensors(text_model.state_dict(), tmp / "text.safetensors", metadata={**md, "component": "text"})
        if "vae_encoder" in parts:
            save_safetensors(parts["vae_encoder"], tmp / "vae_encoder.safetensors", metadata={**md, "component": "vae_encoder"})
        if enc is not None:
            save_safetensors(enc.state_dict(), tmp / "encoder.safetensors", metadata={**md, "component": "encoder"})
        shutil.copyfile(tokenizer, tmp / "tokenizer.json")
        cfg.save(tmp)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"could not write {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s, objective %s, %d latent frames)", out, meta["source"], meta["objective"], meta["latent_frames"])
    return out
