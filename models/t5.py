"""T5 encoder (Raffel et al. 2020): Stable Audio Open's text encoder, token ids -> hidden states.

Matches Hugging Face transformers' `T5EncoderModel` (transformers 5.x) to float32
rounding given the same weights:

    ids [B, S] --embedding (no scaling)--> h [B, S, E]
    block (pre-RMSNorm, no biases anywhere):
        h += O(softmax(Q K^T + position_bias + mask_bias) V)      no 1/sqrt(d) scaling
        h += Wo(act(Wi h))  or  Wo(act(Wi0 h) * Wi1 h)            "relu" (t5-base) / "gated-gelu" (flan, v1.1)
    out = RMSNorm(h) * mask                                       [B, S, E], padding rows zeroed

The position bias is one table of bidirectional relative-position buckets (block 0's
`relative_attention_bias`), shared by every block. The output is masked because every
consumer (stable-audio-tools' T5 conditioner, diffusers' StableAudioPipeline) zeroes
padded positions before using them.

Tokenization runs through the `tokenizers` library from a local `tokenizer.json`
(`v2m.runtime.t5_text`), never through transformers. `make_tokenizer` writes a small
deterministic SentencePiece-style (Unigram) tokenizer for random bundles.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from v2m.core.errors import BundleError

from .checkpoint import apply_state_dict, config_from_dict, load_safetensors

__all__ = [
    "T5Config",
    "PRESETS",
    "T5Encoder",
    "T5TextEncoder",
    "config_from_hf",
    "convert_hf_state_dict",
    "make_tokenizer",
]

log = logging.getLogger("v2m.t5")

# Additive bias for padded keys: finite and fp16-safe; T5's scores are unscaled but far smaller.
MASK_BIAS = -30000.0
_ACTS = {"relu": F.relu, "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu, "silu": F.silu}
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "text.safetensors")


@dataclass
class T5Config:
    vocab_size: int = 32128
    d_model: int = 768  # E
    d_kv: int = 64
    d_ff: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    feed_forward_proj: str = "relu"  # "relu" | "gated-gelu" | "gated-silu" | ...
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self):
        act = self.feed_forward_proj.split("-")[-1]
        if act not in ("relu", "gelu", "silu") or self.feed_forward_proj.count("-") > 1:
            raise BundleError(f"T5 config: feed_forward_proj {self.feed_forward_proj!r} is not supported")
        if min(self.vocab_size, self.d_model, self.d_kv, self.d_ff, self.num_layers, self.num_heads) < 1:
            raise BundleError(f"T5 config: sizes must be positive ({self})")

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def act(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act  # transformers' special case

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> T5Config:
        return config_from_dict(cls, d, "T5")


PRESETS: dict[str, T5Config] = {
    "t5-base": T5Config(),  # what SAO 1.0 and SAO Small condition on (110M parameters)
    "tiny": T5Config(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4),
}


def config_from_hf(d: Mapping) -> T5Config:
    """A T5Config from a Hugging Face T5 config.json (decoder settings ignored)."""
    if d.get("model_type", "t5") not in ("t5", "umt5", "mt5"):
        raise BundleError(f"text encoder config: model_type {d.get('model_type')!r} is not T5")
    try:
        return T5Config(**{k: d[k] for k in T5Config.__dataclass_fields__ if k in d})
    except (TypeError, ValueError) as e:
        raise BundleError(f"T5 config.json is malformed: {e}") from None


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device) -> torch.Tensor:
    """Bidirectional T5 buckets of (key - query) positions: [S, S] int64 (mesh-tensorflow's scheme)."""
    pos = torch.arange(length, dtype=torch.long, device=device)
    rel = pos[None, :] - pos[:, None]  # (S, S): memory - context
    half = num_buckets // 2
    buckets = (rel > 0).to(torch.long) * half
    rel = rel.abs()
    max_exact = half // 2
    large = max_exact + (
        torch.log(rel.float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).to(torch.long)
    large = torch.clamp(large, max=half - 1)
    return buckets + torch.where(rel < max_exact, rel, large)


class RMSNorm(nn.Module):
    """T5LayerNorm: x / sqrt(mean(x^2) + eps) * weight, statistics in fp32, no mean, no bias."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        return self.weight * x.to(self.weight.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.heads, self.d_kv = cfg.num_heads, cfg.d_kv
        inner = cfg.num_heads * cfg.d_kv
        self.qkv = nn.Linear(cfg.d_model, 3 * inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, self.d_kv).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, S, Dk)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # (B, H, S, Dk)
        return self.o(o.transpose(1, 2).reshape(b, s, -1))  # (B, S, E)


class FeedForward(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.act = _ACTS[cfg.act]
        if cfg.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "wi"):
            return self.wo(self.act(self.wi(x)))
        return self.wo(self.act(self.wi_0(x)) * self.wi_1(x))


class T5Block(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.norm1 = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.attn = Attention(cfg)
        self.norm2 = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.ff = FeedForward(cfg)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h), bias)
        return h + self.ff(self.norm2(h))


class T5Encoder(nn.Module):
    """forward(input_ids [B, S] int64, attention_mask [B, S]) -> hidden states [B, S, E], padding zeroed."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rel_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)
        self.blocks = nn.ModuleList([T5Block(cfg) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    @classmethod
    def from_config(cls, cfg: T5Config | Mapping) -> T5Encoder:
        return cls(cfg if isinstance(cfg, T5Config) else T5Config.from_dict(cfg))

    def position_bias(self, length: int, device) -> torch.Tensor:
        """(1, H, S, S): the learned bias of each bucket, shared by all blocks."""
        c = self.cfg
        buckets = relative_position_buckets(length, c.relative_attention_num_buckets, c.relative_attention_max_distance, device)
        return self.rel_bias(buckets).permute(2, 0, 1)[None]  # (S, S, H) -> (1, H, S, S)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)  # (B, S, E)
        keep = attention_mask.to(h.dtype)
        bias = self.position_bias(input_ids.shape[1], h.device).to(h.dtype) + ((1.0 - keep) * MASK_BIAS)[:, None, None, :]
        for blk in self.blocks:
            h = blk(h, bias)  # bias: (B, H, S, S)
        return self.final_norm(h) * keep[:, :, None]

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> T5Encoder:
        """A Hugging Face T5 directory (config.json + safetensors; T5EncoderModel or a whole T5 model)."""
        d = Path(directory)
        try:
            cfg = config_from_hf(json.loads((d / "config.json").read_text()))
        except (OSError, ValueError) as e:
            raise BundleError(f"{d}: not a T5 directory ({e})") from None
        path = next((d / f for f in _WEIGHT_FILES if (d / f).is_file()), None)
        if path is None:
            raise BundleError(f"{d}: no safetensors weights (looked for {', '.join(_WEIGHT_FILES)}); "
                              "pickled .bin files are not loaded")
        model = cls(cfg)
        apply_state_dict(model, convert_hf_state_dict(load_safetensors(path), cfg), where=str(path))
        log.info("loaded T5 encoder from %s (%d layers, width %d)", path, cfg.num_layers, cfg.d_model)
        return model.eval()


# --- weight layout conversion (once, at load) ----------------------------------------------------
_HF_BLOCK = {
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi.weight": "ff.wi.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ff.wi_0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ff.wi_1.weight",
    "layer.1.DenseReluDense.wo.weight": "ff.wo.weight",
}


def convert_hf_state_dict(sd: Mapping[str, torch.Tensor], cfg: T5Config) -> dict[str, torch.Tensor]:
    """transformers T5 weights -> native: fuse Q/K/V, lift block 0's relative bias; decoder keys ignored."""
    out: dict[str, torch.Tensor] = {}
    bad: list[str] = []
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.startswith(("decoder.", "lm_head.")):
            continue
        if key in ("shared.weight", "encoder.embed_tokens.weight"):
            out["embed.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["final_norm.weight"] = value
        elif key == "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            out["rel_bias.weight"] = value
        elif key.startswith("encoder.block."):
            _, _, i, rest = key.split(".", 3)
            if rest.startswith("layer.0.SelfAttention.") and rest.split(".")[-2] in ("q", "k", "v"):
                qkv.setdefault(i, {})[rest.split(".")[-2]] = value
            elif rest in _HF_BLOCK:
                out[f"blocks.{i}.{_HF_BLOCK[rest]}"] = value
            else:
                bad.append(key)
        else:
            bad.append(key)
    if bad:
        raise BundleError(f"T5 weights: {len(bad)} unrecognized keys, e.g. {sorted(bad)[:3]}")
    for i, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise BundleError(f"T5 weights: block {i} lacks {sorted({'q', 'k', 'v'} - set(parts))}")
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


# --- tokenizer and the torch text encoder ----------------------------------------------------------
# Words of the random bundles' tokenizer: enough for prompts like the docs' examples.
_WORDS = (
    "a an and the of with in on at to for from by as is it this that warm cold soft hard slow fast "
    "bright dark happy sad calm epic dreamy upbeat chill ambient synth pop rock jazz piano guitar "
    "drums bass strings orchestra orchestral beat beats loop melody chords pad pads lead vocal choir "
    "electronic acoustic house techno hip hop lofi cinematic dance funk folk metal classical trailer "
    "bpm 60 70 80 90 100 110 120 128 130 140 150 160 174 music song track sound rain wind hammer"
).split()


def make_tokenizer(path: str | Path, vocab_size: int, words: tuple[str, ...] | list[str] = _WORDS) -> Path:
    """Write a deterministic T5-style tokenizer.json (lower-casing, Unigram, Metaspace, `$A </s>`) to `path`.

    Ids: <pad> 0, </s> 1, <unk> 2, then "▁word" pieces, then single characters, all
    below `vocab_size` (the T5 embedding's rows). For random bundles and tests only.
    """
    try:
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    except ImportError:
        raise BundleError("T5 tokenizers need the `tokenizers` package: pip install tokenizers") from None
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-"))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + w, -2.0 - 0.01 * i) for i, w in enumerate(words)] + [("\u2581", -6.0)]
    pieces += [(c, -8.0) for c in chars]
    if len(pieces) > vocab_size:
        raise BundleError(f"tokenizer: {len(pieces)} pieces do not fit a vocabulary of {vocab_size}")
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])  # its vocabulary is lower case
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    path = Path(path)
    tok.save(str(path))
    return path


class T5TextEncoder:
    """prompt -> (embeddings [S, E] float32, mask [S] bool): tokenizers + the torch T5Encoder.

    The same interface as `v2m.runtime.text.TextEncoder`; `v2m.runtime.t5_text` has the
    torch-free ONNX Runtime twin.
    """

    def __init__(self, model: T5Encoder, tokenizer, device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dim, self.max_tokens = model.cfg.d_model, tokenizer.max_tokens

    @torch.no_grad()
    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tokenizer([prompt])
        out = self.model(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
        return out[0].float().cpu().numpy(), mask[0].astype(bool)
