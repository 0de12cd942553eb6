"""How big a bundle's models are, from config.json alone, before anything is built.

A config whose sizes are each within `config_schema`'s ranges can still add up to
more than the machine holds (a DiT 32768 wide and 1024 deep is 13 trillion
parameters): building it would allocate until the process dies. `check_model_size`
estimates, per component, the parameters (one small function per architecture: v2m's
DiT, the Oobleck VAE, DINOv2, the text table, T5, Stable Audio Open's DiT and
conditioner) and the largest activations of one generation at the bundle's longest
window, and refuses (BundleError, one line naming the section's size keys) a bundle
that cannot fit in this machine's memory. Where a component's safetensors file is
present, its header (read without loading a tensor) gives the stored parameter count:
a config that describes a much larger or smaller model than its weights is a wrong
checkpoint, refused before building.

The estimates count every weight matrix, embedding and bias; norms' affine parameters
and other per-channel vectors are left out (a fraction of a percent at real sizes).
`tests/models/test_model_size.py` checks them against modules built on PyTorch's meta
device.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any

from . import jsonio
from .errors import BundleError

__all__ = ["FP32", "component_params", "activation_bytes", "stored_params", "memory_bytes", "check_model_size"]

FP32 = 4  # bytes a parameter or activation takes as the loader builds it (fp32 on the CPU first)
# branches of one guided batch (text, unconditional, curve-free) and frames the encoder takes at once
GUIDANCE_BRANCHES, ENCODER_BATCH = 3, 32
# a config within this factor of its weights' parameter count is the same model (the
# estimate leaves out norms); further off, config.json and the weights do not belong together
MISMATCH = 1.5


def _lin(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def v2m_dit_params(d: dict[str, Any]) -> int:
    """V2M-Zero's DiT (`v2m.models.dit`)."""
    w, m, c = d["width"], d["mlp_dim"], d["latent_channels"]
    block = _lin(w, 3 * w) + _lin(w, w) + _lin(w, w) + _lin(w, 2 * w) + _lin(w, w) + _lin(w, m) + _lin(m, w) + _lin(w, 6 * w)
    return (_lin(d["freq_dim"], w) + _lin(w, w) + _lin(c + 1, w) + _lin(d["text_dim"], w) + d["depth"] * block
            + _lin(w, 2 * w) + _lin(w, c))


def sao_dit_params(d: dict[str, Any]) -> int:
    """Stable Audio Open's DiT (`v2m.models.sao_dit`)."""
    w, c, ci, x = d["width"], d["latent_channels"], d["input_concat_dim"], d["cross_dim"]
    hidden = int(w * d["ff_mult"])
    block = 4 * w * w + 2 * w * w + 2 * x * x + _lin(w, 2 * hidden) + _lin(hidden, w)
    concat = ci * c + (c + ci) * ci + ci * w if ci else 0
    return (_lin(d["freq_dim"], w) + _lin(w, w) + d["global_dim"] * w + w * w + d["cond_dim"] * x + x * x
            + c * c + c * w + concat + d["depth"] * block + w * c + c * c)


def vae_params(d: dict[str, Any]) -> int:
    """The Oobleck VAE decoder (`v2m.models.vae`): convolutions over the channel ladder."""
    ch, strides = d["channels"], d["strides"]
    mults = (1, *d["channel_multiples"])
    n, total = len(strides), 0
    for i, s in enumerate(reversed(strides)):
        cin, cout = ch * mults[n - i], ch * mults[n - i - 1]
        total += cin * cout * 2 * s + cout + 3 * (cout * cout * 7 + cout + cout * cout + cout)
    return total + _lin(d["latent_channels"] * 7, ch * mults[-1]) + ch * d["audio_channels"] * 7


def dinov2_params(d: dict[str, Any]) -> int:
    """DINOv2 (`v2m.models.dinov2`) at its pretraining grid."""
    h, p = d["hidden_size"], d["patch_size"]
    hidden = int(h * d["mlp_ratio"])
    mlp = _lin(h, hidden) + _lin(hidden, h)
    if d.get("use_swiglu_ffn"):
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        mlp = _lin(h, 2 * hidden) + _lin(hidden, h)
    block = _lin(h, 3 * h) + _lin(h, h) + mlp
    grid = d["image_size"] // p
    return _lin(3 * p * p, h) + (1 + grid * grid + d.get("num_register_tokens", 0)) * h + d["num_layers"] * block


def t5_params(d: dict[str, Any]) -> int:
    """T5's encoder (`v2m.models.t5`)."""
    e, inner = d["d_model"], d["num_heads"] * d["d_kv"]
    ff = (3 if d.get("feed_forward_proj", "relu").startswith("gated-") else 2) * e * d["d_ff"]
    return d["vocab_size"] * e + d["num_layers"] * (4 * e * inner + ff)


def sao_cond_params(d: dict[str, Any]) -> int:
    """Stable Audio Open's seconds/text conditioner (`v2m.models.sao_cond`)."""
    proj = _lin(d["text_dim"], d["cond_dim"]) if d["text_dim"] != d["cond_dim"] else 0
    return proj + len(d["numbers"]) * (d["number_features"] // 2 + _lin(d["number_features"] + 1, d["cond_dim"]))


def component_params(cfg) -> dict[str, int]:
    """Estimated parameters of each component with weights, from a `BundleConfig`."""
    sao = cfg.family == "sao"
    out = {"dit": sao_dit_params(cfg.dit) if sao else v2m_dit_params(cfg.dit), "vae": vae_params(cfg.vae)}
    if cfg.encoder.get("kind", "dinov2") == "dinov2":
        out["encoder"] = dinov2_params(cfg.encoder["config"])
    kind = cfg.text.get("kind", "builtin")
    if kind == "t5":
        out["text"] = t5_params(cfg.text["config"])
    elif kind == "builtin":
        out["text"] = cfg.text["vocab_size"] * cfg.text_dim
    if sao:
        out["cond"] = sao_cond_params(cfg.sao["cond"])
    return out


def activation_bytes(cfg) -> int:
    """The largest activations of one generation at the longest window (batch 1, fp32):
    the DiT's guided batch (hidden states, MLP, attention scores), the VAE decoder's widest
    level, the frame encoder's batch. Not summed: they are not alive at once."""
    g = GUIDANCE_BRANCHES
    length = cfg.sao["latent_frames"] + 1 if cfg.family == "sao" else cfg.sampler.max_frames
    d = cfg.dit
    mlp = int(d["width"] * d["ff_mult"]) * 2 if cfg.family == "sao" else d["mlp_dim"]
    dit = g * length * (4 * d["width"] + mlp) + g * d["heads"] * length * length
    v, n = cfg.vae, len(cfg.vae["strides"])
    mults, samples = (1, *v["channel_multiples"]), length
    vae = length * v["channels"] * mults[-1]
    for i, s in enumerate(reversed(v["strides"])):
        samples *= s
        vae = max(vae, 2 * samples * v["channels"] * mults[n - i - 1])  # a residual unit's input and output
    enc = 0
    if cfg.encoder.get("kind", "dinov2") == "dinov2":
        e = cfg.encoder["config"]
        tokens = 1 + (cfg.encoder["input_size"] // e["patch_size"]) ** 2
        enc = ENCODER_BATCH * tokens * (4 * e["hidden_size"] + int(e["hidden_size"] * e["mlp_ratio"]))
        enc += ENCODER_BATCH * e["num_heads"] * tokens * tokens
    return FP32 * max(dit, vae, enc)


def memory_bytes() -> int:
    """This machine's physical memory (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def stored_params(path: Path) -> int | None:
    """Parameters in a safetensors file, from its header alone (None: no such file)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * 2**20:
                raise BundleError(f"{path}: a {n}-byte header; not a safetensors file")
            header = jsonio.loads(f.read(n), str(path), BundleError)
    except FileNotFoundError:
        return None
    except (OSError, struct.error) as e:
        raise BundleError(f"{path}: not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise BundleError(f"{path}: not a safetensors file (its header is not an object)")
    total = 0
    for name, t in header.items():
        shape = t.get("shape") if isinstance(t, dict) and name != "__metadata__" else None
        if isinstance(shape, list) and all(isinstance(x, int) and x >= 0 for x in shape):
            total += math.prod(shape)
    return total


# the keys named when a section is too big: the ones that scale it
SIZE_KEYS = {
    "dit": ("width", "depth", "heads", "mlp_dim", "latent_channels", "text_dim", "cross_dim", "ff_mult"),
    "vae": ("channels", "channel_multiples", "strides", "latent_channels"),
    "encoder": ("input_size",),
    "text": ("vocab_size",),
    "cond": ("cond_dim", "number_features"),
}


def _keys(cfg, name: str) -> str:
    section = cfg.sao["cond"] if name == "cond" else getattr(cfg, name)
    shown = [f"{'sao.cond' if name == 'cond' else name}.{k} {section[k]}" for k in SIZE_KEYS[name] if k in section]
    if name == "encoder" and "config" in section:
        c = section["config"]
        shown += [f"encoder.config.{k} {c[k]}" for k in ("hidden_size", "num_layers") if k in c]
    if name == "text" and "config" in section:
        c = section["config"]
        shown += [f"text.config.{k} {c[k]}" for k in ("d_model", "num_layers", "vocab_size") if k in c]
    return ", ".join(shown) or name


def _gb(n: float) -> str:
    return f"{n / 2**30:.3g} GB"


def check_model_size(cfg, bundle_dir: str | Path | None, where: str, memory: int | None = None) -> dict[str, int]:
    """Refuse (BundleError) a config whose models cannot fit here or do not match their weights.

    Args:
        bundle_dir: where the component files are (None: no weights to compare).
        memory: bytes available (default: `memory_bytes()`; 0 = unknown, not checked).
    Returns:
        the estimated parameters of each component.
    """
    params = component_params(cfg)
    memory = memory_bytes() if memory is None else memory
    if bundle_dir is not None:
        for name, n in params.items():
            stored = stored_params(Path(bundle_dir) / f"{name}.safetensors")
            if stored and not stored / MISMATCH <= n <= stored * MISMATCH:
                raise BundleError(
                    f"{where}: its {name} section ({_keys(cfg, name)}) describes {n / 1e6:.3g}M parameters but "
                    f"{name}.safetensors holds {stored / 1e6:.3g}M: config.json and the weights are not one model"
                )
    act = activation_bytes(cfg)
    need = FP32 * sum(params.values()) + act
    if memory and need > memory:
        big = max(params, key=params.get)
        what = (f"{big} ({_keys(cfg, big)}: {params[big] / 1e9:.3g}B parameters)"
                if FP32 * params[big] >= act else "activations of one window: sampler.max_frames, dit.heads, vae.channels")
        raise BundleError(
            f"{where}: the models need about {_gb(need)} ({what}), more than this machine's {_gb(memory)} of "
            "memory; check the sizes in config.json"
        )
    return params
