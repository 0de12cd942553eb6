"""Fast path of the PyTorch backend: static buffers, one CUDA-graphed solver step, chunked VAE.

Selected explicitly (`Pipeline.from_pretrained(..., fast=True)`, CLI `--fast`), or
automatically for CUDA + fp16; `create_backend` logs which sampler path ran.
`TorchBackend` (eager) stays the reference the fast path is tested against.

What it does on top of the eager backend:

- **One step, captured once per shape.** `solver_graph_step` runs one whole solver step
  (Euler: one stage; Heun: two) of the one guided stage definition
  (`step.guided_stage`) over a `StaticState` of preallocated tensors: the stage index
  lives in a device tensor that each stage advances, and each stage gathers its
  modulations and solver coefficients by it. On CUDA the step is captured in a
  `torch.cuda.CUDAGraph` (side-stream warm-up, then `torch.cuda.graph`, on the
  backend's own device for cuda:N) and replayed `steps` times: no host sync and no
  host-to-device write inside the loop. Graphs are keyed by (B, L, S, G, solver table)
  in a small LRU. On CPU (or with `graphs=False`) the very same function runs eagerly:
  that is what CPU tests compare against the plain-loop oracle.
- **Hoisted work.** Text K/V once per generation (copied into static buffers);
  timestep embeddings + adaLN modulations of every stage computed once per
  solver table, in fp32 from upcast weights, and cached across generations.
- **Precision (fp16).** Weights and activations fp16; fp32 is kept where it matters:
  the solver state and the guidance combine (`step.guided_stage`); timestep sinusoids and the
  modulation MLP (here, at precompute time); RoPE angles and the rotation math
  (`models/dit.py` computes them in fp32); LayerNorm statistics (PyTorch's CUDA
  LayerNorm accumulates fp16 inputs in fp32); attention softmax (SDPA's flash /
  memory-efficient kernels accumulate in fp32). The text mask bias (-30000) is
  finite in fp16.
- **Fused glue kernels, explicitly chosen.** `kernels="triton"` swaps the
  backbone for `torch_fused.triton_backbone` (gated residual + LayerNorm +
  adaLN modulate in one kernel, RoPE straight out of the QKV projection);
  `compile="inductor"` lets torch.compile fuse the same glue instead, with mode
  "max-autotune-no-cudagraphs" on CUDA since the graph is ours. They are
  alternatives; with "triton" the VAE's Snake activations are fused too
  (`torch_fused.use_triton_snake`). The default (`torch`, no compile) stays until a GPU run of
  `bench/bench_dit.py` shows which is faster. `path` and the log name the choice.
- **Chunked VAE decode** (`OobleckDecoder.decode_chunked`, which the eager backend runs
  too) in its own precision and chunk size.
- **Frame encoding** from pinned host memory with non-blocking copies, so the
  DINOv2 batches overlap the background video decode; the position embeddings are
  baked for the input size on the first batch (no interpolation per batch).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from v2m.core.bundle import BundleConfig
from v2m.core.errors import BackendUnavailable

from ..sampler import Conditioning, Plan, SolverTable, solver_step
from .torch_backend import TorchBackend
from .torch_step import branch_tensors, guided_stage, make_stage, step_model

__all__ = [
    "FastConfig",
    "StaticState",
    "FastSampler",
    "TorchFastBackend",
    "solver_graph_step",
    "COMPILE_CHOICES",
    "KERNEL_CHOICES",
]

log = logging.getLogger("v2m.backend.torch_fast")

COMPILE_CHOICES = ("none", "inductor")
KERNEL_CHOICES = ("torch", "triton")


@dataclass
class FastConfig:
    """Options of the fast path.

    Args:
        graphs: capture the step in a CUDA graph; None = on CUDA yes, on CPU no.
        compile: "none" or "inductor" (torch.compile of the DiT backbone).
        kernels: "torch" (PyTorch's elementwise kernels) or "triton" (the fused
            residual/norm/modulate and RoPE kernels of `v2m.kernels`, see
            `torch_fused.py`). Triton kernels and torch.compile are alternatives
            for the same glue: pick the one `bench/bench_dit.py` measures faster.
        max_graphs: captured (B, L, S, schedule) shapes kept (LRU).
        vae_chunk: latent frames decoded per chunk (0 = the whole clip at once).
        vae_overlap: context frames each side of a chunk; None = the VAE's receptive field.
        vae_precision: None (the backend's precision), "fp16", "bf16" or "fp32" (TF32
            convolutions on CUDA, PyTorch's default). A decoder amplifies relative errors
            of its input and activations; for random bundles by ~35 dB (fp16 rounding of
            the latents alone gives 36 dB SNR, an fp16 decode ~25 dB against fp32), so
            "fp32" beside an fp16 DiT is the choice where the decoder must be exact;
            `bench/bench_vae.py` measures both (time and SNR) for given weights.
    """

    graphs: bool | None = None
    compile: str = "none"
    kernels: str = "torch"
    max_graphs: int = 4
    vae_chunk: int = 128  # ~10 s of audio per chunk: a few hundred MB of fp16 activations for `full`
    vae_overlap: int | None = None
    vae_precision: str | None = None

    def __post_init__(self):
        if self.compile not in COMPILE_CHOICES:
            raise BackendUnavailable(f"compile {self.compile!r} is not one of {', '.join(COMPILE_CHOICES)}")
        if self.kernels not in KERNEL_CHOICES:
            raise BackendUnavailable(f"kernels {self.kernels!r} is not one of {', '.join(KERNEL_CHOICES)}")
        if self.kernels == "triton" and self.compile != "none":
            raise BackendUnavailable(
                "kernels='triton' and compile='inductor' are alternatives for the same fusion; "
                "choose one (bench/bench_dit.py times both)"
            )
        if self.vae_precision not in (None, "fp16", "bf16", "fp32"):
            raise BackendUnavailable(f"vae_precision {self.vae_precision!r} is not one of fp16, bf16, fp32")
        if self.max_graphs < 1 or self.vae_chunk < 0:
            raise BackendUnavailable("max_graphs must be >= 1 and vae_chunk >= 0")


# --- the step over static buffers -----------------------------------------------------------
@dataclass
class StaticState:
    """Every tensor the captured step reads or writes; addresses never change after capture."""

    x: torch.Tensor  # (B, C, L) fp32 solver state (x_base)
    d: torch.Tensor  # (B, C, L) fp32 the last stage's d (d_prev of the next)
    k: torch.Tensor  # (1,) int64 stage index, advanced by the stages themselves
    coef: torch.Tensor  # (K, 7) fp32 solver table
    noise: torch.Tensor  # (N, B, C, L) fp32 stage noise (N = 1, zeros, for deterministic solvers)
    weights: torch.Tensor  # (G,) fp32 guidance weights
    curve: torch.Tensor  # (G*B, 1, L) fp32 the branches' curves
    sched: tuple  # the model's per-schedule tensors (`StepModel.SCHEDULE`)
    ctx: tuple  # the model's per-generation tensors (`StepModel.CONTEXT`), static copies
    stages: int  # stages per solver step
    noisy: bool = False  # the table adds noise (else the noise term is skipped)

    @property
    def key(self) -> tuple[int, ...]:
        b, _, n = self.x.shape
        return b, n, self.weights.shape[0], *self.ctx[0].shape


def solver_graph_step(model, st: StaticState) -> None:
    """One whole solver step in place (all its stages, k advanced): the unit we capture."""
    stage = make_stage(model, st.k, st.coef, st.noise if st.noisy else None, st.weights, st.curve, st.sched, st.ctx)
    x, d = solver_step(stage, st.x, st.d, st.stages)
    st.d.copy_(d)
    st.x.copy_(x)


def _alloc_state(noise_shape, g: int, ctx: tuple, sched, coef, n_noise: int, stages: int, device) -> StaticState:
    b, c, length = noise_shape
    x = lambda: torch.zeros(b, c, length, dtype=torch.float32, device=device)
    return StaticState(
        x=x(),
        d=x(),
        k=torch.zeros(1, dtype=torch.int64, device=device),
        coef=coef,
        noise=torch.zeros(n_noise, b, c, length, dtype=torch.float32, device=device),
        weights=torch.zeros(g, dtype=torch.float32, device=device),
        curve=torch.zeros(g * b, 1, length, dtype=torch.float32, device=device),
        sched=sched,
        ctx=tuple(torch.zeros_like(t) for t in ctx),
        stages=stages,
    )


class _Entry:
    """One captured shape: its static state and (on CUDA) its graph."""

    def __init__(self, state: StaticState, graph=None):
        self.state, self.graph = state, graph


class FastSampler:
    """The static-buffer sampler; CUDA-graph replay on CUDA, the same step eagerly elsewhere.

    Args:
        dit: the DiT (eval mode, weights on `device` in the compute dtype).
        config: FastConfig (graphs, compile, LRU size).
    """

    def __init__(self, dit: nn.Module, config: FastConfig | None = None):
        self.dit = dit
        self.config = config or FastConfig()
        p = next(dit.parameters())
        self.device, self.dtype = p.device, p.dtype
        cuda = self.device.type == "cuda"
        want_graphs = cuda if self.config.graphs is None else self.config.graphs
        if want_graphs and not cuda:
            raise BackendUnavailable("CUDA graphs need a CUDA device; use graphs=False (or None) on CPU")
        self.graphs = bool(want_graphs)
        self.backbone = self._backbone()
        self.model = step_model(dit, self.backbone)
        self._sched: OrderedDict[tuple, tuple] = OrderedDict()
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.captures = 0  # how many graphs were captured (tests and logs)

    @property
    def path(self) -> str:
        extra = {"inductor": "+inductor"}.get(self.config.compile, "") + {"triton": "+triton"}.get(self.config.kernels, "")
        return ("cuda_graph" if self.graphs else "static_eager") + extra

    def _backbone(self):
        if self.config.kernels == "triton":
            from .torch_fused import triton_backbone

            log.info("fast sampler: fused Triton kernels for residual/norm/modulate and RoPE")
            return triton_backbone(self.dit)
        if self.config.compile == "none":
            return self.dit.backbone
        mode = "max-autotune-no-cudagraphs" if self.device.type == "cuda" else None
        log.info("torch.compile(backbone, mode=%s)", mode)
        return torch.compile(self.dit.backbone, mode=mode, dynamic=False)

    def _device(self):
        """Make `self.device` current: Triton launches, graph capture and streams use it (cuda:N)."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()

    # --- caches -------------------------------------------------------------------------
    def schedule(self, table: SolverTable) -> tuple[tuple, torch.Tensor]:
        """((mods, finals), coef) of a solver table, cached across generations (LRU of 4)."""
        key = (table.key, self.dtype)
        if key in self._sched:
            self._sched.move_to_end(key)
            return self._sched[key]
        t = torch.tensor(table.t_model, dtype=torch.float32, device=self.device)
        coef = torch.from_numpy(np.ascontiguousarray(table.coef, dtype=np.float32)).to(self.device)
        self._sched[key] = (self.model.schedule(t), coef)
        while len(self._sched) > 4:
            self._sched.popitem(last=False)
        return self._sched[key]

    def _entry(self, noise_shape, g: int, ctx: tuple, table: SolverTable, n_noise: int) -> _Entry:
        key = (*noise_shape, g, tuple(tuple(t.shape) for t in ctx), table.key, n_noise)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        sched, coef = self.schedule(table)
        st = _alloc_state(noise_shape, g, ctx, sched, coef, n_noise, table.stages, self.device)
        st.noisy = table.stochastic
        entry = _Entry(st, self._capture(st) if self.graphs else None)
        self._entries[key] = entry
        while len(self._entries) > self.config.max_graphs:
            old, _ = self._entries.popitem(last=False)
            log.info("fast sampler: evicted the graph of shape (B, C, L, G) = %s", old[:4])
        return entry

    def _capture(self, st: StaticState):
        """Capture `solver_graph_step` over `st` (side-stream warm-up first, as PyTorch documents)."""
        step = lambda: solver_graph_step(self.model, st)
        with self._device():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # cuBLAS handles, autotuning, torch.compile all happen here
                    st.k.zero_()
                    step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            st.k.zero_()
            with torch.cuda.graph(graph):
                step()
        self.captures += 1
        log.info("fast sampler: captured a CUDA graph for (B, L, G, ...) = %s, %d stage(s) a step", st.key, st.stages)
        return graph

    # --- the sampler ----------------------------------------------------------------------
    @torch.inference_mode()
    def prepare(self, noise, cond: Conditioning, plan: Plan, stage_noise=None) -> _Entry:
        """Copy one generation's inputs into the static buffers of its shape (capturing if new)."""
        dev = self.device
        g = plan.guidance.size
        n_noise = 1 if stage_noise is None else stage_noise.shape[0]
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)
        with self._device():
            batch = branch_tensors(plan, cond, dev)
            ctx = self.model.text_context(batch)  # once per generation
            entry = self._entry(tuple(noise.shape), g, ctx, plan.table, n_noise)
            st = entry.state
            for dst, src in zip(st.ctx, ctx):
                dst.copy_(src)
            st.curve.copy_(batch["curve"])
            st.x.copy_(as_t(noise))
            st.d.zero_()
            st.noise.copy_(as_t(stage_noise)) if stage_noise is not None else st.noise.zero_()
            st.weights.copy_(as_t(plan.guidance.weights))
            st.k.zero_()
        return entry

    @torch.inference_mode()
    def run(self, entry: _Entry, steps: int, on_step=None) -> torch.Tensor:
        """`steps` solver steps from the prepared state: graph replays, or the same step eagerly."""
        st = entry.state
        with self._device():
            for i in range(steps):
                if entry.graph is not None:
                    entry.graph.replay()
                else:
                    solver_graph_step(self.model, st)
                if on_step is not None:
                    on_step(i)
        return st.x

    def sample(self, noise, cond: Conditioning, plan: Plan, on_step=None, stage_noise=None):
        entry = self.prepare(noise, cond, plan, stage_noise)
        x = self.run(entry, plan.steps, on_step)
        return x.cpu().numpy().copy()

    @torch.inference_mode()
    def velocity_at(self, entry: _Entry, x: torch.Tensor, k: int) -> torch.Tensor:
        """The guided model output (the d of a rectified-flow stage) at state `x`, stage `k`
        (accuracy checks); leaves the state as it was."""
        st = entry.state
        with self._device():
            kk = torch.tensor([k], dtype=torch.int64, device=self.device)
            xx = x.to(self.device, torch.float32)
            _, d = guided_stage(self.model, xx, xx, torch.zeros_like(xx), kk, st.coef, st.noise, st.weights,
                                st.curve, st.sched, st.ctx)
        return d.clone()


# --- the backend --------------------------------------------------------------------------
class TorchFastBackend(TorchBackend):
    """TorchBackend with the fast sampler, chunked VAE decode and pinned frame uploads."""

    name = "torch"

    def __init__(
        self,
        bundle_dir: str | Path,
        cfg: BundleConfig,
        device: str = "cpu",
        precision: str = "fp16",
        config: FastConfig | None = None,
    ):
        super().__init__(bundle_dir, cfg, device=device, precision=precision)
        self.fast_config = config or FastConfig()
        self.sampler = FastSampler(self.dit, self.fast_config)
        vp = self.fast_config.vae_precision
        if vp is not None and vp != precision:  # reloaded: casting the loaded one would keep its rounding
            from v2m.models.bundle import load_component

            from .torch_backend import DTYPES

            self.vae = load_component(bundle_dir, "vae", cfg, device=self.torch_device, dtype=DTYPES[vp])
        self.vae_dtype = next(self.vae.parameters()).dtype
        if self.fast_config.kernels == "triton":
            from .torch_fused import use_triton_snake

            log.info("torch fast path: VAE decoder with %d fused Triton Snake activations", use_triton_snake(self.vae))
        log.info(
            "torch fast path: sampler %s (kernels %s, compile %s), %s on %s, VAE %s in chunks of %s latent frames",
            self.sampler.path, self.fast_config.kernels, self.fast_config.compile, precision, self.device,
            str(self.vae_dtype).removeprefix("torch."), self.fast_config.vae_chunk or "all",
        )

    @torch.inference_mode()
    def encode_frames(self, pixels: np.ndarray):
        if self.encoder is None:
            return super().encode_frames(pixels)  # the one-line error
        x = torch.from_numpy(np.ascontiguousarray(pixels))
        # every frame has the bundle's input size: baked on the first batch, a no-op after
        self.encoder.bake_position_embeddings(tuple(x.shape[-2:]))
        if self.torch_device.type == "cuda":
            x = x.pin_memory().to(self.torch_device, non_blocking=True)  # overlaps the decode thread
        feats = self.encoder.pooled(x.to(self.torch_device, self.dtype)).float()  # (N, D)
        return feats if self.torch_device.type == "cuda" else feats.numpy()

    def sample(self, noise, cond: Conditioning, plan: Plan, on_step=None, stage_noise=None):
        return self.sampler.sample(noise, cond, plan, on_step, stage_noise)

    @torch.inference_mode()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(np.ascontiguousarray(latents)).to(self.torch_device, self.vae_dtype)
        return self.vae.decode_chunked(z, self.fast_config.vae_chunk, self.fast_config.vae_overlap).float().numpy()

    def describe(self):
        d = super().describe()
        d["sampler_path"] = self.sampler.path
        d["compile"] = self.fast_config.compile
        d["kernels"] = self.fast_config.kernels
        d["vae_precision"] = str(self.vae_dtype).removeprefix("torch.").replace("float", "fp")
        d["vae_chunk"] = self.fast_config.vae_chunk
        return d
