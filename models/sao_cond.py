"""Stable Audio Open conditioning: T5 tokens and seconds values -> the DiT's cross and global inputs.

stable-audio-tools' `MultiConditioner` (`models/conditioners.py`) and diffusers'
`StableAudioProjectionModel` (diffusers 0.42) turn the prompt's T5 hidden states and
the `seconds_start` / `seconds_total` numbers into

    cross_cond  [B, S + Kx, Dc] = [text tokens * mask ; one token per seconds value]
    global_cond [B, Kg * Dc]    = the seconds embeddings, concatenated

with, per seconds value, a `NumberConditioner`: clamp to [min, max], normalize to
[0, 1], then `NumberEmbedder` = Linear(1 + 2F -> Dc) of [x, sin(2 pi x w), cos(2 pi x w)].
The text passes a Linear(E -> Dc) only when the widths differ (Identity for SAO).

SAO 1.0: cross [prompt, seconds_start, seconds_total], global [seconds_start,
seconds_total] (Dg = 1536); SAO Small: cross [prompt, seconds_total], global
[seconds_total] (Dg = 768). Classifier-free guidance zeroes `cross_cond` as a whole
(seconds tokens included) and keeps `global_cond`, as both references do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from v2m.core.errors import BundleError

from .checkpoint import config_from_dict

__all__ = [
    "SAOCondConfig",
    "NumberSpec",
    "PRESETS",
    "SAOConditioner",
    "config_from_stable_audio",
    "config_from_diffusers",
    "convert_stable_audio_state_dict",
    "convert_diffusers_state_dict",
]


@dataclass
class NumberSpec:
    """One seconds conditioner: its name and the range it clamps to."""

    name: str
    min: float = 0.0
    max: float = 512.0

    def __post_init__(self):
        if not self.max > self.min:
            raise BundleError(f"SAO conditioner {self.name!r}: max {self.max} must exceed min {self.min}")


def _numbers(names: tuple[str, ...], lo: float, hi: float) -> list[NumberSpec]:
    return [NumberSpec(n, lo, hi) for n in names]


@dataclass
class SAOCondConfig:
    text_dim: int = 768  # E: T5 width (t5-base)
    cond_dim: int = 768  # Dc
    numbers: list[NumberSpec] = field(default_factory=lambda: _numbers(("seconds_start", "seconds_total"), 0, 512))
    cross_numbers: tuple[str, ...] = ("seconds_start", "seconds_total")  # tokens after the text, in this order
    global_numbers: tuple[str, ...] = ("seconds_start", "seconds_total")  # concatenated in this order
    number_features: int = 256  # the NumberEmbedder's Fourier width (2F)

    def __post_init__(self):
        self.numbers = [n if isinstance(n, NumberSpec) else NumberSpec(**n) for n in self.numbers]
        self.cross_numbers, self.global_numbers = tuple(self.cross_numbers), tuple(self.global_numbers)
        names = [n.name for n in self.numbers]
        if len(set(names)) != len(names):
            raise BundleError(f"SAO conditioner: duplicate number names {names}")
        missing = sorted(set(self.cross_numbers + self.global_numbers) - set(names))
        if missing:
            raise BundleError(f"SAO conditioner: {missing} are used but not defined (defined: {names})")
        if not self.global_numbers:
            raise BundleError("SAO conditioner: the DiT needs at least one global (seconds) value")
        if self.number_features % 2 or min(self.text_dim, self.cond_dim, self.number_features) < 1:
            raise BundleError(f"SAO conditioner: bad sizes ({self})")

    @property
    def text_projection(self) -> bool:
        return self.text_dim != self.cond_dim

    @property
    def number_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.numbers)

    @property
    def global_dim(self) -> int:
        return len(self.global_numbers) * self.cond_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> SAOCondConfig:
        return config_from_dict(cls, d, "SAO conditioner")


PRESETS: dict[str, SAOCondConfig] = {
    "sao-1.0": SAOCondConfig(),
    "sao-small": SAOCondConfig(numbers=_numbers(("seconds_total",), 0, 256), cross_numbers=("seconds_total",),
                               global_numbers=("seconds_total",)),
    "sao-tiny": SAOCondConfig(text_dim=32, cond_dim=32, number_features=16),
    "sao-small-tiny": SAOCondConfig(text_dim=32, cond_dim=32, number_features=16,
                                    numbers=_numbers(("seconds_total",), 0, 256), cross_numbers=("seconds_total",),
                                    global_numbers=("seconds_total",)),
}


class NumberEmbedder(nn.Module):
    """x in [0, 1] [B] -> Linear([x, sin(2 pi x w), cos(2 pi x w)]) [B, Dc] (`weights` is w, [F])."""

    def __init__(self, features: int, dim: int):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(features // 2))
        self.proj = nn.Linear(features + 1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, None]  # (B, 1)
        freqs = x * self.weights[None, :] * 2 * math.pi  # (B, F/2), the references' op order
        return self.proj(torch.cat([x, freqs.sin(), freqs.cos()], dim=-1))


class SAOConditioner(nn.Module):
    """forward(text [B,S,E], text_mask [B,S], seconds [B,K]) -> (cross_cond [B,S+Kx,Dc], global_cond [B,Kg*Dc]).

    `seconds` holds one column per `cfg.numbers` entry, in that order (SAO 1.0:
    seconds_start, seconds_total).
    """

    def __init__(self, cfg: SAOCondConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.text_projection:
            self.text_proj = nn.Linear(cfg.text_dim, cfg.cond_dim)
        self.numbers = nn.ModuleDict({n.name: NumberEmbedder(cfg.number_features, cfg.cond_dim) for n in cfg.numbers})

    @classmethod
    def from_config(cls, cfg: SAOCondConfig | Mapping) -> SAOConditioner:
        return cls(cfg if isinstance(cfg, SAOCondConfig) else SAOCondConfig.from_dict(cfg))

    def number_embeds(self, seconds: torch.Tensor) -> dict[str, torch.Tensor]:
        """seconds [B, K] -> {name: [B, Dc]}: clamped, normalized to [0, 1], embedded."""
        out = {}
        for i, spec in enumerate(self.cfg.numbers):
            emb = self.numbers[spec.name]
            v = seconds[:, i].to(torch.float32).clamp(spec.min, spec.max)
            out[spec.name] = emb(((v - spec.min) / (spec.max - spec.min)).to(emb.proj.weight.dtype))
        return out

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, seconds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(self, "text_proj"):
            text = self.text_proj(text)
        text = text * text_mask.to(text.dtype)[:, :, None]  # (B, S, Dc): padding rows are zero vectors
        nums = self.number_embeds(seconds)
        cross = torch.cat([text] + [nums[n][:, None, :] for n in self.cfg.cross_numbers], dim=1)  # (B, S + Kx, Dc)
        glob = torch.cat([nums[n] for n in self.cfg.global_numbers], dim=-1)  # (B, Kg * Dc)
        return cross, glob


# --- configs of the foreign layouts -------------------------------------------------------------
def config_from_stable_audio(model: Mapping, text_dim: int) -> tuple[SAOCondConfig, str, int]:
    """(config, T5 model name, max tokens) from a stable-audio-tools `model` section.

    Args:
        text_dim: the T5 encoder's width (`d_model` of the model given with --t5).
    """
    cond = model.get("conditioning") or {}
    diffusion = model.get("diffusion") or {}
    try:
        dim = int(cond["cond_dim"])
        configs = {c["id"]: c for c in cond["configs"]}
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"stable-audio-tools model: conditioning section is malformed ({e})") from None
    cross = list(diffusion.get("cross_attention_cond_ids", []))
    glob = list(diffusion.get("global_cond_ids", []))
    # `input_concat_ids` (V2M-Zero's curve) are fed by v2m itself, not by a conditioner here.
    if diffusion.get("prepend_cond_ids"):
        raise BundleError("stable-audio-tools model: prepend conditioning is not supported")
    prompt = configs.get(cross[0]) if cross else None
    if prompt is None or prompt.get("type") != "t5":
        raise BundleError(
            f"stable-audio-tools model: the first cross-attention input must be a T5 prompt conditioner "
            f"(got {cross[:1]})"
        )
    numbers = []
    for key in dict.fromkeys(cross[1:] + glob):
        c = configs.get(key)
        if c is None or c.get("type") != "number":
            raise BundleError(f"stable-audio-tools model: conditioner {key!r} is {c and c.get('type')!r}; "
                              "only T5 text and number (seconds) conditioners are supported")
        numbers.append(NumberSpec(key, float(c["config"].get("min_val", 0)), float(c["config"].get("max_val", 1))))
    if prompt["config"].get("project_out") and text_dim == dim:
        raise BundleError("stable-audio-tools model: a T5 conditioner with project_out is not supported")
    cfg = SAOCondConfig(text_dim=text_dim, cond_dim=dim, numbers=numbers, cross_numbers=tuple(cross[1:]),
                        global_numbers=tuple(glob))
    return cfg, str(prompt["config"].get("t5_model_name", "t5-base")), int(prompt["config"].get("max_length", 128))


def config_from_diffusers(d: Mapping) -> SAOCondConfig:
    """From a diffusers `StableAudioProjectionModel` config.json: start and end seconds, both cross and global."""
    try:
        lo, hi = float(d["min_value"]), float(d["max_value"])
        return SAOCondConfig(text_dim=int(d["text_encoder_dim"]), cond_dim=int(d["conditioning_dim"]),
                             numbers=_numbers(("seconds_start", "seconds_total"), lo, hi))
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"diffusers projection model config is malformed ({type(e).__name__}: {e})") from None


# --- weight layout conversions (once, at load) -----------------------------------------------
def _number_keys(prefix: str, name: str) -> dict[str, str]:
    return {f"{prefix}.0.weights": f"numbers.{name}.weights", f"{prefix}.1.weight": f"numbers.{name}.proj.weight",
            f"{prefix}.1.bias": f"numbers.{name}.proj.bias"}


def _rename(sd: Mapping[str, torch.Tensor], names: dict[str, str], what: str) -> dict[str, torch.Tensor]:
    bad = sorted(set(sd) - set(names))
    if bad:
        raise BundleError(f"{what}: {len(bad)} unrecognized keys, e.g. {bad[:3]}")
    return {names[k]: v for k, v in sd.items()}


def convert_stable_audio_state_dict(
    sd: Mapping[str, torch.Tensor], cfg: SAOCondConfig, prompt: str = "prompt"
) -> dict[str, torch.Tensor]:
    """stable-audio-tools `conditioner.conditioners.*` weights (a whole checkpoint is fine) -> native.

    Args:
        prompt: the T5 conditioner's id; its `proj_out` is the text projection (when widths differ).
    """
    pre = "conditioner.conditioners."
    sd = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
    names = {f"{prompt}.proj_out.weight": "text_proj.weight", f"{prompt}.proj_out.bias": "text_proj.bias"}
    for n in cfg.number_names:
        names.update(_number_keys(f"{n}.embedder.embedding", n))
    return _rename(sd, names, "stable-audio-tools conditioner weights")


def convert_diffusers_state_dict(sd: Mapping[str, torch.Tensor], cfg: SAOCondConfig) -> dict[str, torch.Tensor]:
    """diffusers `StableAudioProjectionModel` weights -> native."""
    names = {"text_projection.weight": "text_proj.weight", "text_projection.bias": "text_proj.bias"}
    for n, df in (("seconds_start", "start_number_conditioner"), ("seconds_total", "end_number_conditioner")):
        names.update(_number_keys(f"{df}.time_positional_embedding", n))
    return _rename(sd, names, "diffusers projection model weights")
