"""Export contracts: what each exported graph takes and returns, as data.

One `ExportContract` per graph names its inputs and outputs in a fixed order with
symbolic dimensions, says which dimensions are dynamic and their min/opt/max for
TensorRT optimization profiles, and builds sample inputs from a bundle config. The
exporter (`v2m.export.exporter`) and the engine builder (`v2m.runtime.backends.trt_build`)
read only this; neither knows a model by name.

Torch-free on purpose: the TensorRT engine builder runs in the lean runtime.

    encoder   pixels [B, 3, H, H]                       -> features [B, D]   (position embeddings baked)
    vae       latents [B, C, L]                          -> audio [B, 2, L * hop]
    text      text [GB, S, E], text_mask [GB, S]         -> text_kv [depth, 2, GB, H, S, Dh],
                                                            text_bias [GB, 1, 1, S]          (once a generation)
    schedule  t_model [K]                                -> mods [depth, K, 6, D], finals [K, 2, D]
                                                                                             (once a solver table)
    step      x, x_eval, d_prev [B, C, L], k [1] int64,
              coef [K, 7], noise [N, B, C, L], weights [G],
              mods, finals, curve [GB, 1, L],
              text_kv, text_bias                         -> x_out, d [B, C, L], k_next [1]   (every stage)

`step` is `v2m.runtime.backends.torch_step.guided_stage` on the exported DiT: the model on
the G*B guidance batch at stage k, the guidance combine, the solver update. The text
keys/values and the adaLN modulations are inputs computed by `text` and `schedule`,
so the per-stage graph re-reads neither the text projection nor the modulation
weights. Dtype "model" means the graph's precision (fp32, fp16 or bf16): a reduced-
precision export keeps the solver state, coefficients, guidance weights and noise in
fp32 and computes norms and timestep features in fp32 islands (explicit casts), which
is what TensorRT's strongly typed networks build from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .bundle import BundleConfig, text_max_tokens
from .sampler_limits import MAX_STEPS

__all__ = [
    "TensorSpec",
    "ExportContract",
    "CONTRACTS",
    "GRAPH_NAMES",
    "SAMPLER_GRAPHS",
    "MAX_VIDEOS",
    "MAX_BRANCHES",
    "MAX_STAGES",
    "get_contract",
    "max_tokens",
    "Shape",
    "Profile",
]

Dim = str | int
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]  # input -> (min, opt, max)
DimRange = int | tuple[int, int, int]  # a fixed size, or (min, opt, max) of a dynamic one


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output.

    `dims` are ints or symbolic names resolved by the contract's `dims(cfg)`.
    `fill` says how sample inputs are drawn: normal, unit (uniform [0, 1)), mask
    (ones, then zeros for the last third of the row), bias (the additive key bias of
    such a mask), stage (a stage index in [0, K)), or a constant ("const:4.0").
    """

    name: str
    dims: tuple[Dim, ...]
    dtype: str = "float32"  # or "int64", or "model": the graph's precision
    fill: str = "normal"

    def resolve_dtype(self, model_dtype: str) -> str:
        return model_dtype if self.dtype == "model" else self.dtype


@dataclass(frozen=True)
class ExportContract:
    """Everything the exporter and the engine builder need to know about one graph.

    Attributes:
        name: graph name; the file is `onnx/<name>.onnx`.
        inputs, outputs: in the module's `forward` order.
        dims: bundle config -> size of every symbolic dim, fixed or (min, opt, max).
        samples: bundle config -> dim values of the export sample (first) and of the
            extra check shapes; every dynamic dim of the first differs from the others'.
        tolerance: (atol, rtol) of the ONNX Runtime vs PyTorch check in fp32: an output
            fails when max |ort - torch| > atol + rtol * max |torch|.
        reduced_rtol: per reduced precision, the rtol of a fp16/bf16 graph against the fp32
            module (a wrong graph is off by O(1); rounding stays well under these).
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Callable[[BundleConfig], dict[str, DimRange]]
    samples: Callable[[BundleConfig], list[dict[str, int]]]
    tolerance: tuple[float, float]
    reduced_rtol: tuple[tuple[str, float], ...] = (("fp16", 3e-2), ("bf16", 1e-1))

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self, cfg: BundleConfig) -> dict[str, dict[int, str]]:
        """torch.onnx.export's `dynamic_axes`: every axis whose dim is dynamic (or unresolved)."""
        sizes = self.dims(cfg)
        out: dict[str, dict[int, str]] = {}
        for spec in (*self.inputs, *self.outputs):
            axes = {
                i: d for i, d in enumerate(spec.dims)
                if isinstance(d, str) and not isinstance(sizes.get(d), int)
            }
            if axes:
                out[spec.name] = axes
        return out

    def shape(self, spec: TensorSpec, values: dict[str, int], cfg: BundleConfig) -> Shape:
        """Concrete shape of `spec` with dynamic dims taken from `values`, fixed ones from the config."""
        sizes = self.dims(cfg)
        shape = []
        for d in spec.dims:
            if isinstance(d, int):
                shape.append(d)
            elif isinstance(sizes.get(d), int):
                shape.append(int(sizes[d]))
            elif d in values:
                shape.append(int(values[d]))
            else:
                raise KeyError(f"{self.name}.{spec.name}: no value for dim {d!r}")
        return tuple(shape)

    def profile(self, cfg: BundleConfig) -> Profile:
        """min/opt/max shape of every input (a TensorRT optimization profile)."""
        sizes = self.dims(cfg)
        picks = []
        for k in range(3):
            picks.append({d: (r[k] if isinstance(r, tuple) else r) for d, r in sizes.items()})
        return {
            spec.name: tuple(self.shape(spec, p, cfg) for p in picks)  # type: ignore[misc]
            for spec in self.inputs
        }

    def sample_inputs(
        self, cfg: BundleConfig, values: dict[str, int], seed: int = 0, model_dtype: str = "float32"
    ) -> dict[str, np.ndarray]:
        """Deterministic sample inputs (numpy, in input order) for dim `values`; inputs of
        dtype "model" come in `model_dtype` (bfloat16 is drawn as float32: numpy has none)."""
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.inputs:
            shape = self.shape(spec, values, cfg)
            dtype = spec.resolve_dtype(model_dtype)
            out[spec.name] = _fill(spec.fill, shape, rng, values).astype("float32" if dtype == "bfloat16" else dtype)
        return out


def _fill(kind: str, shape: Shape, rng: np.random.Generator, values: dict[str, int] | None = None) -> np.ndarray:
    if kind == "stage":
        return rng.integers(0, max(1, (values or {}).get("K", 1)), size=shape)
    if kind == "bias":
        return (1.0 - _fill("mask", shape, rng)) * -30000.0  # v2m.models.dit.MASK_BIAS
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "unit":
        return rng.random(shape)
    if kind == "mask":  # keys kept from the start of each row; at least one kept
        keep = max(1, shape[-1] - shape[-1] // 3)
        m = np.zeros(shape)
        m[..., :keep] = 1.0
        return m
    if kind.startswith("const:"):
        return np.full(shape, float(kind[6:]))
    raise ValueError(f"unknown sample fill {kind!r}")


# --- the graphs ----------------------------------------------------------------------------
MAX_STAGES = 2 * MAX_STEPS  # Heun evaluates twice a step
MAX_VIDEOS = 4  # videos per sampler call an engine is built for
MAX_BRANCHES = 3  # cond, uncond, nocurve (curve guidance)


def max_tokens(cfg: BundleConfig) -> int:

    return text_max_tokens(cfg.text)


def _max_latent(cfg: BundleConfig) -> int:
    # Twice the training length: the pipeline warns past max_frames but still runs
    # one window, and a TensorRT profile must cover it.
    return 2 * cfg.sampler.max_frames


def _dit(cfg: BundleConfig) -> dict[str, int]:
    d = cfg.dit
    return {"depth": int(d["depth"]), "Hd": int(d["heads"]), "Dh": int(d["width"]) // int(d["heads"]),
            "D": int(d["width"]), "C": cfg.latent_channels, "E": cfg.text_dim}


def _encoder_dims(cfg: BundleConfig) -> dict[str, DimRange]:
    # The pipeline encodes frames in batches of 32 (the last one shorter).
    return {"B": (1, 32, 32), "H": cfg.image_size, "D": cfg.feature_dim}


def _vae_dims(cfg: BundleConfig) -> dict[str, DimRange]:
    return {"B": (1, 1, MAX_VIDEOS), "C": cfg.latent_channels, "L": (1, cfg.sampler.max_frames, _max_latent(cfg))}


def _text_dims(cfg: BundleConfig) -> dict[str, DimRange]:
    s = max_tokens(cfg)
    return {**_dit(cfg), "GB": (1, 2, MAX_BRANCHES * MAX_VIDEOS), "S": (1, s, s)}


def _schedule_dims(cfg: BundleConfig) -> dict[str, DimRange]:
    return {**_dit(cfg), "K": (1, cfg.sampler.steps, MAX_STAGES)}


def _step_dims(cfg: BundleConfig) -> dict[str, DimRange]:
    f, s, k = cfg.sampler.max_frames, max_tokens(cfg), cfg.sampler.steps
    return {
        **_dit(cfg),
        "B": (1, 1, MAX_VIDEOS),
        "G": (1, 2, MAX_BRANCHES),
        "GB": (1, 2, MAX_BRANCHES * MAX_VIDEOS),
        "K": (1, k, MAX_STAGES),
        "N": (1, 1, MAX_STAGES),
        "L": (1, f, _max_latent(cfg)),
        "S": (1, s, s),
    }


_KV = ("depth", 2, "GB", "Hd", "S", "Dh")
# Every family's step graph: the solver state and tables first, its hoisted tensors after.
STEP_STATE = (
    TensorSpec("x", ("B", "C", "L")),
    TensorSpec("x_eval", ("B", "C", "L")),
    TensorSpec("d_prev", ("B", "C", "L")),
    TensorSpec("k", (1,), dtype="int64", fill="stage"),
    TensorSpec("coef", ("K", 7)),
    TensorSpec("noise", ("N", "B", "C", "L")),
    TensorSpec("weights", ("G",)),
)
STEP_OUTPUTS = (
    TensorSpec("x_out", ("B", "C", "L")),
    TensorSpec("d", ("B", "C", "L")),
    TensorSpec("k_next", (1,), dtype="int64"),
)

CONTRACTS: dict[str, ExportContract] = {
    "encoder": ExportContract(
        name="encoder",
        inputs=(TensorSpec("pixels", ("B", 3, "H", "H")),),
        outputs=(TensorSpec("features", ("B", "D")),),
        dims=_encoder_dims,
        samples=lambda cfg: [{"B": 2}, {"B": 5}],
        # fp32 reorderings only; pooled features are O(1) after the final LayerNorm.
        tolerance=(1e-4, 1e-4),
    ),
    "vae": ExportContract(
        name="vae",
        inputs=(TensorSpec("latents", ("B", "C", "L")),),
        outputs=(TensorSpec("audio", ("B", 2, "N")),),
        dims=_vae_dims,
        samples=lambda cfg: [{"B": 1, "L": 9}, {"B": 2, "L": 14}],
        # Snake's sin(alpha x)^2 over ~20 conv layers amplifies fp32 reordering: ~7e-5
        # observed on audio of amplitude ~0.5.
        tolerance=(1e-3, 1e-3),
        # A random decoder amplifies the rounding of its input and activations ~35 dB (docs/backends.md):
        # fp16 ~5e-2 observed on the tiny preset.
        reduced_rtol=(("fp16", 1.5e-1), ("bf16", 4e-1)),
    ),
    "text": ExportContract(
        name="text",
        inputs=(TensorSpec("text", ("GB", "S", "E")), TensorSpec("text_mask", ("GB", "S"), fill="mask")),
        outputs=(TensorSpec("text_kv", _KV, dtype="model"), TensorSpec("text_bias", ("GB", 1, 1, "S"), dtype="model")),
        dims=_text_dims,
        samples=lambda cfg: [{"GB": 2, "S": max_tokens(cfg)}, {"GB": 3, "S": max(2, max_tokens(cfg) // 2)}],
        tolerance=(1e-4, 1e-4),
    ),
    "schedule": ExportContract(
        name="schedule",
        inputs=(TensorSpec("t_model", ("K",), fill="unit"),),
        outputs=(TensorSpec("mods", ("depth", "K", 6, "D"), dtype="model"), TensorSpec("finals", ("K", 2, "D"), dtype="model")),
        dims=_schedule_dims,
        samples=lambda cfg: [{"K": 7}, {"K": 12}],
        tolerance=(1e-5, 1e-5),
    ),
    "step": ExportContract(
        name="step",
        inputs=(
            *STEP_STATE,
            TensorSpec("mods", ("depth", "K", 6, "D"), dtype="model"),
            TensorSpec("finals", ("K", 2, "D"), dtype="model"),
            TensorSpec("curve", ("GB", 1, "L"), fill="unit"),
            TensorSpec("text_kv", _KV, dtype="model"),
            TensorSpec("text_bias", ("GB", 1, 1, "S"), dtype="model", fill="bias"),
        ),
        outputs=STEP_OUTPUTS,
        dims=_step_dims,
        # Export at an odd L, two branches, one noise row; check again with three branches,
        # two videos, noise per stage, another K and a shorter S: proves RoPE (arange(L)),
        # the branch reshape, the noise gather and the additive text mask stayed dynamic.
        samples=lambda cfg: [
            {"B": 1, "G": 2, "GB": 2, "K": 5, "N": 1, "L": 31, "S": max_tokens(cfg)},
            {"B": 2, "G": 3, "GB": 6, "K": 8, "N": 8, "L": 57, "S": max(2, max_tokens(cfg) // 2)},
        ],
        # fp32 reorderings through depth x (attention + MLP): ~1e-6 observed on O(1) outputs.
        tolerance=(1e-4, 1e-4),
    ),
}

GRAPH_NAMES = tuple(CONTRACTS)
SAMPLER_GRAPHS = ("text", "schedule", "step")


def get_contract(name: str) -> ExportContract:
    try:
        return CONTRACTS[name]
    except KeyError:
        raise KeyError(f"no export contract {name!r}; known: {', '.join(GRAPH_NAMES)}") from None
