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

from v2m import families
from v2m.core.bundle import BundleConfig, has_encoder_weights
from v2m.core.errors import BackendUnavailable

from ..sampler import Conditioning, Plan, sample_loop
from .base import Backend
from .torch_step import branch_tensors, make_stage, stage_tensors, step_model

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
        self.dit, self.vae = load("dit"), load("vae")
        # no `encoder` component: a weight-free frame encoder (cut, motion) runs in the pipeline,
        # and a Stable Audio Open bundle converted without a frame encoder ("none") runs text-only
        self.encoder = load("encoder") if has_encoder_weights(cfg.encoder) else None
        # the seconds/text conditioner of a Stable Audio Open bundle; fp32: it runs once a generation
        self.cond = (load_component(bundle_dir, "cond", cfg, device=self.torch_device, dtype=torch.float32)
                     if "cond" in families.of(cfg).components(cfg) else None)
        self._sched_cache: dict[tuple, tuple] = {}

    # --- frames -------------------------------------------------------------------------
    @torch.inference_mode()
    def condition(self, text, text_mask, seconds):
        if self.cond is None:
            return super().condition(text, text_mask, seconds)
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(self.torch_device)
        cross, glob = self.cond(as_t(text), as_t(text_mask), as_t(seconds))
        return cross.float().cpu().numpy(), glob.float().cpu().numpy()

    @torch.inference_mode()
    def encode_frames(self, pixels: np.ndarray):
        if self.encoder is None:
            from v2m.core.errors import BundleError

            raise BundleError("this bundle has no frame encoder (converted without --encoder), so it cannot follow a "
                              "video; convert it again with --encoder DIR (a DINOv2 checkpoint)")
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.torch_device, self.dtype)
        feats = self.encoder.pooled(x).float()  # (N, D)
        # On CUDA the features stay on the device: the curve kernel reads them there.
        return feats if self.torch_device.type == "cuda" else feats.numpy()

    # --- sampler ------------------------------------------------------------------------
    def _schedule(self, model, plan: Plan) -> tuple:
        """Per-stage modulations of a solver table, cached by its content key (one at a time)."""
        key = (plan.table.key, model.dtype)
        if key not in self._sched_cache:
            t = torch.tensor(plan.table.t_model, dtype=torch.float32, device=self.torch_device)
            self._sched_cache = {key: model.schedule(t)}
        return self._sched_cache[key]

    @torch.inference_mode()
    def sample(self, noise, cond: Conditioning, plan: Plan, on_step=None, stage_noise=None):
        dev = self.torch_device
        model = step_model(self.dit)
        batch = branch_tensors(plan, cond, dev)  # (G*B, ...) branch-major
        ctx = model.text_context(batch)
        sched = self._schedule(model, plan)
        coef, noise_t, weights = stage_tensors(plan.table, plan.guidance.weights, stage_noise, noise.shape, dev)
        if not plan.table.stochastic:
            noise_t = None  # no noise term to add
        k = torch.zeros(1, dtype=torch.int64, device=dev)
        stage = make_stage(model, k, coef, noise_t, weights, batch["curve"], sched, ctx)
        x0 = torch.from_numpy(np.ascontiguousarray(noise, dtype=np.float32)).to(dev)
        x = sample_loop(stage, x0, torch.zeros_like(x0), plan.steps, plan.table.stages, on_step)
        return x.cpu().numpy()

    # --- audio --------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(np.ascontiguousarray(latents)).to(self.torch_device, self.dtype)
        # bounded chunks with receptive-field overlap: the same audio, a working set that
        # does not grow with the clip (a whole 30 s decode spent most of its time faulting pages)
        return self.vae.decode_chunked(z).float().numpy()

    def step_clock(self):
        from ..clocks import HostClock, TorchCudaClock

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
