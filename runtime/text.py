"""Text conditioning behind one interface: prompt -> (embeddings [S, E] float32, mask [S] bool).

Three implementations, chosen by the bundle's `text` config:

- `builtin`: a deterministic word-hash embedding table (the tiny/small/full random
  bundles). Pure numpy, so the lean runtime needs no torch for it.
- `precomputed`: embeddings computed elsewhere and saved to safetensors
  (`embeddings` [S, E], optional `mask` [S]). Pure numpy.
- `hf`: a local Hugging Face encoder directory (offline; needs torch and
  transformers, see `v2m.models.text`).
- `t5`: Stable Audio Open's T5 from the bundle (`v2m.runtime.t5_text`: torch weights, or
  the exported ONNX graph and a `tokenizers` tokenizer without torch).
- `sentence`: a BERT-family sentence encoder (all-MiniLM-L6-v2) stored in the bundle as an
  ONNX graph and a tokenizer.json (`v2m.runtime.sentence_text`), ONNX Runtime on every backend.

The unconditional branch of CFG is zeros of the same shape with the same mask.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from v2m.core.bundle import text_max_tokens
from v2m.core.errors import BundleError, InputError

__all__ = [
    "TextEncoder",
    "BuiltinTextEncoder",
    "PrecomputedText",
    "load_text_encoder",
    "tokenize",
]

log = logging.getLogger("v2m.text")

BOS_ID = 1  # always present, so even an empty prompt has one unmasked key
PAD_ID = 0
_WORD = re.compile(r"[0-9a-z]+")


class TextEncoder(Protocol):
    dim: int
    max_tokens: int

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        """prompt -> (embeddings [S, E] float32, mask [S] bool)."""
        ...


def tokenize(prompt: str, vocab_size: int, max_tokens: int) -> np.ndarray:
    """Lower-cased words hashed (CRC-32) into the vocabulary, BOS first, padded to max_tokens."""
    words = _WORD.findall(prompt.lower())
    ids = [BOS_ID] + [2 + zlib.crc32(w.encode()) % (vocab_size - 2) for w in words]
    if len(ids) > max_tokens:
        log.warning("prompt has %d words; only the first %d are used", len(words), max_tokens - 1)
        ids = ids[:max_tokens]
    out = np.full(max_tokens, PAD_ID, dtype=np.int64)
    out[: len(ids)] = ids
    return out


class BuiltinTextEncoder:
    """Word-hash embedding lookup: deterministic, instant, and meaningless until trained."""

    def __init__(self, table: np.ndarray, max_tokens: int):
        self.table = np.ascontiguousarray(table, dtype=np.float32)  # (vocab, E)
        self.vocab_size, self.dim = self.table.shape
        self.max_tokens = max_tokens

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        ids = tokenize(prompt, self.vocab_size, self.max_tokens)
        mask = np.zeros(self.max_tokens, dtype=bool)
        mask[: max(1, int(np.count_nonzero(ids)))] = True
        emb = self.table[ids] * mask[:, None]  # (S, E); padding rows are zero
        return emb.astype(np.float32), mask


class PrecomputedText:
    """Embeddings from a safetensors file; the prompt is not used."""

    def __init__(self, path: str | Path, dim: int | None = None):
        path = Path(path)
        tensors = _read_safetensors(path)
        if "embeddings" not in tensors:
            raise InputError(f"{path}: no 'embeddings' tensor; save [S, E] float embeddings under that name")
        emb = np.asarray(tensors["embeddings"], dtype=np.float32)
        if emb.ndim == 3 and emb.shape[0] == 1:
            emb = emb[0]
        if emb.ndim != 2:
            raise InputError(f"{path}: 'embeddings' must be [S, E], got {list(emb.shape)}")
        if dim is not None and emb.shape[1] != dim:
            raise InputError(f"{path}: embeddings have width {emb.shape[1]} but the model expects {dim}")
        mask = np.asarray(tensors.get("mask", np.ones(emb.shape[0])), dtype=bool).reshape(-1)
        if mask.shape[0] != emb.shape[0]:
            raise InputError(f"{path}: mask length {mask.shape[0]} != embeddings length {emb.shape[0]}")
        self.path, self.emb, self.mask = path, emb, mask
        self.dim, self.max_tokens = emb.shape[1], emb.shape[0]

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        if prompt:
            log.info("using precomputed text embeddings from %s; the prompt text is not used", self.path)
        return self.emb.copy(), self.mask.copy()


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise BundleError(f"{path}: text embeddings file is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0] if str(e) else e!r})") from None


def load_text_encoder(bundle_dir: str | Path, text_cfg: dict, text_dim: int, device: str = "cpu") -> TextEncoder:
    """The text encoder a bundle's `text` config describes."""
    bundle_dir = Path(bundle_dir)
    kind = text_cfg.get("kind", "builtin")
    if kind == "builtin":
        tensors = _read_safetensors(bundle_dir / text_cfg.get("file", "text.safetensors"))
        if "embedding.weight" not in tensors:
            raise BundleError(f"{bundle_dir / 'text.safetensors'}: missing key 'embedding.weight'")
        table = tensors["embedding.weight"]
        if table.ndim != 2 or table.shape[1] != text_dim:
            raise BundleError(
                f"{bundle_dir / 'text.safetensors'}: embedding.weight has shape {list(table.shape)}, "
                f"expected [vocab, {text_dim}]"
            )
        if table.dtype.kind != "f":
            raise BundleError(f"{bundle_dir / 'text.safetensors'}: embedding.weight is {table.dtype}, not "
                              "floating point; save fp32, fp16 or bf16 weights")
        return BuiltinTextEncoder(table, text_max_tokens(text_cfg))
    if kind == "precomputed":
        return PrecomputedText(bundle_dir / text_cfg.get("file", "text.safetensors"), dim=text_dim)
    if kind == "hf":
        try:
            from v2m.models.text import HFTextEncoder
        except ImportError as e:
            raise BundleError(
                f"this bundle uses a Hugging Face text encoder, which needs torch and transformers "
                f"(pip install 'v2m-runtime[torch,hf]'), or precompute embeddings ({e})"
            ) from None
        path = Path(text_cfg["path"])
        return HFTextEncoder(path if path.is_absolute() else bundle_dir / path, text_max_tokens(text_cfg), text_dim, device)
    if kind == "t5":
        from .t5_text import load_t5_text_encoder

        return load_t5_text_encoder(bundle_dir, text_cfg, text_dim, device)
    if kind == "sentence":
        from .sentence_text import SentenceTextEncoder

        return SentenceTextEncoder(bundle_dir, text_cfg, text_dim)
    raise BundleError(f"{bundle_dir / 'config.json'}: unknown text encoder kind {kind!r} "
                      "(builtin, precomputed, hf, t5 or sentence)")
