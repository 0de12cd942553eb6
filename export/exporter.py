"""Export a bundle's networks to ONNX, check each against PyTorch, write the manifest.

```python
from v2m.export import export_bundle
result = export_bundle("tiny-bundle", "tiny-onnx")    # onnx/fp32/{encoder,vae,text,schedule,step}.onnx
export_bundle("full-bundle", "full-onnx", precisions=("fp32", "fp16"))   # + onnx/fp16/*.onnx
```

One generic path reads the export contracts (`v2m.core.contracts`): build
the module in the export precision, trace it at the contract's first sample
shape, write `onnx/<precision>/<name>.onnx` (external data in `<name>.onnx.data`
past 2 GB), then run it in ONNX Runtime (CPU) at every sample shape, the export
one and others, and compare with PyTorch. The manifest is written last, so a
failed export never leaves a bundle that looks usable.

The `step` graph is `v2m.runtime.backends.torch_step.guided_stage` over the DiT: the one
definition of the guided solver stage, traced. fp16/bf16 exports are strongly typed
graphs with explicit fp32 islands (`islands.py`), what TensorRT 11 builds from; they
are checked against the same module in fp32 with looser tolerances (ONNX Runtime's
CPU provider runs them, upcasting where it has no half kernel).

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)` with
`dynamic_axes`. In torch 2.13 the dynamo exporter needs `onnxscript` (not a
dependency here) and traces far slower; the TorchScript tracer records every
`x.shape[i]` as a graph op, so RoPE's `arange(L)`, the text mask and the
batch split of the Euler step stay dynamic, which the check at a second
shape proves on every export.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from v2m import families
from v2m.core.bundle import BundleConfig, load_config
from v2m.core.contracts import ExportContract
from v2m.core.errors import BundleError, OutputError, V2MError
from v2m.core.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    ONNX_OPSET,
    config_sections_digest,
    sha256_file,
    write_manifest,
)
from v2m.families import contracts_for
from v2m.runtime import __version__
from v2m.runtime.backends.torch_step import guided_stage, step_model

from .islands import fp32_islands

__all__ = [
    "ONNX_OPSET",
    "ExportError",
    "CheckResult",
    "ExportResult",
    "PRECISIONS",
    "PooledEncoder",
    "TextGraph",
    "ScheduleGraph",
    "StepGraph",
    "build_module",
    "export_graph",
    "check_graph",
    "export_bundle",
]

log = logging.getLogger("v2m.export")

EXPORTER = "torch.onnx.export (TorchScript tracer, dynamo=False)"
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's hard limit is 2 GiB per serialized model


class ExportError(V2MError):
    """An exported graph disagrees with PyTorch beyond its contract's tolerance."""


# --- modules that are exported as they are -------------------------------------------------
class PooledEncoder(nn.Module):
    """DINOv2 at a fixed input size with baked position embeddings: pixels [B,3,H,H] -> [B, D]."""

    def __init__(self, encoder: nn.Module, image_size: int):
        super().__init__()
        self.encoder = encoder.bake_position_embeddings(image_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = next(self.encoder.parameters()).dtype
        return self.encoder.pooled(pixels.to(dtype)).float()


class VaeGraph(nn.Module):
    """latents [B, C, L] fp32 -> audio [B, 2, L * hop] fp32, the decoder in its own precision."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.dtype = next(vae.parameters()).dtype

    def forward(self, latents):
        return self.vae(latents.to(self.dtype)).float()


class TextGraph(nn.Module):
    """The DiT's per-generation work on the branch batch: the model's `TEXT_INPUTS` (v2m: text
    [GB, S, E], text_mask [GB, S]; Stable Audio Open: cross tokens, global_cond) -> its
    `CONTEXT` (v2m: text_kv [depth, 2, GB, H, S, Dh], text_bias [GB, 1, 1, S]; SAO: text_kv,
    g_emb [GB, D])."""

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit
        self.model = step_model(dit)

    def forward(self, *inputs):
        return self.model.text_context(dict(zip(self.model.TEXT_INPUTS, inputs)))


class ScheduleGraph(nn.Module):
    """t_model [K] -> the model's `SCHEDULE` of every stage (v2m: mods [depth, K, 6, D], finals
    [K, 2, D]; SAO: t_emb [K, D]), computed in fp32 (timestep features are an fp32 island)."""

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit
        self.model = step_model(dit)

    def forward(self, t_model):
        return self.model.schedule(t_model)


class StepGraph(nn.Module):
    """One guided solver stage, `guided_stage` over the DiT (see `contracts`): the model at
    stage k on the G*B guidance batch, the combine, the update; and k + 1. Inputs: the state
    (x, x_eval, d_prev, k), the tables (coef, noise, weights), the `SCHEDULE` tensors, the
    curve, the `CONTEXT` tensors."""

    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit
        self.model = step_model(dit)
        self.has_curve = getattr(self.model, "curve", True)  # a Stable Audio Open model may have no curve channel

    def forward(self, x, x_eval, d_prev, k, coef, noise, weights, *rest):
        n = len(self.model.SCHEDULE)
        sched = tuple(rest[:n])
        curve, ctx = (rest[n], tuple(rest[n + 1 :])) if self.has_curve else (None, tuple(rest[n:]))
        x_out, d = guided_stage(self.model, x, x_eval, d_prev, k, coef, noise, weights, curve, sched, ctx)
        return x_out, d, k + 1


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ONNX_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def build_module(bundle_dir: str | Path, name: str, cfg: BundleConfig, precision: str = "fp32") -> nn.Module:
    """The CPU module whose graph is exported as `name`, in `precision` (reduced precisions
    with fp32 islands, see `islands.py`)."""
    from v2m.models.bundle import load_component

    fp32 = name in families.of(cfg).fp32_graphs
    dtype = torch.float32 if fp32 else PRECISIONS[precision]  # t5, cond: fp32 in every set
    component = {"text": "dit", "schedule": "dit", "step": "dit", "t5": "text"}.get(name, name)
    module = load_component(bundle_dir, component, cfg, device="cpu", dtype=dtype)
    if dtype != torch.float32:
        fp32_islands(module)
    if name == "encoder":
        return PooledEncoder(module, cfg.image_size).eval()
    wrap = {"text": TextGraph, "schedule": ScheduleGraph, "step": StepGraph, "vae": VaeGraph}.get(name)
    return (wrap(module) if wrap else module).eval()


# --- export and check ------------------------------------------------------------------------
@contextmanager
def _quiet_tracer():
    """The TorchScript exporter's deprecation notice and tracer warnings say nothing we do not
    check: every graph is run at a second shape right after."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1")  # a strided slice left unfolded: harmless
        yield


def _torch_inputs(contract: ExportContract, arrays: dict[str, np.ndarray], precision: str = "fp32") -> tuple[torch.Tensor, ...]:
    """Sample arrays as torch inputs; "model"-dtype inputs in the export precision."""
    out = []
    for spec in contract.inputs:
        t = torch.from_numpy(arrays[spec.name])
        if spec.dtype == "model":
            t = t.to(PRECISIONS[precision])
        out.append(t)
    return tuple(out)


def export_graph(
    module: nn.Module,
    contract: ExportContract,
    cfg: BundleConfig,
    onnx_dir: str | Path,
    opset: int = ONNX_OPSET,
    external_data: bool | None = None,
    precision: str = "fp32",
) -> tuple[Path, Path | None]:
    """Trace `module` (in `precision`) at the contract's export sample and write `<onnx_dir>/<name>.onnx`.

    Args:
        external_data: weights in `<name>.onnx.data`; None: only when the graph passes 1.8 GB.

    Returns:
        (graph path, external data path or None).
    """
    import onnx

    onnx_dir = Path(onnx_dir)
    onnx_dir.mkdir(parents=True, exist_ok=True)
    name = contract.name
    args = _torch_inputs(contract, contract.sample_inputs(cfg, contract.samples(cfg)[0]), precision)
    final, final_data = onnx_dir / f"{name}.onnx", onnx_dir / f"{name}.onnx.data"
    with tempfile.TemporaryDirectory(dir=onnx_dir, prefix=f".{name}-") as td:
        raw_dir, out_dir = Path(td) / "raw", Path(td) / "out"
        raw_dir.mkdir()
        out_dir.mkdir()
        raw = raw_dir / f"{name}.onnx"
        with torch.no_grad(), _quiet_tracer():
            torch.onnx.export(
                module,
                args,
                str(raw),
                dynamo=False,
                opset_version=opset,
                input_names=contract.input_names,
                output_names=contract.output_names,
                dynamic_axes=contract.dynamic_axes(cfg),
                do_constant_folding=True,
            )
        files = list(raw_dir.iterdir())
        size = sum(p.stat().st_size for p in files)
        if external_data is None:
            external_data = len(files) > 1 or size > _EXTERNAL_DATA_BYTES
        out = out_dir / final.name
        if external_data:  # one data file beside the graph (torch writes one file per tensor)
            model = onnx.load(str(raw))
            onnx.save_model(
                model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                location=final_data.name, size_threshold=1024,
            )
        else:
            shutil.move(str(raw), out)
        onnx.checker.check_model(str(out))
        final.unlink(missing_ok=True)
        final_data.unlink(missing_ok=True)
        if external_data:
            os.replace(out_dir / final_data.name, final_data)
        os.replace(out, final)
    log.info("exported %s (%.1f MB%s)", final, size / 1e6, ", external data" if external_data else "")
    return final, (final_data if external_data else None)


@dataclass
class CheckResult:
    """ONNX Runtime vs PyTorch on one output at one shape."""

    graph: str
    output: str
    shape: list[int]
    max_abs: float
    max_rel: float  # max_abs / max |torch|
    atol: float
    rtol: float
    ref_max: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs)) and self.max_abs <= self.atol + self.rtol * self.ref_max

    precision: str = "fp32"

    def line(self) -> str:
        return (f"{self.graph:<8} {self.precision:<4} {self.output:<9} {str(self.shape):<22} max abs {self.max_abs:.3e}  "
                f"rel {self.max_rel:.3e}  (tol {self.atol:g} + {self.rtol:g} x {self.ref_max:.3g})  "
                f"{'ok' if self.ok else 'FAIL'}")


def ort_cpu_session(path: str | Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def check_graph(
    module: nn.Module,
    contract: ExportContract,
    cfg: BundleConfig,
    path: str | Path,
    shapes: list[dict[str, int]] | None = None,
    session=None,
    precision: str = "fp32",
) -> list[CheckResult]:
    """Run the graph in ONNX Runtime (CPU) and `module` in PyTorch at each of `shapes`
    (default: the contract's samples) and compare every output.

    For a reduced-precision graph `module` is the fp32 reference: the graph gets the same
    inputs ("model"-dtype ones rounded to its precision) and must agree within
    the contract's `reduced_rtol` relative to the reference's largest magnitude.
    """
    sess = session or ort_cpu_session(path)
    atol, rtol = contract.tolerance if precision == "fp32" else (0.0, dict(contract.reduced_rtol)[precision])
    model_dtype = ONNX_DTYPE[precision]
    results = []
    for i, values in enumerate(shapes or contract.samples(cfg)):
        feeds = contract.sample_inputs(cfg, values, seed=100 + i, model_dtype=model_dtype)
        with torch.no_grad():
            # the reference sees exactly the (rounded) values the graph sees, in fp32
            ref = module(*(t.float() if t.is_floating_point() else t for t in _torch_inputs(contract, feeds)))
        ref = [ref] if isinstance(ref, torch.Tensor) else list(ref)
        got = sess.run(contract.output_names, feeds)
        for name, r, g in zip(contract.output_names, ref, got):
            r = r.float().numpy() if r.is_floating_point() else r.numpy()
            if r.shape != g.shape:
                raise ExportError(
                    f"{contract.name}.{name}: ONNX Runtime gives shape {list(g.shape)}, PyTorch {list(r.shape)} "
                    f"at {values}; the graph lost a dynamic axis"
                )
            err = float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0
            ref_max = float(np.max(np.abs(r))) if r.size else 0.0
            results.append(CheckResult(contract.name, name, list(r.shape), err, err / max(ref_max, 1e-30), atol, rtol,
                                       ref_max, precision))
    return results


def _add_int8(out: Path, cfg: BundleConfig, data: dict[str, Any], seconds: dict[str, float]) -> None:
    """Quantize the fp32 set into the int8 set, measure it against fp32 (`quantize.measure`) and
    record the figures in the manifest; below the gate, refuse with them and leave no manifest."""
    from .quantize import gate_failure, measure, quantize_graphs

    t0 = time.perf_counter()
    data["graphs"]["int8"] = quantize_graphs(out, data["graphs"]["fp32"])
    write_manifest(out, data)
    figures = measure(out, cfg)
    seconds["int8_quantize_and_gate"] = time.perf_counter() - t0
    failure = gate_failure(figures)
    log.info("int8 gate: min step cosine %.4f, audio SNR %.1f dB%s", figures["min_step_cosine"],
             figures["audio_snr_db"], f", encoder cosine {figures['min_encoder_cosine']:.4f}"
             if "min_encoder_cosine" in figures else "")
    if failure:
        (out / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(out / "onnx" / "int8", ignore_errors=True)
        raise ExportError(f"int8 graphs refused by the accuracy gate ({failure}, against fp32 from the same seed); "
                          "no manifest was written; use fp32")
    data["quantization"] = {"int8": figures}
    write_manifest(out, data)


@dataclass
class ExportResult:
    out_dir: Path
    manifest: Path
    graphs: dict[str, Path]
    checks: list[CheckResult] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _versions() -> dict[str, Any]:
    import platform

    import onnx

    v: dict[str, Any] = {"v2m": __version__, "python": platform.python_version(), "torch": torch.__version__,
                         "onnx": onnx.__version__, "exporter": EXPORTER}
    try:
        import onnxruntime

        v["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        v["onnxruntime"] = None
    return v


def _prepare_out(src: Path, out: Path, cfg: BundleConfig, with_weights: bool) -> None:
    """Copy what the runtime needs besides the graphs: config.json, the text table, maybe weights."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file() and not (out / "config.json").is_file():
        raise OutputError(f"{out} exists, is not empty and is not a v2m bundle; choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "config.json", out / "config.json")
    text_file = cfg.text.get("file", "text.safetensors")
    kind = cfg.text.get("kind", "builtin")
    if kind == "t5":  # the t5 graph encodes prompts; the lean runtime needs only its tokenizer
        tok = cfg.text.get("tokenizer", "tokenizer.json")
        shutil.copy2(src / tok, out / tok)
    elif kind == "sentence":  # already an ONNX graph with its tokenizer (`v2m.export.sentence`)
        text_dir = cfg.text.get("dir", "text")
        if not (src / text_dir).is_dir():
            raise BundleError(f"{src / text_dir}: missing; the bundle is incomplete")
        if (src / text_dir).resolve() != (out / text_dir).resolve():
            shutil.rmtree(out / text_dir, ignore_errors=True)
            shutil.copytree(src / text_dir, out / text_dir)
    elif (src / text_file).is_file():
        shutil.copy2(src / text_file, out / text_file)
    elif kind != "hf":
        raise BundleError(f"{src / text_file}: missing; the bundle is incomplete")
    else:
        log.warning("text encoder is a Hugging Face directory (%s); it is not copied", cfg.text.get("path"))
    weights = [c for c in families.of(cfg).components(cfg) if c != "text"]
    weights += ["text"] if kind == "t5" else []
    for name in weights:
        f = out / (text_file if name == "text" else f"{name}.safetensors")
        if with_weights:
            if (src / f.name).is_file():
                shutil.copy2(src / f.name, f)
        elif f.is_file():  # a lean bundle: a stale copy would not match the new config
            log.info("removing %s (export without --with-weights)", f)
            f.unlink()


def export_bundle(
    bundle_dir: str | Path,
    out_dir: str | Path | None = None,
    opset: int = ONNX_OPSET,
    check: bool = True,
    with_weights: bool = False,
    names: tuple[str, ...] | None = None,
    on_check: Callable[[CheckResult], None] | None = None,
    external_data: bool | None = None,
    precisions: tuple[str, ...] = ("fp32",),
) -> ExportResult:
    """Export every graph of a bundle to ONNX and write `manifest.json`.

    Args:
        bundle_dir: a PyTorch bundle (`v2m init-model`).
        out_dir: the exported bundle; None exports in place. A new directory gets config.json
            and the text table (and the .safetensors weights with `with_weights`).
        opset: ONNX opset (>= 17).
        check: compare each graph with PyTorch in ONNX Runtime at two or more shapes; raise
            ExportError past the contract's tolerance (the manifest is then not written).
        names: graphs to export (default: all the bundle's family has, `contracts.contracts_for`).
        precisions: graph sets to write, each under `onnx/<precision>/`: fp32 (ONNX Runtime on
            CPU, TensorRT fp32), fp16 and bf16 (strongly typed graphs with fp32 islands, for
            TensorRT and ONNX Runtime's CUDA provider).
        on_check: called with each CheckResult as it is computed (the CLI prints them).
        external_data: force (True) or forbid (False) external weight files; None: past 1.8 GB.
    """
    t_start = time.perf_counter()
    src = Path(bundle_dir)
    cfg = load_config(src)
    int8, precisions = _check_precisions(opset, precisions)
    contracts = contracts_for(cfg)
    names = tuple(contracts) if names is None else names
    unknown = [n for n in names if n not in contracts]
    if unknown:
        raise V2MError(f"this bundle has no {', '.join(unknown)} graph (it has {', '.join(contracts)})")
    out = Path(out_dir) if out_dir is not None else src
    if out.resolve() != src.resolve():
        _prepare_out(src, out, cfg, with_weights)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # until every graph is written and checked
    graphs: dict[str, dict[str, Any]] = {}
    paths: dict[str, Path] = {}
    checks: list[CheckResult] = []
    seconds: dict[str, float] = {}
    for precision in dict.fromkeys(precisions):
        graphs[precision] = {}
        for name in names:
            contract = contracts[name]
            t0 = time.perf_counter()
            module = build_module(src, name, cfg, precision)
            path, data = export_graph(module, contract, cfg, out / "onnx" / precision, opset, external_data, precision)
            seconds[f"{precision}/{name}_export"] = time.perf_counter() - t0
            del module
            results = _checked(src, name, cfg, contract, path, precision, on_check, seconds) if check else []
            checks += results
            graphs[precision][name] = _graph_entry(out, path, data, precision, contract, cfg, results)
            paths[f"{precision}/{name}"] = path
    data = {
        "format": MANIFEST_FORMAT,
        "opset": opset,
        "config_sections": config_sections_digest(cfg),
        "config_sha256": sha256_file(src / "config.json"),
        "config": cfg.to_dict(),
        "source": "." if out.resolve() == src.resolve() else str(src.resolve()),
        # the weights the graphs were made from: a bundle that carries both (--with-weights, or an
        # in-place export) refuses its graphs once these files change (`Manifest.verify_weights`)
        "weights": {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
                    for f in sorted(src.glob("*.safetensors"))},
        "graphs": graphs,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest = write_manifest(out, data)
    if int8:
        _add_int8(out, cfg, data, seconds)
    seconds["total"] = time.perf_counter() - t_start
    log.info("exported %s to %s in %.1f s", src, out, seconds["total"])
    return ExportResult(out, manifest, paths, checks, seconds)


def _check_precisions(opset: int, precisions: tuple[str, ...]) -> tuple[bool, tuple[str, ...]]:
    """(int8 asked for, the float graph sets to export: int8 is quantized from fp32, made beside it)."""
    if opset < 17:
        raise V2MError(f"opset {opset} is too old: LayerNormalization needs opset 17 or newer")
    bad = [p for p in precisions if p not in (*PRECISIONS, "int8")]
    if bad or not precisions:
        raise V2MError(f"--precision {','.join(bad) or '(none)'}: choose from {', '.join(PRECISIONS)}, int8 "
                       "(comma-separated)")
    int8 = "int8" in precisions
    return int8, tuple(p for p in dict.fromkeys(("fp32", *precisions) if int8 else precisions) if p != "int8")


def _checked(src: Path, name: str, cfg: BundleConfig, contract: ExportContract, path: Path, precision: str,
             on_check: Callable[[CheckResult], None] | None, seconds: dict[str, float]) -> list[CheckResult]:
    """The graph against PyTorch in ONNX Runtime (`check_graph`); ExportError past the tolerance."""
    if precision == "bf16":
        log.info("check %s bf16: skipped (numpy and ONNX Runtime's CPU provider have no bfloat16 inputs); "
                 "the graph passed onnx.checker", name)
        return []
    t0 = time.perf_counter()
    ref = build_module(src, name, cfg, "fp32")
    results = check_graph(ref, contract, cfg, path, precision=precision)
    del ref
    seconds[f"{precision}/{name}_check"] = time.perf_counter() - t0
    for r in results:
        if on_check is not None:
            on_check(r)
        log.info("check %s", r.line())
    bad_checks = [r for r in results if not r.ok]
    if bad_checks:
        r = max(bad_checks, key=lambda r: r.max_abs / max(r.atol + r.rtol * r.ref_max, 1e-30))
        raise ExportError(
            f"exported {precision} {name} graph differs from PyTorch: {r.output} at shape {r.shape} has "
            f"max abs error {r.max_abs:.3e} > {r.atol:g} + {r.rtol:g} x {r.ref_max:.3g}; no manifest was written"
        )
    return results


def _graph_entry(out: Path, path: Path, data: Path | None, precision: str, contract: ExportContract,
                 cfg: BundleConfig, results: list[CheckResult]) -> dict[str, Any]:
    """One graph's manifest entry: files and hashes, I/O, dynamic axes, profile, tolerance, checks."""
    profile = contract.profile(cfg)
    dt = ONNX_DTYPE[precision]
    return {
        "file": path.relative_to(out).as_posix(),
        "sha256": sha256_file(path),
        "data_file": data.relative_to(out).as_posix() if data else None,
        "data_sha256": sha256_file(data) if data else None,
        "precision": precision,
        "inputs": [{"name": s.name, "dtype": s.resolve_dtype(dt), "dims": list(s.dims)} for s in contract.inputs],
        "outputs": [{"name": s.name, "dtype": s.resolve_dtype(dt), "dims": list(s.dims)} for s in contract.outputs],
        "dynamic_axes": {k: {str(i): d for i, d in v.items()} for k, v in contract.dynamic_axes(cfg).items()},
        "profile": {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in profile.items()},
        "tolerance": {"atol": contract.tolerance[0], "rtol": contract.tolerance[1]},
        "check": [asdict(r) | {"ok": r.ok} for r in results],
    }
