"""Prompts to padded token ids with the `tokenizers` library (torch-free, never a download).

One class for every encoder whose bundle ships a `tokenizer.json`: T5 (`v2m.runtime.t5_text`)
and BERT-family sentence encoders (`v2m.runtime.sentence_text`). It follows transformers'
fast tokenizers with `padding="max_length", truncation=True`: the post-processor's closing
token (`</s>`, `[SEP]`) is kept when a prompt is cut, padding is the pad token to exactly
`max_tokens`, the mask is 1 on real tokens.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from v2m.core.errors import BackendUnavailable, BundleError

__all__ = ["PaddedTokenizer"]

log = logging.getLogger("v2m.text")


class PaddedTokenizer:
    """prompts -> (input_ids [B, S] int64, attention_mask [B, S] int64), S = max_tokens.

    Args:
        path: a tokenizer.json, or a directory holding one.
        pad_token: the padding token the tokenizer must know ("<pad>" for T5, "[PAD]" for BERT).
        what: the encoder's name in messages ("a T5 tokenizer").
        extra: the pip extra that installs `tokenizers`, named when it is missing.
    """

    def __init__(self, path: str | Path, max_tokens: int, pad_token: str, what: str, extra: str):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise BundleError(f"{path}: tokenizer file is missing ({what} tokenizer.json is needed)")
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise BackendUnavailable(f"these prompts need the tokenizers package: pip install 'v2m-runtime[{extra}]'") from None
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the Rust error types are not importable
            raise BundleError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0] if str(e) else e!r})") from None
        pad_id = tok.token_to_id(pad_token)
        if pad_id is None:
            raise BundleError(f"{path}: the tokenizer has no {pad_token} token; is it {what} tokenizer?")
        tok.enable_truncation(max_length=max_tokens)
        tok.enable_padding(length=max_tokens, pad_id=pad_id, pad_token=pad_token)
        self.tokenizer, self.max_tokens, self.path = tok, int(max_tokens), path

    def __call__(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encs = self.tokenizer.encode_batch(list(prompts))
        for p, e in zip(prompts, encs):
            if e.overflowing:
                log.warning("prompt %r is longer than %d tokens; the rest is cut", p[:40], self.max_tokens)
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)  # (B, S)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)  # (B, S)
        return ids, mask
