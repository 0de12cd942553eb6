"""PyTorch backend: the reference, on CPU or CUDA.

Imported only when asked for (it imports torch). It runs the one guided stage
(`step.guided_stage`) stage by stage through `sampler.sample_loop`. Work that does
not change across stages is hoisted out of the loop: the text keys/values of every
block once per generation, and the adaLN modulations of every stage of a solver
table in one batched fp32 call (cached by the table's content key). The solver state
stays in fp32 whatever the model precision, so 96 small updates do not lose bits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..bundle import BundleConfig
from ..encoders import is_weight_free
from ..errors import BackendUnavailable
from ..sampler import Conditioning, Plan, branch_batch, sample_loop
from .base import Backend
from .torch_step import DiTStepModel, make_stage, stage_tensors

__all__ = ["TorchBackend", "DTYPES"]

log = logging.getLogger("v2m.backend.torch")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r} asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    return dev


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle_dir: str | Path, cfg: BundleConfig, device: str = "cpu", precision: str = "fp32"):
        from v2m.models.bundle import load_component

        if precision not in DTYPES:
            raise BackendUnavailable(f"precision {precision!r} is not one of {sorted(DTYPES)}")
        self.cfg = cfg
        self.torch_device = resolve_device(device)
        self.device = str(self.torch_device)
        self.precision = precision
        self.dtype = DTYPES[precision]
        if self.torch_device.type == "cpu" and self.dtype == torch.float16:
            log.warning("fp16 on CPU is slow and not what this path was tuned for; fp32 or bf16 is faster")
        load = lambda name: load_component(bundle_dir, name, cfg, device=self.torch_device, dtype=self.dtype)
        # A weight-free frame encoder (cut, motion) runs in the pipeline: no `encoder` component.
        self.encoder = None if is_weight_free(cfg.encoder) else load("encoder")
        self.dit, self.vae = load("dit"), load("vae")
        self._sched_cache: dict[tuple, tuple] = {}

    # --- frames -------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_frames(self, pixels: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.torch_device, self.dtype)
        feats = self.encoder.pooled(x).float()  # (N, D)
        # On CUDA the features stay on the device: the curve kernel reads them there.
        return feats if self.torch_device.type == "cuda" else feats.numpy()

    # --- sampler ------------------------------------------------------------------------
    def _schedule(self, model: DiTStepModel, plan: Plan) -> tuple:
        """Per-stage modulations of a solver table, cached by its content key (one at a time)."""
        key = (plan.table.key, model.dtype)
        if key not in self._sched_cache:
            t = torch.tensor(plan.table.t_model, dtype=torch.float32, device=self.torch_device)
            self._sched_cache = {key: model.schedule(t)}
        return self._sched_cache[key]

    @torch.inference_mode()
    def sample(self, noise, cond: Conditioning, plan: Plan, on_step=None, stage_noise=None):
        dev = self.torch_device
        model = DiTStepModel(self.dit)
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)
        curve_g, text_g, mask_g = branch_batch(plan.guidance, cond)  # (G*B, 1, L), (G*B, S, E), (G*B, S)
        ctx = model.context(as_t(text_g), as_t(mask_g), as_t(curve_g))
        sched = self._schedule(model, plan)
        coef, noise_t, weights = stage_tensors(plan.table, plan.guidance.weights, stage_noise, noise.shape, dev)
        k = torch.zeros(1, dtype=torch.int64, device=dev)
        stage = make_stage(model, k, coef, noise_t, weights, sched, ctx)
        x0 = as_t(noise)
        x = sample_loop(stage, x0, torch.zeros_like(x0), plan.steps, plan.table.stages, on_step)
        return x.cpu().numpy()

    # --- audio --------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(np.ascontiguousarray(latents)).to(self.torch_device, self.dtype)
        return self.vae(z).float().cpu().numpy()

    def step_clock(self):
        from ..profiler import HostClock, TorchCudaClock

        return TorchCudaClock(self.torch_device) if self.torch_device.type == "cuda" else HostClock()

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def describe(self):
        d = super().describe()
        d["torch"] = torch.__version__
        if self.torch_device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.torch_device)
        return d
