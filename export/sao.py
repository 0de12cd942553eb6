"""Export contracts of Stable Audio Open bundles, as data, and their export through the generic exporter.

Kept apart from `v2m.export.contracts` (V2M-Zero's graphs). Three graphs, each one module's
`forward` with its tensors in order:

    t5        input_ids [B, S] int64, attention_mask [B, S] int64          -> hidden [B, S, E]   (S fixed: max_tokens)
    sao_cond  text [B, S, E], text_mask [B, S], seconds [B, K]           -> cross_cond [B, S + Kx, Dc],
                                                                            global_cond [B, Dg]
    sao_dit   x [B, C, L], t [B], cross_cond [B, Sx, Dc], global_cond [B, Dg] (, curve [B, Ci, L])
                                                                          -> out [B, C, L]

`t` is the model's time (`v2m.runtime.sao.model_time`) and `x` is already scaled by c_in
for the "v" objective. `curve` exists when the DiT has input-concat channels. The lean
runtime encodes prompts with `onnx/t5.onnx` and the bundle's `tokenizer.json`
(`v2m.runtime.t5_text`). Torch-free at import, like `contracts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from v2m.runtime.bundle import BundleConfig

from .contracts import DimRange, ExportContract, TensorSpec, _fill

__all__ = ["SAO_GRAPHS", "sao_contracts", "export_sao_graphs"]

SAO_GRAPHS = ("t5", "sao_cond", "sao_dit")


@dataclass(frozen=True)
class TokenContract(ExportContract):
    """An ExportContract whose `ids` inputs are token ids below `vocab` (the T5 embedding's rows)."""

    vocab: int = 2

    def sample_inputs(
        self, cfg: BundleConfig, values: dict[str, int], seed: int = 0, model_dtype: str = "float32"
    ) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.inputs:
            shape = self.shape(spec, values, cfg)
            if spec.fill == "ids":
                out[spec.name] = rng.integers(0, self.vocab, shape).astype(spec.dtype)
            else:
                out[spec.name] = _fill(spec.fill, shape, rng, values).astype(spec.resolve_dtype(model_dtype))
        return out


def _sizes(cfg: BundleConfig) -> dict[str, int]:
    sao = cfg.sao_config
    tokens = int(cfg.text["max_tokens"])
    return {"S": tokens, "E": cfg.text_dim, "K": len(sao.seconds_names), "Sx": tokens + len(sao.cond["cross_numbers"]),
            "Dc": int(sao.cond["cond_dim"]), "Dg": int(sao.cond["cond_dim"]) * len(sao.cond["global_numbers"]),
            "C": cfg.latent_channels, "Ci": int(cfg.dit.get("input_concat_dim", 0)), "F": sao.latent_frames}


def sao_contracts(cfg: BundleConfig) -> dict[str, ExportContract]:
    """The contracts of an SAO bundle's graphs (they depend on its config: the curve input, S, K)."""
    n = _sizes(cfg)

    def fixed(**dyn: DimRange):
        return lambda c: {**{k: v for k, v in n.items() if k != "F"}, **dyn}

    f = n["F"]
    dit_inputs = [TensorSpec("x", ("B", "C", "L")), TensorSpec("t", ("B",), fill="unit"),
                  TensorSpec("cross_cond", ("B", "Sx", "Dc")), TensorSpec("global_cond", ("B", "Dg"))]
    if n["Ci"]:
        dit_inputs.append(TensorSpec("curve", ("B", "Ci", "L"), fill="unit"))
    return {
        "t5": TokenContract(
            name="t5",
            inputs=(TensorSpec("input_ids", ("B", "S"), dtype="int64", fill="ids"),
                    TensorSpec("attention_mask", ("B", "S"), dtype="int64", fill="mask")),
            outputs=(TensorSpec("hidden", ("B", "S", "E")),),
            dims=fixed(B=(1, 2, 4)),
            samples=lambda c: [{"B": 2}, {"B": 3}],
            tolerance=(1e-4, 1e-4),  # fp32 reorderings over the layers; relative bias baked for the fixed S
            vocab=int(cfg.text["config"]["vocab_size"]),
        ),
        "sao_cond": ExportContract(
            name="sao_cond",
            inputs=(TensorSpec("text", ("B", "S", "E")), TensorSpec("text_mask", ("B", "S"), fill="mask"),
                    TensorSpec("seconds", ("B", "K"), fill="const:12.5")),
            outputs=(TensorSpec("cross_cond", ("B", "Sx", "Dc")), TensorSpec("global_cond", ("B", "Dg"))),
            dims=fixed(B=(1, 2, 8)),
            samples=lambda c: [{"B": 2}, {"B": 5}],
            tolerance=(1e-5, 1e-5),
        ),
        "sao_dit": ExportContract(
            name="sao_dit",
            inputs=tuple(dit_inputs),
            outputs=(TensorSpec("out", ("B", "C", "L")),),
            dims=fixed(B=(1, 2, 8), L=(1, f, f)),
            # An odd L at export, another B and L after: RoPE's arange(L + 1) stays dynamic.
            samples=lambda c: [{"B": 2, "L": min(f, 31)}, {"B": 3, "L": min(f, 17)}],
            tolerance=(1e-4, 1e-4),
        ),
    }


def export_sao_graphs(
    bundle_dir: str | Path,
    out_dir: str | Path | None = None,
    names: tuple[str, ...] = SAO_GRAPHS,
    check: bool = True,
) -> dict[str, dict]:
    """Export an SAO bundle's graphs to `<out_dir>/onnx/` through the generic exporter and check each
    against PyTorch in ONNX Runtime; a new `out_dir` also gets config.json and the tokenizer.

    Returns:
        {graph: {"path", "data", "checks"}} for the manifest (written by the bundle exporter).
    """
    import shutil

    from v2m.models.bundle import load_component
    from v2m.runtime.bundle import load_config

    from .exporter import ExportError, check_graph, export_graph

    src = Path(bundle_dir)
    out = Path(out_dir) if out_dir is not None else src
    cfg = load_config(src)
    contracts = sao_contracts(cfg)
    out.mkdir(parents=True, exist_ok=True)
    tok = cfg.text.get("tokenizer", "tokenizer.json")
    if out.resolve() != src.resolve():  # what the runtime needs besides the graphs
        for f in ("config.json", tok):
            shutil.copy2(src / f, out / f)
    result = {}
    for name in names:
        module = load_component(src, {"t5": "text", "sao_cond": "cond", "sao_dit": "dit"}[name], cfg)
        path, data = export_graph(module, contracts[name], cfg, out / "onnx")
        checks = check_graph(module, contracts[name], cfg, path) if check else []
        bad = [r for r in checks if not r.ok]
        if bad:
            raise ExportError(f"exported {name} graph differs from PyTorch: {bad[0].line()}")
        result[name] = {"path": path, "data": data, "checks": checks}
    return result
