"""The types and ranges of every value in a bundle's config.json, as tables.

`validate_config` runs once, where the config is read (`v2m.core.bundle.load_config`),
before any dataclass or model is built: a wrong type (`"64"`, `null`, `"2,4,7,8,8"`), a
size of 0 or below, a sample rate of 1e12, a missing key the runtime reads is one line
naming the key and the file (BundleError, exit 2), never a TypeError or a hang later.

Each section is a table, key -> `Rule(check, required)`, in the pattern of the CLI's
`cli_support.CHECKS`: a check returns what is wrong with a value, or None. Sections that
depend on a kind (`encoder.kind`, `text.kind`) or on the model family pick their table
by it. Upper bounds are sanity limits, generous against any published model (DiT widths
to 32768, depths to 1024): past them a value is a typo or an attack, and the size
estimate (`v2m.core.model_size`) then bounds what the values allowed here add up to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from .errors import BundleError
from .sampler_limits import MAX_GUIDANCE, MAX_SHIFT, MAX_STEPS, SOLVERS

__all__ = [
    "Rule",
    "SECTIONS",
    "MAX_CURVE_FPS",
    "SAMPLE_RATES",
    "LATENT_RATES",
    "validate_config",
]

Check = Callable[[Any], "str | None"]

SAMPLE_RATES = (8000, 192000)  # audio.sample_rate, Hz: telephone to studio
MAX_CURVE_FPS = 120.0  # curve.fps: frames a second decoded for the curve
LATENT_RATES = (1.0, 200.0)  # sample_rate / hop_length, latent frames a second (v2m 12.3, SAO 21.5)


class Rule(NamedTuple):
    check: Check
    required: bool = False


# --- checks ----------------------------------------------------------------------------------
def _show(v: Any) -> str:
    """A value for a one-line message: its repr, cut short (a config may hold megabytes)."""
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def integer(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        if not _is_int(v) or not lo <= v <= hi:
            return f"must be an integer in [{lo}, {hi}], got {_show(v)}"
        return None

    return check


def number(lo: float, hi: float, lo_open: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if not _is_num(v) or not math.isfinite(v) or not (lo < v if lo_open else lo <= v) or v > hi:
            return f"must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {_show(v)}"
        return None

    return check


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {_show(v)}"


def string(v: Any) -> str | None:
    return None if isinstance(v, str) and v else f"must be a non-empty string, got {_show(v)}"


def obj(v: Any) -> str | None:
    return None if isinstance(v, dict) else f"must be a JSON object, got {_show(v)}"


def choice(*values: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in values else f"must be one of {', '.join(values)}, got {_show(v)}"

    return check


def optional(inner: Check) -> Check:
    """`inner`, or null."""
    return lambda v: None if v is None else inner(v)


def odd(inner: Check) -> Check:
    return lambda v: inner(v) or (None if v % 2 else f"must be odd, got {_show(v)}")


def list_of(item: Check, lo_len: int, hi_len: int) -> Check:
    """A JSON list of `lo_len`..`hi_len` items, each passing `item`."""

    def check(v: Any) -> str | None:
        if not isinstance(v, (list, tuple)) or not lo_len <= len(v) <= hi_len:
            n = f"{lo_len}" if lo_len == hi_len else f"{lo_len} to {hi_len}"
            return f"must be a list of {n} values, got {_show(v)}"
        for i, x in enumerate(v):
            problem = item(x)
            if problem:
                return f"item {i} {problem}"
        return None

    return check


# --- tables ----------------------------------------------------------------------------------
WIDTH, DEPTH, HEADS = integer(1, 32768), integer(1, 1024), integer(1, 1024)
CHANNELS = integer(1, 65536)
EPS = number(0.0, 0.1, lo_open=True)
THETA = number(0.0, 1e9, lo_open=True)
RATE = integer(*SAMPLE_RATES)

V2M_DIT = {
    "latent_channels": Rule(integer(1, 4096), True), "width": Rule(WIDTH, True), "depth": Rule(DEPTH, True),
    "heads": Rule(HEADS, True), "mlp_dim": Rule(integer(1, 262144), True), "text_dim": Rule(WIDTH, True),
    "freq_dim": Rule(integer(2, 65536), True), "rope_theta": Rule(THETA), "norm_eps": Rule(EPS),
}
SAO_DIT = {
    "latent_channels": Rule(integer(1, 4096), True), "width": Rule(WIDTH, True), "depth": Rule(DEPTH, True),
    "heads": Rule(HEADS, True), "cond_dim": Rule(WIDTH, True), "cross_dim": Rule(WIDTH, True), "global_dim": Rule(WIDTH, True),
    "input_concat_dim": Rule(integer(0, 4096), True), "rotary_dim": Rule(integer(2, 32768)),
    "ff_mult": Rule(number(0.0, 64.0, lo_open=True), True), "qk_norm": Rule(string), "freq_dim": Rule(integer(2, 65536), True),
    "rope_theta": Rule(THETA), "norm_eps": Rule(EPS),
}
VAE = {
    "latent_channels": Rule(integer(1, 4096), True), "channels": Rule(CHANNELS, True),
    "channel_multiples": Rule(list_of(integer(1, 1024), 1, 16), True), "strides": Rule(list_of(integer(1, 64), 1, 16), True),
    "audio_channels": Rule(integer(1, 16), True), "sample_rate": Rule(RATE),
}
DINOV2 = {
    "hidden_size": Rule(WIDTH, True), "num_layers": Rule(DEPTH, True), "num_heads": Rule(HEADS, True),
    "mlp_ratio": Rule(number(0.0, 64.0, lo_open=True), True), "patch_size": Rule(integer(1, 1024), True),
    "image_size": Rule(integer(1, 8192), True), "num_register_tokens": Rule(integer(0, 1024)),
    "layerscale_value": Rule(number(-1e6, 1e6)), "layer_norm_eps": Rule(EPS), "use_swiglu_ffn": Rule(boolean),
    "qkv_bias": Rule(boolean), "interpolate_antialias": Rule(optional(boolean)),
    "interpolate_offset": Rule(number(0.0, 1.0)),
}
PIXELS = integer(8, 4096)  # encoder.input_size: frames are resized to this square
CHANNEL_STATS = {"mean": Rule(list_of(number(-10.0, 10.0), 3, 3), True),
                 "std": Rule(list_of(number(0.0, 10.0, lo_open=True), 3, 3), True)}  # std 0 divides by zero
ENCODERS = {  # encoder.kind -> its table ("dinov2" when kind is absent)
    "dinov2": {"kind": Rule(string), "config": Rule(obj, True), "input_size": Rule(PIXELS, True),
               **CHANNEL_STATS, "pooling": Rule(string)},
    "cut": {"kind": Rule(string), "input_size": Rule(PIXELS, True), "bins": Rule(integer(2, 256)),
            "thumb": Rule(integer(1, 256)), "thumb_weight": Rule(number(0.0, 100.0))},
    "motion": {"kind": Rule(string), "input_size": Rule(PIXELS, True), "grid": Rule(integer(1, 256)),
               "radius": Rule(integer(1, 64))},
    "none": {"kind": Rule(string)},
}
T5 = {
    "vocab_size": Rule(integer(1, 1 << 20), True), "d_model": Rule(WIDTH, True), "d_kv": Rule(integer(1, 4096), True),
    "d_ff": Rule(integer(1, 262144), True), "num_layers": Rule(DEPTH, True), "num_heads": Rule(HEADS, True),
    "relative_attention_num_buckets": Rule(integer(1, 4096)),
    "relative_attention_max_distance": Rule(integer(1, 1 << 20)), "feed_forward_proj": Rule(string),
    "layer_norm_epsilon": Rule(EPS),
}
TOKENS = integer(1, 4096)
TEXTS = {  # text.kind -> its table ("builtin" when kind is absent)
    "builtin": {"kind": Rule(string), "vocab_size": Rule(integer(1, 1 << 20), True), "max_tokens": Rule(TOKENS),
                "file": Rule(string)},
    "precomputed": {"kind": Rule(string), "max_tokens": Rule(TOKENS), "file": Rule(string)},
    "hf": {"kind": Rule(string), "path": Rule(string, True), "max_tokens": Rule(TOKENS)},
    "t5": {"kind": Rule(string), "config": Rule(obj, True), "max_tokens": Rule(TOKENS),
           "tokenizer": Rule(string, True), "file": Rule(string)},
    "sentence": {"kind": Rule(string), "dir": Rule(string), "max_tokens": Rule(TOKENS), "pooled_token": Rule(boolean)},
}
SAMPLER = {
    "steps": Rule(integer(1, MAX_STEPS)), "cfg_scale": Rule(number(0.0, MAX_GUIDANCE)),
    "uncond_keeps_curve": Rule(boolean), "solver": Rule(choice(*SOLVERS)),
    "shift": Rule(number(1.0 / MAX_SHIFT, MAX_SHIFT)), "curve_guidance": Rule(number(0.0, MAX_GUIDANCE)),
    "empty_prompt": Rule(choice("encode", "null")),
    # windows crossfade over up to a third of a window: fewer than 8 frames leaves no room
    "max_frames": Rule(integer(8, 65536)), "window_overlap": Rule(number(0.0, 65536.0)),
    "window_mode": Rule(choice("separate", "joint")),
}
MUSIC_ENCODERS = ("logmel", "basic-pitch", "hf")  # `curve.music`: the music encoders of the training curves
CURVE = {"fps": Rule(optional(number(0.0, MAX_CURVE_FPS, lo_open=True))), "kernel": Rule(odd(integer(1, 1001))),
         "music": Rule(choice(*MUSIC_ENCODERS)), "std_floor": Rule(number(0.0, 1.0e3))}
AUDIO = {
    "sample_rate": Rule(RATE), "channels": Rule(integer(1, 16)), "hop_length": Rule(integer(1, 1 << 20)),
    "fade_out_s": Rule(number(0.0, 10.0)),
}
SAO_COND = {
    "text_dim": Rule(WIDTH, True), "cond_dim": Rule(WIDTH, True), "numbers": Rule(list_of(obj, 1, 16), True),
    "cross_numbers": Rule(list_of(string, 0, 16)), "global_numbers": Rule(list_of(string, 0, 16)),
    "number_features": Rule(integer(2, 65536), True),
}
SAO = {
    "objective": Rule(string), "sigma_min": Rule(number(0.0, 1e6)), "sigma_max": Rule(number(0.0, 1e6)),
    "sigma_schedule": Rule(string), "sampler": Rule(string), "latent_frames": Rule(integer(1, 65536), True),
    "cond": Rule(obj),
}
# section -> the tables that check it (a callable picks one by the section's kind or the family)
SECTIONS: dict[str, Callable[[dict, str], dict[str, Rule] | None]] = {
    "dit": lambda d, family: SAO_DIT if family == "sao" else V2M_DIT,
    "vae": lambda d, family: VAE,
    "encoder": lambda d, family: ENCODERS.get(d.get("kind", "dinov2")),
    "text": lambda d, family: TEXTS.get(d.get("kind", "builtin")),
    "sampler": lambda d, family: SAMPLER,
    "curve": lambda d, family: CURVE,
    "audio": lambda d, family: AUDIO,
    "sao": lambda d, family: SAO,
}
NESTED = {("encoder", "config"): DINOV2, ("text", "config"): T5, ("sao", "cond"): SAO_COND}


def _check_table(d: dict, table: dict[str, Rule], key: str, where: str) -> None:
    for name, rule in table.items():
        if name not in d:
            if rule.required:
                raise BundleError(f"{where}: {key}.{name} is missing")
            continue
        problem = rule.check(d[name])
        if problem:
            raise BundleError(f"{where}: {key}.{name} {problem}")


def validate_config(data: dict[str, Any], where: str, audio_defaults: dict[str, Any]) -> None:
    """Check every section's values' types and ranges (BundleError naming the key and `where`).

    Args:
        audio_defaults: the `audio` section's defaults (`AudioConfig`'s), for the rules across keys.

    Unknown keys are left to the sections' own readers, which name them."""
    family = data.get("family", "v2m")
    for section, pick in SECTIONS.items():
        d = data.get(section)
        if d is None and section in ("sampler", "curve", "audio", "sao"):
            continue  # defaults (sao: only with family "sao", checked by the reader)
        if not isinstance(d, dict):
            raise BundleError(f"{where}: section {section!r} must be a JSON object, got {_show(d)}")
        if "kind" in d and string(d["kind"]):
            raise BundleError(f"{where}: {section}.kind {string(d['kind'])}")
        table = pick(d, family)
        if table is None:
            continue  # an unknown kind: its reader names the kinds it knows
        _check_table(d, table, section, where)
        for (sec, name), nested in NESTED.items():
            if sec == section and isinstance(d.get(name), dict):
                _check_table(d[name], nested, f"{section}.{name}", where)
    _check_geometry(data, where, {**audio_defaults, **(data.get("audio") or {})})


def _check_geometry(data: dict[str, Any], where: str, audio: dict[str, Any]) -> None:
    """Rules across keys: the latent rate, and the VAE's hop against the audio section's."""
    rate, hop, vae = audio["sample_rate"], audio["hop_length"], data["vae"]
    if not LATENT_RATES[0] <= rate / hop <= LATENT_RATES[1]:
        raise BundleError(f"{where}: audio.sample_rate / audio.hop_length = {rate / hop:g} latent frames a second, "
                          f"outside [{LATENT_RATES[0]:g}, {LATENT_RATES[1]:g}]")
    strides = vae.get("strides")
    if strides is not None and math.prod(strides) != hop:
        raise BundleError(f"{where}: audio.hop_length {hop} is not the product of vae.strides {strides} "
                          f"({math.prod(strides)})")
