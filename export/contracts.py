"""Export contracts: what each exported graph takes and returns, as data.

One `ExportContract` per graph (encoder, dit, vae, step) names its inputs and
outputs in a fixed order with symbolic dimensions, says which dimensions are
dynamic and their min/opt/max for TensorRT optimization profiles, and builds
sample inputs from a bundle config. The exporter (`v2m.export.exporter`) and
the engine builder (`v2m.export.tensorrt_build`) read only this; neither
knows a model by name.

Torch-free on purpose: the TensorRT engine builder runs in the lean runtime.

    encoder  pixels [B, 3, H, H]                    -> features [B, D]   (H fixed, position embeddings baked)
    dit      x [B, C, L], curve [B, 1, L], t [B],
             text [B, S, E], text_mask [B, S]       -> velocity [B, C, L]
    vae      latents [B, C, L]                      -> audio [B, 2, L * hop]
    step     x [B, C, L], velocity [B2, C, L],
             scale [1], dt [1]                      -> x_next [B, C, L], x2_next [B2, C, L]

`step` is the guided Euler update `x + dt * (v_u + scale * (v_c - v_u))` plus
the doubled batch the next DiT call takes, so a device backend runs the whole
sampler loop without leaving the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from v2m.runtime.bundle import BundleConfig

__all__ = [
    "TensorSpec",
    "ExportContract",
    "CONTRACTS",
    "GRAPH_NAMES",
    "get_contract",
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
    (ones, then zeros for the last third of the row), or a constant ("const:4.0").
    """

    name: str
    dims: tuple[Dim, ...]
    dtype: str = "float32"
    fill: str = "normal"


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
        fp32_inputs: inputs whose precomputation (math not touching other inputs)
            stays fp32 in a reduced-precision TensorRT engine.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Callable[[BundleConfig], dict[str, DimRange]]
    samples: Callable[[BundleConfig], list[dict[str, int]]]
    tolerance: tuple[float, float]
    fp32_inputs: tuple[str, ...] = ()

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

    def sample_inputs(self, cfg: BundleConfig, values: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Deterministic sample inputs (numpy, in input order) for dim `values`."""
        rng = np.random.default_rng(seed)
        out = {}
        for spec in self.inputs:
            shape = self.shape(spec, values, cfg)
            out[spec.name] = _fill(spec.fill, shape, rng).astype(spec.dtype)
        return out


def _fill(kind: str, shape: Shape, rng: np.random.Generator) -> np.ndarray:
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
def _max_tokens(cfg: BundleConfig) -> int:
    return int(cfg.text.get("max_tokens", 32))


def _max_latent(cfg: BundleConfig) -> int:
    # Twice the training length: the pipeline warns past max_frames but still runs
    # one window, and a TensorRT profile must cover it.
    return 2 * cfg.sampler.max_frames


def _encoder_dims(cfg: BundleConfig) -> dict[str, DimRange]:
    # The pipeline encodes frames in batches of 32 (the last one shorter).
    return {"B": (1, 32, 32), "H": cfg.image_size, "D": cfg.feature_dim}


def _dit_dims(cfg: BundleConfig) -> dict[str, DimRange]:
    s = _max_tokens(cfg)
    f = cfg.sampler.max_frames
    return {
        "B": (2, 2, 8),  # CFG doubles the batch: 2 for one video, up to 4 videos
        "C": cfg.latent_channels,
        "L": (1, f, _max_latent(cfg)),
        "S": (1, s, s),
        "E": cfg.text_dim,
    }


def _vae_dims(cfg: BundleConfig) -> dict[str, DimRange]:
    return {"B": (1, 1, 4), "C": cfg.latent_channels, "L": (1, cfg.sampler.max_frames, _max_latent(cfg))}


def _step_dims(cfg: BundleConfig) -> dict[str, DimRange]:
    f = cfg.sampler.max_frames
    return {"B": (1, 1, 4), "B2": (2, 2, 8), "C": cfg.latent_channels, "L": (1, f, _max_latent(cfg))}


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
    "dit": ExportContract(
        name="dit",
        inputs=(
            TensorSpec("x", ("B", "C", "L")),
            TensorSpec("curve", ("B", 1, "L"), fill="unit"),
            TensorSpec("t", ("B",), fill="unit"),
            TensorSpec("text", ("B", "S", "E")),
            TensorSpec("text_mask", ("B", "S"), fill="mask"),
        ),
        outputs=(TensorSpec("velocity", ("B", "C", "L")),),
        dims=_dit_dims,
        # Export at an odd L and full S; check again at another B, L and a shorter S,
        # which proves RoPE (arange(L)) and the additive text mask stayed dynamic.
        samples=lambda cfg: [
            {"B": 2, "L": 31, "S": _max_tokens(cfg)},
            {"B": 4, "L": 57, "S": max(2, _max_tokens(cfg) // 2)},
        ],
        # fp32 reorderings through depth x (attention + MLP): ~1e-6 observed on O(1) outputs.
        tolerance=(1e-4, 1e-4),
        fp32_inputs=("t",),
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
    ),
    "step": ExportContract(
        name="step",
        inputs=(
            TensorSpec("x", ("B", "C", "L")),
            TensorSpec("velocity", ("B2", "C", "L")),
            TensorSpec("scale", (1,), fill="const:4.0"),
            TensorSpec("dt", (1,), fill="const:0.010416667"),
        ),
        outputs=(TensorSpec("x_next", ("B", "C", "L")), TensorSpec("x2_next", ("B2", "C", "L"))),
        dims=_step_dims,
        samples=lambda cfg: [{"B": 1, "B2": 2, "L": 31}, {"B": 2, "B2": 4, "L": 50}],
        tolerance=(1e-6, 1e-6),  # three elementwise ops
    ),
}

GRAPH_NAMES = tuple(CONTRACTS)


def get_contract(name: str) -> ExportContract:
    try:
        return CONTRACTS[name]
    except KeyError:
        raise KeyError(f"no export contract {name!r}; known: {', '.join(GRAPH_NAMES)}") from None
