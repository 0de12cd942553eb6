"""BERT-family sentence encoders (all-MiniLM-L6-v2) as a bundle's text component, torch-free.

A bundle with `text.kind == "sentence"` keeps its encoder in `text/` (`text.dir`):

```
text/encoder.onnx     BERT encoder: input_ids, attention_mask [B, S] int64 ->
                      tokens [B, S, E] (last hidden state, padding rows zero),
                      pooled [B, E] (mean over the mask: sentence-transformers' pooling)
text/tokenizer.json   its WordPiece tokenizer, read by the `tokenizers` library
text/manifest.json    where it came from, its license, sha256s, the precision kept and the
                      int8 / fp16 cosines against fp32 that chose it (`v2m.export.sentence`)
```

It runs in ONNX Runtime on every backend (torch included: one path, and the prompt is
encoded once per generation), so a torch-free install needs only onnxruntime and tokenizers.

With `text.pooled_token` (the default) the DiT sees the mean-pooled sentence embedding as
token 0, then the prompt's tokens ([CLS] ... [SEP], cut to `max_tokens - 1`): the pooled
vector is what the model was trained on (contrastively, so paraphrases land close), the
tokens keep word-level detail for cross-attention; it is not L2-normalized, so it is on
the scale of the token rows. The unconditional branch of CFG is zeros with the same mask,
as for every kind.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from v2m.core import jsonio
from v2m.core.bundle import text_max_tokens
from v2m.core.errors import BackendUnavailable, BundleError
from v2m.core.manifest import sha256_file

from .tokenizer import PaddedTokenizer

__all__ = ["TEXT_FORMAT", "TEXT_MANIFEST", "SentenceTextEncoder", "load_text_manifest"]

log = logging.getLogger("v2m.text")

TEXT_FORMAT = "v2m-text/1"
TEXT_MANIFEST = "manifest.json"
DEFAULT_DIR = "text"


def load_text_manifest(text_dir: str | Path) -> dict[str, Any]:
    """`text/manifest.json`, checked for the keys the runtime reads (BundleError, one line)."""
    path = Path(text_dir) / TEXT_MANIFEST
    if not path.is_file():
        raise BundleError(f"{path}: missing; put a sentence encoder in the bundle with "
                          "`v2m convert --text-encoder minilm -o BUNDLE`")
    data = jsonio.load_file(path, BundleError)
    if not isinstance(data, dict) or data.get("format") != TEXT_FORMAT:
        raise BundleError(f"{path}: not a {TEXT_FORMAT} text manifest; re-create it with this v2m")
    for key in ("dim", "graph", "tokenizer"):
        if key not in data:
            raise BundleError(f"{path}: '{key}' is missing")
    return data


def _verified(text_dir: Path, entry: Any, what: str) -> Path:
    """The file a manifest entry names, checked against its sha256."""
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not isinstance(entry.get("sha256"), str):
        raise BundleError(f"{text_dir / TEXT_MANIFEST}: '{what}' must name a file and its sha256")
    path = text_dir / entry["file"]
    if not path.is_file():
        raise BundleError(f"{path}: missing; the bundle's text component is incomplete")
    if sha256_file(path) != entry["sha256"]:
        raise BundleError(f"{path} is not the file {text_dir / TEXT_MANIFEST} lists (its sha256 differs); "
                          "re-create the text component with `v2m convert --text-encoder`")
    return path


class SentenceTextEncoder:
    """prompt -> (embeddings [S, E] float32, mask [S] bool) with `text/encoder.onnx` in ONNX Runtime."""

    def __init__(self, bundle_dir: str | Path, text_cfg: dict, text_dim: int):
        text_dir = Path(bundle_dir) / text_cfg.get("dir", DEFAULT_DIR)
        man = load_text_manifest(text_dir)
        self.dim, self.max_tokens = int(man["dim"]), text_max_tokens(text_cfg)
        self.pooled_token = bool(text_cfg.get("pooled_token", True))
        if self.dim != text_dim:
            raise BundleError(f"{text_dir}: the sentence encoder gives {self.dim}-wide embeddings but the DiT "
                              f"takes dit.text_dim {text_dim}; train a DiT with text_dim {self.dim}")
        if self.max_tokens < 2 + self.pooled_token:
            raise BundleError(f"text.max_tokens {self.max_tokens} leaves no room for a word ([CLS] and [SEP]"
                              f"{' and the pooled token' if self.pooled_token else ''}); use 8 or more")
        limit = int(man.get("max_positions", self.max_tokens))
        if self.max_tokens > limit:
            raise BundleError(f"text.max_tokens {self.max_tokens} is more than this encoder's {limit} positions; "
                              f"set it to {limit} or fewer in {Path(bundle_dir) / 'config.json'}")
        graph = _verified(text_dir, man["graph"], "graph")
        tok = _verified(text_dir, man["tokenizer"], "tokenizer")
        self.tokenizer = PaddedTokenizer(tok, self.max_tokens - self.pooled_token, pad_token="[PAD]",
                                         what="a BERT (WordPiece)", extra="sentence")
        self.session = _session(graph)
        self.precision = man["graph"].get("precision", "fp32")
        log.info("text: sentence encoder %s (%s, %d-wide, %d tokens%s)", man.get("source", graph), self.precision,
                 self.dim, self.max_tokens, ", pooled token first" if self.pooled_token else "")

    def encode_batch(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """prompts -> (embeddings [B, S, E] float32, mask [B, S] bool)."""
        ids, mask = self.tokenizer(prompts)  # (B, S') each
        tokens, pooled = self.session.run(["tokens", "pooled"], {"input_ids": ids, "attention_mask": mask})
        emb, keep = tokens.astype(np.float32), mask.astype(bool)
        if self.pooled_token:  # token 0: the sentence embedding, always unmasked
            emb = np.concatenate([pooled.astype(np.float32)[:, None], emb], axis=1)  # (B, S, E)
            keep = np.concatenate([np.ones((len(prompts), 1), dtype=bool), keep], axis=1)  # (B, S)
        return emb, keep

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        emb, keep = self.encode_batch([prompt])
        return emb[0], keep[0]


def _session(graph: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailable("this bundle's text encoder is an ONNX graph, run by onnxruntime on every "
                                 "backend: pip install 'v2m-runtime[ort,sentence]'") from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
