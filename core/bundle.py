"""Model bundles: one directory, one `config.json`, one safetensors file per component.

```
bundle/
  config.json          # every component's config, sampler defaults, curve settings
  dit.safetensors      # V2M-Zero DiT
  vae.safetensors      # Oobleck VAE decoder (weight norm folded)
  encoder.safetensors  # frame encoder (DINOv2)
  text.safetensors     # text conditioning (built-in encoder table or precomputed; T5 for SAO)
  cond.safetensors     # SAO only: the seconds/text conditioner; tokenizer.json: its T5 tokenizer
  onnx/, manifest.json # after `v2m export` (see v2m.export)
```

This module reads the config without torch: the lean runtime needs the time
geometry, the sampler defaults and the curve settings, not the model code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import jsonio
from .config_schema import validate_config
from .errors import BundleError, InputError
from .model_size import check_model_size

__all__ = [
    "BUNDLE_FORMAT",
    "COMPONENTS",
    "FAMILIES",
    "SamplerConfig",
    "CurveConfig",
    "AudioConfig",
    "BundleConfig",
    "load_config",
]

BUNDLE_FORMAT = "v2m-bundle/1"
COMPONENTS = ("dit", "vae", "encoder", "text")
# "v2m": V2M-Zero's own DiT (`v2m.models.dit`); "sao": Stable Audio Open (`v2m.models.sao_dit`,
# settings in the `sao` section, `v2m.families.sao.SAOConfig`). A config without `family` is "v2m".
FAMILIES = ("v2m", "sao")


def _from_dict(cls, d: dict[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise BundleError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**d)


# --- the sections that name a family or a component kind --------------------------------
OBJECTIVES = ("v", "rf_denoiser", "rectified_flow")
# Random-bundle presets (`v2m init-model --preset`), defined in `v2m.models.sao_bundle.SAO_PRESETS`.
SAO_PRESET_NAMES = ("sao-tiny", "sao-small-tiny", "sao-1.0", "sao-small")
# Sampler names as stable-audio-tools spells them; the defaults a converted bundle records.
SAMPLERS = ("dpmpp-2m", "dpmpp-2m-sde", "dpmpp-3m-sde", "pingpong", "euler")
DEFAULT_SAMPLER = {"v": "dpmpp-2m-sde", "rf_denoiser": "pingpong", "rectified_flow": "euler"}


@dataclass
class SAOConfig:
    """The `sao` section of a Stable Audio Open bundle's config.json.

    Attributes:
        objective: "v", "rf_denoiser" or "rectified_flow" (see the module docstring).
        sigma_min, sigma_max: the sampling range (v: SAO's 0.3 and 500; rf: 0 and 1).
        sigma_schedule: "exponential" (log-linear sigmas, then 0: k-diffusion's polyexponential
            with rho 1, diffusers' Cosine scheduler) or "logsnr" (stable-audio-tools' sample_rf:
            sigma = sigmoid(-logSNR), logSNR linear from -6 to 2, first 1, last 0).
        sampler: the default sampler, from the model's scheduler config or its objective.
        latent_frames: the fixed length the model generates (SAO 1.0: 1024 = 47.5 s; Small: 256).
        cond: the conditioner config (`v2m.models.sao_cond.SAOCondConfig` as a dict).
    """

    objective: str = "v"
    sigma_min: float = 0.3
    sigma_max: float = 500.0
    sigma_schedule: str = "exponential"
    sampler: str = "dpmpp-2m-sde"
    latent_frames: int = 1024
    cond: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise BundleError(f"sao.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.sampler not in SAMPLERS:
            raise BundleError(f"sao.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.sigma_schedule not in ("exponential", "logsnr"):
            raise BundleError(f"sao.sigma_schedule must be exponential or logsnr, got {self.sigma_schedule!r}")
        if not (0 <= self.sigma_min < self.sigma_max) or (self.objective == "v" and self.sigma_min <= 0):
            raise BundleError(f"sao: bad sigma range [{self.sigma_min}, {self.sigma_max}]")
        if self.objective != "v" and self.sigma_max > 1:
            raise BundleError(f"sao: a rectified-flow model's sigma_max is at most 1, got {self.sigma_max}")
        if self.latent_frames < 1:
            raise BundleError(f"sao.latent_frames must be positive, got {self.latent_frames}")

    @property
    def seconds_names(self) -> list[str]:
        """The seconds values the conditioner takes, in its input order."""
        return [n["name"] if isinstance(n, dict) else n.name for n in self.cond.get("numbers", [])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> SAOConfig:
        from dataclasses import fields

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BundleError(f"{where} [sao]: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**d)


ENCODER_KINDS = ("dinov2", "cut", "motion")
WEIGHT_FREE = ("cut", "motion")

_DEFAULTS: dict[str, dict[str, Any]] = {
    "cut": {"kind": "cut", "input_size": 64, "bins": 16, "thumb": 8, "thumb_weight": 0.3},
    "motion": {"kind": "motion", "input_size": 64, "grid": 8, "radius": 4},
}


def encoder_config(kind: str, **overrides) -> dict[str, Any]:
    """The `encoder` section of a bundle config for a weight-free encoder `kind`."""
    if kind not in _DEFAULTS:
        raise InputError(f"encoder {kind!r} is not weight-free; choose one of {', '.join(WEIGHT_FREE)}")
    unknown = sorted(set(overrides) - set(_DEFAULTS[kind]))
    if unknown:
        raise InputError(f"encoder {kind}: unknown settings {unknown}")
    return {**_DEFAULTS[kind], **overrides}


def is_weight_free(cfg: dict[str, Any]) -> bool:
    """True when the bundle's encoder section names a weight-free encoder (no `encoder` component)."""
    return cfg.get("kind", "dinov2") in WEIGHT_FREE


def has_encoder_weights(cfg: dict[str, Any]) -> bool:
    """True when the bundle has an `encoder` component (weights, a graph): DINOv2. Weight-free
    encoders run in the runtime, and a text-only bundle (kind "none", e.g. Stable Audio Open
    converted without --encoder) has none."""
    return cfg.get("kind", "dinov2") == "dinov2"


DEFAULT_MAX_TOKENS = 32  # S when a bundle's text config does not say: encoders, export profiles, engines


def text_max_tokens(text_cfg: dict) -> int:
    """S, the text length every encoder pads to and every exported graph is profiled for:
    the bundle's `text.max_tokens`, else one default for every encoder kind."""
    return int(text_cfg.get("max_tokens", DEFAULT_MAX_TOKENS))


@dataclass
class SamplerConfig:
    steps: int = 96  # the paper's setting
    # CFG weight on the text. 4 keeps prompts audible without the harshness of
    # the 7 that stable-audio-tools defaults to for longer, denser prompts.
    cfg_scale: float = 4.0
    # The unconditional branch drops only the text: the curve still drives timing.
    uncond_keeps_curve: bool = True
    solver: str = "euler"  # euler | heun (v2m.runtime.sampler.SOLVERS)
    shift: float = 1.0  # SD3 timestep shift; 1 = the uniform grid
    curve_guidance: float = 0.0  # extra guidance on the curve (0 = off)
    # What no prompt conditions on: "null", the unconditional branch's zero embeddings (what text
    # dropout trains: bundles v2m's fine-tune writes), or "encode", the text encoder's embedding
    # of the empty string (bundles written before this field, and converted ones)
    empty_prompt: str = "encode"
    # Longest clip the DiT was trained on, in latent frames (32 s at 12.3 frames/s).
    max_frames: int = 394
    # Longer videos run in max_frames windows that crossfade over this share of a
    # window (or this many frames if >= 1): 10% = 3.2 s, long enough to hide the seam.
    window_overlap: float = 0.1
    # How the windows are sampled: "separate", each alone from its slice of the noise (bundles
    # written before this field), or "joint", every window a step at a time from one shared state
    # whose overlaps are averaged after each step (MultiDiffusion), so they agree where they meet
    window_mode: str = "separate"


@dataclass
class CurveConfig:
    fps: float | None = None  # sampling rate of frames for the curve; None = latent rate
    kernel: int = 31  # Hann window (odd)
    music: str = "logmel"  # the music encoder of the training curves (`v2m.runtime.music_encoders`)
    # the least std the video curve's standardization divides by (`v2m.core.curves`, convention 2);
    # 0 (bundles written before it) keeps the unfloored convention
    std_floor: float = 0.0


@dataclass
class AudioConfig:
    sample_rate: int = 44100
    channels: int = 2
    hop_length: int = 3584  # VAE upsampling factor; the same for every preset
    fade_out_s: float = 0.05  # short fade at the trimmed end, against a click


@dataclass
class BundleConfig:
    preset: str
    dit: dict[str, Any]
    vae: dict[str, Any]
    encoder: dict[str, Any]
    text: dict[str, Any]
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    curve: CurveConfig = field(default_factory=CurveConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    format: str = BUNDLE_FORMAT
    family: str = "v2m"
    sao: dict[str, Any] | None = None  # family "sao" only: SAOConfig as a dict

    # --- derived geometry -------------------------------------------------
    @property
    def latent_rate(self) -> float:
        """Latent frames per second (44100 / 3584 = 12.3047)."""
        return self.audio.sample_rate / self.audio.hop_length

    @property
    def curve_fps(self) -> float:
        return float(self.curve.fps) if self.curve.fps else self.latent_rate

    @property
    def latent_channels(self) -> int:
        return int(self.dit["latent_channels"])

    @property
    def text_dim(self) -> int:
        if self.family == "sao":  # the T5 width the conditioner takes
            return int(self.sao["cond"]["text_dim"])
        return int(self.dit["text_dim"])

    @property
    def sao_config(self):
        """The `sao` section parsed (`v2m.families.sao.SAOConfig`); BundleError for another family."""
        if self.family != "sao" or self.sao is None:
            raise BundleError(f"this is a {self.family} bundle, not a Stable Audio Open one")
        return SAOConfig.from_dict(self.sao)

    @property
    def image_size(self) -> int:
        return int(self.encoder["input_size"])

    @property
    def feature_dim(self) -> int:
        return int(self.encoder["config"]["hidden_size"])

    @property
    def has_curve_channel(self) -> bool:
        """Whether the DiT takes the event curve (a Stable Audio Open checkpoint without
        V2M-Zero's input-concat channel does not: its videos only set the duration)."""
        if self.family == "sao":
            return int(self.dit.get("input_concat_dim", 0) or 0) > 0
        return True

    @property
    def max_seconds(self) -> float:
        return self.sampler.max_frames / self.latent_rate

    # --- (de)serialization -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.family == "v2m" and self.sao is None:  # V2M-Zero bundles read as before
            del d["family"], d["sao"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> BundleConfig:
        d = dict(d)
        fmt = d.pop("format", BUNDLE_FORMAT)
        if fmt != BUNDLE_FORMAT:
            raise BundleError(f"{where}: bundle format {fmt!r} is not {BUNDLE_FORMAT!r}; re-create it with this v2m")
        missing = [k for k in ("preset", *COMPONENTS) if k not in d]
        if missing:
            raise BundleError(f"{where}: missing sections {missing}; is this a v2m bundle?")
        family = d.get("family", "v2m")
        if family not in FAMILIES:
            raise BundleError(f"{where}: unknown model family {family!r}; this v2m knows {', '.join(FAMILIES)}")
        if (family == "sao") != (d.get("sao") is not None):
            raise BundleError(f"{where}: a 'sao' section goes with family 'sao' and only with it")
        validate_config(d, where, asdict(AudioConfig()))  # every value's type and range, one line naming the key
        try:
            sampler = _from_dict(SamplerConfig, d.pop("sampler", {}), f"{where} [sampler]")
            curve = _from_dict(CurveConfig, d.pop("curve", {}), f"{where} [curve]")
            audio = _from_dict(AudioConfig, d.pop("audio", {}), f"{where} [audio]")
            cfg = _from_dict(cls, d, where)
        except TypeError as e:
            raise BundleError(f"{where}: {e}") from None
        cfg.sampler, cfg.curve, cfg.audio = sampler, curve, audio
        if cfg.sao is not None:
            SAOConfig.from_dict(cfg.sao, where)  # validated now: one line, before any model loads
        return cfg

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "config.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path


def load_config(directory: str | Path) -> BundleConfig:
    """Read `<directory>/config.json`, with a one-line error for every way it can be wrong:
    unreadable or too deeply nested JSON, a value of the wrong type or range
    (`v2m.core.config_schema`), models too big for this machine or not matching their
    weight files (`v2m.core.model_size`). Nothing is built or allocated before."""
    directory = Path(directory)
    if not directory.exists():
        raise BundleError(f"model bundle {str(directory)!r} does not exist; create one with `v2m init-model` or point --model at a bundle directory")
    if not directory.is_dir():
        raise BundleError(f"model bundle {str(directory)!r} is not a directory")
    path = directory / "config.json"
    if not path.is_file():
        raise BundleError(f"{path}: missing; {str(directory)!r} is not a v2m bundle (create one with `v2m init-model`)")
    data = jsonio.load_file(path, BundleError)
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    cfg = BundleConfig.from_dict(data, where=str(path))
    check_model_size(cfg, directory, str(path))
    return cfg
