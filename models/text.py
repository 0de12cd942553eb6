"""Text conditioning models: the built-in table's config and init, and a local Hugging Face encoder.

The interface (prompt -> embeddings [S, E], mask [S]) and the numpy encoders
live in `v2m.runtime.text` so the lean runtime can use them without torch. This
file holds what needs torch: initializing the built-in table of a random bundle,
and running a Hugging Face text encoder from a local directory (never a hub
download: `local_files_only=True`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from v2m.core.errors import BundleError

__all__ = ["TextConfig", "PRESETS", "init_builtin_table", "HFTextEncoder"]

log = logging.getLogger("v2m.text")


@dataclass
class TextConfig:
    kind: str = "builtin"  # builtin | precomputed | hf
    vocab_size: int = 4096  # built-in word-hash buckets
    max_tokens: int = 32  # S: fixed, so engine and graph shapes stay static

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, TextConfig] = {
    "tiny": TextConfig(vocab_size=4096, max_tokens=32),
    "small": TextConfig(vocab_size=16384, max_tokens=64),
    "full": TextConfig(vocab_size=32768, max_tokens=128),
}


def init_builtin_table(cfg: TextConfig, dim: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random unit-variance embedding table for the built-in encoder."""
    return {"embedding.weight": torch.randn(cfg.vocab_size, dim, generator=generator)}


class HFTextEncoder:
    """A transformers encoder (T5, CLAP text tower, Qwen, ...) from a local directory.

    Embeddings are the last hidden state, padded or cut to `max_tokens`.
    """

    def __init__(self, path: str | Path, max_tokens: int, dim: int, device: str = "cpu"):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise BundleError(f"{path}: not a Hugging Face model directory (no config.json)")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError:
            raise BundleError("Hugging Face text encoders need transformers: pip install 'v2m-runtime[hf]'") from None
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
        self.model = (getattr(model, "encoder", None) or model).to(device).eval()
        self.device, self.max_tokens, self.dim = device, max_tokens, dim
        hidden = getattr(model.config, "d_model", None) or getattr(model.config, "hidden_size", None)
        if hidden is not None and hidden != dim:
            raise BundleError(f"{path}: text encoder width {hidden} != the DiT's text_dim {dim}")

    @torch.no_grad()
    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        tok = self.tokenizer(
            prompt, max_length=self.max_tokens, padding="max_length", truncation=True, return_tensors="pt"
        ).to(self.device)
        out = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        emb = out.last_hidden_state[0].float().cpu().numpy()  # (S, E)
        mask = tok["attention_mask"][0].bool().cpu().numpy()
        return emb * mask[:, None], mask
