"""T5 prompts without torch: a `tokenizers` tokenizer and the exported T5 encoder in ONNX Runtime.

Stable Audio Open bundles (`text.kind == "t5"`) encode prompts with T5. The torch
path is `v2m.models.t5.T5TextEncoder`; this module is the lean runtime's: the
tokenizer is the `tokenizers` library reading the bundle's `tokenizer.json` (never
transformers, never a download), the encoder is `onnx/t5.onnx` (`v2m.families.sao`).

Tokenization is `v2m.runtime.tokenizer.PaddedTokenizer` with T5's `<pad>`: transformers'
T5 tokenizer with `padding="max_length", truncation=True`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from v2m.core.errors import BackendUnavailable, BundleError

from .tokenizer import PaddedTokenizer

__all__ = ["T5Tokenizer", "OnnxT5TextEncoder", "load_t5_text_encoder"]

log = logging.getLogger("v2m.text")


class T5Tokenizer(PaddedTokenizer):
    """prompts -> (input_ids [B, S] int64, attention_mask [B, S] int64), S = max_tokens."""

    def __init__(self, path: str | Path, max_tokens: int):
        super().__init__(path, max_tokens, pad_token="<pad>", what="a T5", extra="sao")


class OnnxT5TextEncoder:
    """prompt -> (embeddings [S, E] float32, mask [S] bool) with `onnx/t5.onnx` in ONNX Runtime."""

    def __init__(self, onnx_path: str | Path, tokenizer: T5Tokenizer, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("the ONNX T5 encoder needs onnxruntime: pip install 'v2m-runtime[ort]'") from None
        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), so, providers=providers or ["CPUExecutionProvider"])
        self.tokenizer = tokenizer
        out = self.session.get_outputs()[0]
        self.dim, self.max_tokens = int(out.shape[-1]), tokenizer.max_tokens

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tokenizer([prompt])
        emb = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return emb[0].astype(np.float32), mask[0].astype(bool)


def load_t5_text_encoder(bundle_dir: str | Path, text_cfg: dict, text_dim: int, device: str = "cpu"):
    """The T5 encoder of a bundle: torch weights (`text.safetensors`) if torch is installed, else
    `onnx/t5.onnx` in ONNX Runtime on the CPU."""
    bundle_dir = Path(bundle_dir)
    from v2m.core.bundle import text_max_tokens

    tok = T5Tokenizer(bundle_dir / text_cfg.get("tokenizer", "tokenizer.json"), text_max_tokens(text_cfg))
    weights = bundle_dir / text_cfg.get("file", "text.safetensors")
    graph = _t5_graph(bundle_dir)
    if weights.is_file() and _torch_available():
        from v2m.models.checkpoint import apply_state_dict, load_safetensors
        from v2m.models.t5 import T5Encoder, T5TextEncoder

        model = T5Encoder.from_config(text_cfg["config"])
        apply_state_dict(model, load_safetensors(weights), where=str(weights))
        enc = T5TextEncoder(model, tok, device)
    elif graph is not None:
        enc = OnnxT5TextEncoder(graph, tok)
    else:
        raise BundleError(f"{bundle_dir}: no T5 weights ({weights.name}, needs torch) and no exported t5 graph; "
                          "export the bundle (`v2m export`) or install torch")
    if enc.dim != text_dim:
        raise BundleError(f"{bundle_dir}: T5 width {enc.dim} != the conditioner's text width {text_dim}")
    return enc


def _t5_graph(bundle_dir: Path) -> Path | None:
    """The exported t5 graph (fp32 in every precision set; the fp32 set's first), checked
    against the manifest; None for a bundle that is not exported."""
    from v2m.core.manifest import MANIFEST_NAME, load_manifest

    if not (bundle_dir / MANIFEST_NAME).is_file():
        return None
    man = load_manifest(bundle_dir)
    for precision in sorted(man.graphs, key=lambda p: p != "fp32"):
        if "t5" in man.graphs[precision]:
            man.verify_graph("t5", precision)
            return man.graph_path("t5", precision)
    return None


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True
