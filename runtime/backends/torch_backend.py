"""PyTorch backend: the reference, on CPU or CUDA.

Imported only when asked for (it imports torch). Work that does not change
across sampler steps is hoisted out of the loop: the text keys/values of every
block once per generation, and the adaLN modulations of every step of the
fixed schedule in one batched call. The Euler state stays in fp32 whatever
the model precision, so 96 small updates do not lose bits.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..bundle import BundleConfig
from ..encoders import is_weight_free
from ..errors import BackendUnavailable
from ..sampler import cfg_combine, euler
from .base import Backend

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
        self._mod_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # --- frames -------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_frames(self, pixels: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.torch_device, self.dtype)
        feats = self.encoder.pooled(x).float()  # (N, D)
        # On CUDA the features stay on the device: the curve kernel reads them there.
        return feats if self.torch_device.type == "cuda" else feats.numpy()

    # --- sampler ------------------------------------------------------------------------
    def _modulations(self, ts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """adaLN modulations of every step (depth, steps, 6, D), (steps, 2, D); cached by schedule."""
        key = (len(ts), float(ts[0]), float(ts[-1]))
        if key not in self._mod_cache:
            t = torch.tensor(ts[:-1], dtype=torch.float32, device=self.torch_device)
            self._mod_cache = {key: self.dit.time_modulations(t)}  # one schedule at a time
        return self._mod_cache[key]

    @torch.inference_mode()
    def sample(self, noise, curve, text, text_mask, ts, cfg_scale, uncond_keeps_curve=True, on_step=None):
        dev, dt = self.torch_device, self.dtype
        b = noise.shape[0]
        as_t = lambda a, dtype=dt: torch.from_numpy(np.ascontiguousarray(a)).to(dev, dtype)
        curve_u = curve if uncond_keeps_curve else np.zeros_like(curve)
        curve2 = as_t(np.concatenate([curve, curve_u]))  # (2B, 1, L)
        text2 = as_t(np.concatenate([text, np.zeros_like(text)]))  # (2B, S, E)
        mask2 = as_t(np.concatenate([text_mask, text_mask]), torch.float32)  # (2B, S)
        kvs, bias = self.dit.text_context(text2, mask2)
        mods, finals = self._modulations(ts)

        def guided(x, i, _t):
            m = mods[:, i : i + 1].expand(-1, 2 * b, -1, -1)  # (depth, 2B, 6, D)
            f = finals[i : i + 1].expand(2 * b, -1, -1)  # (2B, 2, D)
            x2 = torch.cat([x, x]).to(dt)  # (2B, C, L)
            v = self.dit.backbone(x2, curve2, m, f, kvs, bias).float()
            return cfg_combine(v[:b], v[b:], cfg_scale)

        x = euler(guided, as_t(noise, torch.float32), ts, on_step)
        return x.cpu().numpy()

    # --- audio --------------------------------------------------------------------------
    @torch.inference_mode()
    def decode(self, latents: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(np.ascontiguousarray(latents)).to(self.torch_device, self.dtype)
        return self.vae(z).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.synchronize(self.torch_device)

    def describe(self):
        d = super().describe()
        d["torch"] = torch.__version__
        if self.torch_device.type == "cuda":
            d["gpu"] = torch.cuda.get_device_name(self.torch_device)
        return d
