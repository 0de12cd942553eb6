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

from .errors import BundleError

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
# settings in the `sao` section, `v2m.runtime.sao.SAOConfig`). A config without `family` is "v2m".
FAMILIES = ("v2m", "sao")


def _from_dict(cls, d: dict[str, Any], where: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise BundleError(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**d)


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
    # Longest clip the DiT was trained on, in latent frames (32 s at 12.3 frames/s).
    max_frames: int = 394
    # Longer videos run in max_frames windows that crossfade over this share of a
    # window (or this many frames if >= 1): 10% = 3.2 s, long enough to hide the seam.
    window_overlap: float = 0.1


@dataclass
class CurveConfig:
    fps: float | None = None  # sampling rate of frames for the curve; None = latent rate
    kernel: int = 31  # Hann window (odd)
    music: str = "logmel"  # the music encoder of the training curves (`v2m.runtime.music_encoders`)


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
        """The `sao` section parsed (`v2m.runtime.sao.SAOConfig`); BundleError for another family."""
        from .sao import SAOConfig

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
        try:
            sampler = _from_dict(SamplerConfig, d.pop("sampler", {}), f"{where} [sampler]")
            curve = _from_dict(CurveConfig, d.pop("curve", {}), f"{where} [curve]")
            audio = _from_dict(AudioConfig, d.pop("audio", {}), f"{where} [audio]")
            cfg = _from_dict(cls, d, where)
        except TypeError as e:
            raise BundleError(f"{where}: {e}") from None
        cfg.sampler, cfg.curve, cfg.audio = sampler, curve, audio
        if cfg.curve.kernel < 1 or cfg.curve.kernel % 2 == 0:
            raise BundleError(f"{where}: curve.kernel must be odd, got {cfg.curve.kernel}")
        from .music_encoders import MUSIC_ENCODERS

        if cfg.curve.music not in MUSIC_ENCODERS:
            raise BundleError(f"{where}: curve.music must be one of {', '.join(MUSIC_ENCODERS)}, got {cfg.curve.music!r}")
        if cfg.family not in FAMILIES:
            raise BundleError(f"{where}: unknown model family {cfg.family!r}; this v2m knows {', '.join(FAMILIES)}")
        if (cfg.family == "sao") != (cfg.sao is not None):
            raise BundleError(f"{where}: a 'sao' section goes with family 'sao' and only with it")
        if cfg.sao is not None:
            from .sao import SAOConfig

            SAOConfig.from_dict(cfg.sao, where)  # validated now: one line, before any model loads
        return cfg

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / "config.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path


def load_config(directory: str | Path) -> BundleConfig:
    """Read `<directory>/config.json`, with a one-line error for every way it can be wrong."""
    directory = Path(directory)
    if not directory.exists():
        raise BundleError(f"model bundle {str(directory)!r} does not exist; create one with `v2m init-model` or point --model at a bundle directory")
    if not directory.is_dir():
        raise BundleError(f"model bundle {str(directory)!r} is not a directory")
    path = directory / "config.json"
    if not path.is_file():
        raise BundleError(f"{path}: missing; {str(directory)!r} is not a v2m bundle (create one with `v2m init-model`)")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return BundleConfig.from_dict(data, where=str(path))
