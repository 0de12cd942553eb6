"""Oobleck VAE decoder: Stable Audio's autoencoder, latents [B, C, L] -> stereo audio.

Stable Audio (Evans et al., "Fast Timing-Conditioned Latent Audio Diffusion",
2024) decodes with the "Oobleck" autoencoder of stable-audio-tools
(`stable_audio_tools/models/autoencoders.py`). This file matches diffusers'
port, `diffusers.models.autoencoders.autoencoder_oobleck.OobleckDecoder`
(diffusers 0.42), to float32 rounding given the same weights:

    latents [B, C, L] --WNConv1d(k=7)--> [B, ch*m[-1], L]
    DecoderBlock x n (deepest first):  Snake -> WNConvTranspose1d(k=2s, stride s)
                                       -> ResidualUnit(dilation 1, 3, 9)
    ResidualUnit:  x + WNConv1d(k=1)(Snake(WNConv1d(k=7, dilation)(Snake(x))))
    Snake -> WNConv1d(k=7, no bias) --> audio [B, 2, L * hop]

Snake is the "SnakeBeta" of both references with log-scale parameters:
`x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) * x)^2`, alpha and beta stored as
logs (zeros = 1), exactly the op order of diffusers' `Snake1d`.

Weight norm (`torch.nn.utils.weight_norm`, dim=0 for Conv1d *and*
ConvTranspose1d, so the norm of a transposed conv's [in, out, k] weight is
taken per input channel) is folded into plain weights once at load:
`weight = g * v / ||v||`. Nothing here carries a weight-norm parametrization,
so the native state dict is what bundles store and what ONNX export sees.

One small function per foreign layout converts to the native one:
`convert_diffusers_state_dict` (a diffusers `AutoencoderOobleck`) and
`convert_stable_audio_state_dict` (stable-audio-tools' `decoder.layers.N`).

Odd strides: a transposed conv with kernel 2s, stride s and padding ceil(s/2)
emits s*L - 1 samples when s is odd, so with strides (2, 4, 7, 8, 8) the
references return L * 3584 - 8 samples. `forward` computes exactly that and
then repeats the last sample `tail` times, so every output is L * hop long and
the first L * hop - tail samples equal the reference's.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from v2m.core.errors import BundleError

from .checkpoint import apply_state_dict, config_from_dict, load_safetensors

__all__ = [
    "OobleckConfig",
    "PRESETS",
    "Snake1d",
    "ResidualUnit",
    "DecoderBlock",
    "OobleckDecoder",
    "DECODE_CHUNK",
    "fold_weight_norm",
    "convert_diffusers_state_dict",
    "convert_stable_audio_state_dict",
    "config_from_diffusers",
    "infer_config",
]

log = logging.getLogger("v2m.vae")

# Weight files tried, in order, in a `from_pretrained` directory.
_WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "model.safetensors",
    "vae.safetensors",
)


@dataclass
class OobleckConfig:
    latent_channels: int = 64  # C: diffusers `decoder_input_channels`
    channels: int = 128  # diffusers `decoder_channels`; width of the last block
    channel_multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    # Encoder (downsampling) order, as diffusers' `downsampling_ratios`; the decoder
    # upsamples in reverse. 2*4*7*8*8 = 3584 samples per latent frame, 12.305 frames/s
    # at 44.1 kHz (Stable Audio Open's own VAE uses (2, 4, 4, 8, 8) = 2048).
    strides: tuple[int, ...] = (2, 4, 7, 8, 8)
    audio_channels: int = 2
    sample_rate: int = 44100

    def __post_init__(self):
        # JSON round trips turn tuples into lists.
        self.channel_multiples = tuple(int(m) for m in self.channel_multiples)
        self.strides = tuple(int(s) for s in self.strides)
        if len(self.strides) != len(self.channel_multiples):
            raise BundleError(
                f"VAE config: {len(self.strides)} strides but {len(self.channel_multiples)} channel multiples"
            )
        if min(self.strides + self.channel_multiples) < 1 or min(self.latent_channels, self.channels) < 1:
            raise BundleError(f"VAE config: sizes must be positive ({self})")

    @property
    def hop_length(self) -> int:
        """Audio samples per latent frame."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Latent frames per second (44100 / 3584 = 12.305)."""
        return self.sample_rate / self.hop_length

    @property
    def receptive_field(self) -> int:
        """Latent frames each side that can influence an output sample of the decoder.

        conv1 (k=7): 3 frames; per upsampling block at input rate r (samples per latent
        frame): the transposed conv (k=2s) reaches 2 input samples, the residual units
        (k=7, dilations 1, 3, 9) 3 * 13 output samples; conv2 (k=7): 3 samples.
        """
        r, rate = 3.0, 1
        for s in reversed(self.strides):
            r += 2.0 / rate
            rate *= s
            r += 3 * (1 + 3 + 9) / rate
        r += 3 / rate
        return math.ceil(r)

    def flops(self, length: int) -> float:
        """Forward FLOPs (2 per MAC) of decoding `length` latent frames (convolutions only;
        Snake is elementwise), for roofline figures."""
        mults = (1, *self.channel_multiples)
        n, frames = len(self.strides), float(length)
        macs = self.latent_channels * self.channels * mults[-1] * 7 * frames  # conv1
        for i, s in enumerate(reversed(self.strides)):
            c_in, c_out = self.channels * mults[n - i], self.channels * mults[n - i - 1]
            macs += c_in * c_out * 2 * s * frames  # transposed conv: each input sample feeds 2s outputs
            frames *= s
            macs += 3 * (c_out * c_out * 7 + c_out * c_out) * frames  # three residual units
        macs += self.channels * self.audio_channels * 7 * frames  # conv2
        return 2.0 * macs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> OobleckConfig:
        return config_from_dict(cls, d, "VAE")


PRESETS: dict[str, OobleckConfig] = {
    # Every preset keeps hop 3584: the DiT's latent rate and the bundle geometry depend on it.
    "tiny": OobleckConfig(latent_channels=16, channels=8),  # 5 s (L = 62) in ~0.15 s on 2 CPU cores
    "small": OobleckConfig(latent_channels=64, channels=32),
    "full": OobleckConfig(),  # Stable Audio's decoder width, 79M parameters
}


def config_from_diffusers(d: Mapping) -> OobleckConfig:
    """An OobleckConfig from a diffusers `AutoencoderOobleck` config.json (encoder keys ignored)."""
    try:
        return OobleckConfig(
            latent_channels=d.get("decoder_input_channels", 64),
            channels=d.get("decoder_channels", 128),
            channel_multiples=d.get("channel_multiples", (1, 2, 4, 8, 16)),
            strides=d.get("downsampling_ratios", (2, 4, 4, 8, 8)),  # diffusers' default
            audio_channels=d.get("audio_channels", 2),
            sample_rate=d.get("sampling_rate", 44100),
        )
    except (TypeError, ValueError) as e:
        raise BundleError(f"diffusers VAE config is malformed: {e}") from None


# Latent frames per chunk of `OobleckDecoder.decode_chunked` (about 5 s of audio): bounds
# the working set of a decode whatever the clip's length. bench/bench_vae.py's
# chunk sweep picked it on a 2-core CPU (docs/h23b.md).
DECODE_CHUNK = 64


# --- modules, leaves up ------------------------------------------------------------------
def _keeps_graph(x: torch.Tensor, param: torch.Tensor) -> bool:
    """True where in-place ops are not allowed: autograd records the op, or a tracer
    (ONNX export) does, whose graph keeps the reference's out-of-place ops."""
    grad = torch.is_grad_enabled() and (x.requires_grad or param.requires_grad)
    return grad or torch.jit.is_tracing()


class Snake1d(nn.Module):
    """SnakeBeta with log-scale alpha, beta of shape (1, C, 1), as diffusers' `Snake1d`."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1))  # log alpha: 0 -> frequency 1
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))  # log beta: 0 -> amplitude 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.exp(self.alpha)
        inv_beta = (torch.exp(self.beta) + 1e-9).reciprocal()
        if _keeps_graph(x, self.alpha):
            # Same op order as the reference, so float32 results agree bit for bit.
            return x + inv_beta * torch.sin(alpha * x).pow(2)
        # Inference: the same ops, in place in one output buffer instead of five full-size
        # temporaries (fresh pages are what a long CPU decode spent its time faulting in).
        # Products and sums commute bit for bit, so the result is identical.
        return torch.mul(x, alpha).sin_().pow_(2).mul_(inv_beta).add_(x)


class ResidualUnit(nn.Module):
    """x + conv2(snake2(conv1(snake1(x)))): a dilated k=7 conv, then a k=1 conv."""

    def __init__(self, dim: int, dilation: int):
        super().__init__()
        self.snake1 = Snake1d(dim)
        # "same" padding: the output keeps the input length, so the reference's crop is a no-op.
        self.conv1 = nn.Conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(dim)
        self.conv2 = nn.Conv1d(dim, dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.snake2(self.conv1(self.snake1(x))))
        return x + y if _keeps_graph(x, self.conv2.weight) else y.add_(x)  # y + x == x + y, bit for bit


class DecoderBlock(nn.Module):
    """Snake, an upsampling transposed conv (x stride), three residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int):
        super().__init__()
        self.snake1 = Snake1d(in_dim)
        # Length s*L + s - 2*ceil(s/2): s*L for even s, s*L - 1 for odd s (as the reference).
        self.conv_t1 = nn.ConvTranspose1d(
            in_dim, out_dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
        )
        self.res_unit1 = ResidualUnit(out_dim, dilation=1)
        self.res_unit2 = ResidualUnit(out_dim, dilation=3)
        self.res_unit3 = ResidualUnit(out_dim, dilation=9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_t1(self.snake1(x))  # (B, out_dim, ~stride * T)
        return self.res_unit3(self.res_unit2(self.res_unit1(x)))


class OobleckDecoder(nn.Module):
    """Latents (B, latent_channels, L) -> audio (B, audio_channels, L * hop_length)."""

    def __init__(self, cfg: OobleckConfig):
        super().__init__()
        self.cfg = cfg
        mults = (1, *cfg.channel_multiples)
        n = len(cfg.strides)
        self.conv1 = nn.Conv1d(cfg.latent_channels, cfg.channels * mults[-1], kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            DecoderBlock(cfg.channels * mults[n - i], cfg.channels * mults[n - i - 1], stride)
            for i, stride in enumerate(reversed(cfg.strides))
        )
        self.snake1 = Snake1d(cfg.channels)
        self.conv2 = nn.Conv1d(cfg.channels, cfg.audio_channels, kernel_size=7, padding=3, bias=False)
        # Samples the reference falls short of L * hop: each odd stride loses one sample
        # at its level, which every later stride multiplies. Independent of L.
        tail = 0
        for s in reversed(cfg.strides):
            tail = s * tail + (2 * math.ceil(s / 2) - s)
        self.tail = tail

    @classmethod
    def from_config(cls, cfg: OobleckConfig | Mapping) -> OobleckDecoder:
        return cls(cfg if isinstance(cfg, OobleckConfig) else OobleckConfig.from_dict(cfg))

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        h = self.conv1(latents)  # (B, ch * m[-1], L)
        for blk in self.block:
            h = blk(h)  # (B, ch * m[i], ~L * prod(strides so far))
        audio = self.conv2(self.snake1(h))  # (B, audio_channels, L * hop - tail)
        if self.tail:
            audio = F.pad(audio, (0, self.tail), mode="replicate")  # (B, audio_channels, L * hop)
        return audio

    @torch.inference_mode()
    def decode_chunked(self, latents: torch.Tensor, chunk: int = DECODE_CHUNK,
                       overlap: int | None = None) -> torch.Tensor:
        """Decode latents (B, C, L) -> host audio (B, A, L * hop), `chunk` latent frames at a time.

        Each chunk [a, e) is decoded with `overlap` frames of context each side (default
        the receptive field; clipped at the clip's edges) and only its own [a*hop, e*hop)
        samples are kept, written into one preallocated output: with overlap >= the
        receptive field this equals one whole decode up to float rounding. Working memory
        is bounded by one chunk, on CPU and on a GPU alike, so a long clip neither faults in
        fresh pages for every activation nor grows device memory. The output is float32
        (float64 stays float64). chunk <= 0 decodes the whole clip at once.
        """
        b, _, length = latents.shape
        out_dtype = torch.promote_types(latents.dtype, torch.float32)  # fp16/bf16 -> fp32; fp64 stays
        if chunk <= 0 or chunk >= length:
            return self(latents).to(out_dtype).cpu()
        hop = self.hop_length
        pad = self.cfg.receptive_field if overlap is None else int(overlap)
        out = torch.empty(b, self.cfg.audio_channels, length * hop, dtype=out_dtype)
        for a in range(0, length, chunk):
            e = min(a + chunk, length)
            a0, e0 = max(0, a - pad), min(length, e + pad)
            audio = self(latents[:, :, a0:e0])  # (B, A, (e0 - a0) * hop)
            out[:, :, a * hop : e * hop] = audio[:, :, (a - a0) * hop : (e - a0) * hop]
        return out

    # --- loading foreign layouts ------------------------------------------------------
    @classmethod
    def from_pretrained(cls, directory: str | Path) -> OobleckDecoder:
        """Load a diffusers `AutoencoderOobleck` directory (config.json + safetensors).

        Args:
            directory: a `save_pretrained` directory, a pipeline directory with a `vae/`
                folder, or a directory of already folded (native) weights whose config.json
                is diffusers' or an `OobleckConfig` dict.
        """
        d = Path(directory)
        if not (d / "config.json").is_file() and (d / "vae" / "config.json").is_file():
            d = d / "vae"
        if not (d / "config.json").is_file():
            raise BundleError(f"{d}: no config.json; expected a diffusers AutoencoderOobleck directory")
        try:
            raw = json.loads((d / "config.json").read_text())
        except (OSError, ValueError) as e:
            raise BundleError(f"{d / 'config.json'}: unreadable ({e})") from None
        if "decoder_channels" in raw or "_class_name" in raw:
            cfg = config_from_diffusers(raw)
        else:
            cfg = OobleckConfig.from_dict(raw)
        path = next((d / f for f in _WEIGHT_FILES if (d / f).is_file()), None)
        if path is None:
            raise BundleError(
                f"{d}: no safetensors weights (looked for {', '.join(_WEIGHT_FILES)}); "
                "pickled .bin/.ckpt files are not loaded"
            )
        model = cls(cfg)
        apply_state_dict(model, convert_diffusers_state_dict(load_safetensors(path)), where=str(path))
        log.info("loaded Oobleck decoder from %s (hop %d, %d channels)", path, cfg.hop_length, cfg.channels)
        return model.eval()

    @classmethod
    def from_stable_audio(
        cls, source: str | Path | Mapping[str, torch.Tensor], sample_rate: int = 44100
    ) -> OobleckDecoder:
        """Load a stable-audio-tools autoencoder (or whole-model) state dict.

        Args:
            source: a .safetensors path or a state dict with `...decoder.layers.N...` keys.
            sample_rate: not stored in the weights; Stable Audio's is 44100.
        """
        where = str(source) if isinstance(source, (str, Path)) else "stable-audio-tools state dict"
        sd = load_safetensors(source) if isinstance(source, (str, Path)) else source
        native = convert_stable_audio_state_dict(sd)
        cfg = infer_config(native, sample_rate=sample_rate)
        model = cls(cfg)
        apply_state_dict(model, native, where=where)
        log.info("loaded stable-audio-tools Oobleck decoder from %s (inferred %s)", where, cfg)
        return model.eval()


# --- weight layout conversions (once, at load) -----------------------------------------
def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weight = g * v / ||v||, the norm over every axis where g has size 1.

    torch's `weight_norm(dim=0)` keeps axis 0 (g is (out, 1, 1) for Conv1d and
    (in, 1, 1) for ConvTranspose1d's (in, out, k) weight); `dim=None` gives a
    scalar g and a norm over the whole tensor. Computed in float64, returned in
    v's dtype.
    """
    g64 = g.to(torch.float64).reshape(*g.shape, *([1] * (v.ndim - g.ndim)))  # broadcastable to v
    if g.ndim > v.ndim or any(a not in (1, b) for a, b in zip(g64.shape, v.shape)):
        raise BundleError(f"weight norm: g {tuple(g.shape)} does not fit v {tuple(v.shape)}")
    v64 = v.to(torch.float64)
    axes = [i for i in range(v.ndim) if g64.shape[i] == 1]
    norm = v64.pow(2).sum(dim=axes, keepdim=True).sqrt() if axes else v64.abs()
    return (g64 * v64 / norm).to(v.dtype)


# (g suffix, v suffix) of old-style `weight_norm` and of `parametrizations.weight_norm`.
_WN_PAIRS = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


def _fold_all(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every (g, v) weight-norm pair with a plain `.weight`; other keys unchanged."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        for g_sfx, v_sfx in _WN_PAIRS:
            if key.endswith(v_sfx):
                break  # consumed with its g
            if key.endswith(g_sfx):
                base = key[: -len(g_sfx)]
                if base + v_sfx not in sd:
                    raise BundleError(f"weight norm: {key} has no matching {base + v_sfx}")
                out[base + ".weight"] = fold_weight_norm(value, sd[base + v_sfx])
                break
        else:
            out[key] = value
    for key in sd:
        for g_sfx, v_sfx in _WN_PAIRS:
            if key.endswith(v_sfx) and key[: -len(v_sfx)] + g_sfx not in sd:
                raise BundleError(f"weight norm: {key} has no matching {key[: -len(v_sfx)] + g_sfx}")
    return out


def convert_diffusers_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `AutoencoderOobleck` weights -> native: keep `decoder.*`, strip it, fold.

    A dict without `decoder.` keys is taken as the decoder alone (folded or not).
    diffusers' module names are the native names, so nothing else is renamed.
    """
    if any(k.startswith("decoder.") for k in sd):
        sd = {k[len("decoder.") :]: v for k, v in sd.items() if k.startswith("decoder.")}
    return _fold_all(sd)


_SA_DECODER = re.compile(r"^(?:.*\.)?decoder\.(layers\..*)$")
_SA_TOP = re.compile(r"^layers\.(\d+)\.(.+)$")
_SA_PARAMS = ("weight", "bias", "alpha", "beta")
_SA_BLOCK = {0: "snake1", 1: "conv_t1", 2: "res_unit1", 3: "res_unit2", 4: "res_unit3"}
_SA_RES = {0: "snake1", 1: "conv1", 2: "snake2", 3: "conv2"}


def convert_stable_audio_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """stable-audio-tools Oobleck decoder weights -> native.

    stable-audio-tools' `OobleckDecoder.layers` is a Sequential
    [WNConv1d, DecoderBlock x n, SnakeBeta, WNConv1d(bias=False), Tanh/Identity];
    `DecoderBlock.layers` = [SnakeBeta, WNConvTranspose1d, ResidualUnit x 3] and
    `ResidualUnit.layers` = [SnakeBeta, WNConv1d(k=7, dilation), SnakeBeta, WNConv1d(k=1)].
    SnakeBeta stores log alpha, beta of shape (C,); native ones are (1, C, 1).
    Keys may carry any prefix before `decoder.` (`pretransform.model.decoder.` in a
    whole Stable Audio checkpoint) or start at `layers.`; encoder keys are ignored.
    Antialiased activations and nearest-neighbour upsampling (other stable-audio-tools
    options, not used by Stable Audio) are refused with a BundleError.
    """
    picked = {m.group(1): v for k, v in sd.items() if (m := _SA_DECODER.match(k))}
    if not picked:
        picked = {k: v for k, v in sd.items() if k.startswith("layers.")}
    if not picked:
        raise BundleError("stable-audio-tools state dict: no `decoder.layers.*` (or `layers.*`) keys")
    folded = _fold_all(picked)
    top = {int(m.group(1)) for k in folded if (m := _SA_TOP.match(k))}
    last = max(top)  # final conv; last - 1 is the final Snake; 1 .. last - 2 are blocks
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    for key, value in folded.items():
        name = _sa_native_name(key, last)
        if name is None:
            bad.append(key)
            continue
        if name.endswith((".alpha", ".beta")) and value.ndim == 1:
            value = value.reshape(1, -1, 1)  # (C,) -> (1, C, 1)
        out[name] = value
    if bad:
        raise BundleError(
            f"stable-audio-tools state dict: {len(bad)} unrecognized decoder keys, e.g. {sorted(bad)[:3]} "
            "(antialiased Snake or nearest upsampling are not supported)"
        )
    return out


def _sa_native_name(key: str, last: int) -> str | None:
    """`layers.i[.layers.j[.layers.k]].param` -> native name, or None if it is not Oobleck's."""
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "layers" or not parts[1].isdigit() or parts[-1] not in _SA_PARAMS:
        return None
    i, rest = int(parts[1]), parts[2:]
    if i == 0 or i == last:
        return ("conv1." if i == 0 else "conv2.") + ".".join(rest) if len(rest) == 1 else None
    if i == last - 1:
        return "snake1." + rest[0] if len(rest) == 1 else None
    # A decoder block: rest = layers.j.param or layers.j.layers.k.param
    if len(rest) < 3 or rest[0] != "layers" or not rest[1].isdigit() or int(rest[1]) not in _SA_BLOCK:
        return None
    sub = _SA_BLOCK[int(rest[1])]
    name = f"block.{i - 1}.{sub}"
    if sub.startswith("res_unit"):
        r = rest[2:]
        if len(r) != 3 or r[0] != "layers" or not r[1].isdigit() or int(r[1]) not in _SA_RES:
            return None
        return f"{name}.{_SA_RES[int(r[1])]}.{r[2]}"
    return f"{name}.{rest[2]}" if len(rest) == 3 else None


def infer_config(sd: Mapping[str, torch.Tensor], sample_rate: int = 44100) -> OobleckConfig:
    """The OobleckConfig a native state dict was made with (shapes give all but the rate)."""
    try:
        latent = sd["conv1.weight"].shape[1]
        audio_channels, channels = sd["conv2.weight"].shape[:2]
        n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("block."))
        mults, strides = [0] * n, [0] * n
        for b in range(n):
            in_dim, _, k = sd[f"block.{b}.conv_t1.weight"].shape  # (in, out, 2 * stride)
            if in_dim % channels or k % 2:
                raise BundleError(f"VAE weights: block {b} has {in_dim} channels, kernel {k}")
            mults[n - 1 - b], strides[n - 1 - b] = in_dim // channels, k // 2  # encoder order
    except (KeyError, ValueError) as e:
        raise BundleError(f"VAE weights: cannot infer the config ({type(e).__name__}: {e})") from None
    return OobleckConfig(latent, channels, tuple(mults), tuple(strides), audio_channels, sample_rate)
