"""The one small interface every backend implements.

A backend owns the three networks of a bundle in its own engine (PyTorch,
ONNX Runtime, TensorRT) and exposes exactly what the pipeline needs:

- `encode_frames(pixels [N, 3, H, W] float32) -> features [N, D]`
- `sample(noise, curve, text, text_mask, ts, cfg_scale, uncond_keeps_curve) -> latents`
  (the whole sampler loop, so a backend may capture it in a CUDA graph)
- `decode(latents [B, C, L]) -> audio [B, 2, L * hop]`

`ArrayBackend` implements `sample` once, generically, on top of a per-step
`velocity` call over the backend's native arrays; backends override it only
for a faster path.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ..sampler import cfg_combine, euler

__all__ = ["Backend", "ArrayBackend", "StepHook"]

log = logging.getLogger("v2m.backend")

StepHook = Callable[[int], None]


class Backend(abc.ABC):
    name: str = "abstract"
    device: str = "cpu"
    precision: str = "fp32"

    @abc.abstractmethod
    def encode_frames(self, pixels: np.ndarray) -> Any:
        """[N, 3, H, W] float32 normalized pixels -> [N, D] features (numpy, or a device tensor)."""

    @abc.abstractmethod
    def sample(
        self,
        noise: np.ndarray,
        curve: np.ndarray,
        text: np.ndarray,
        text_mask: np.ndarray,
        ts: np.ndarray,
        cfg_scale: float,
        uncond_keeps_curve: bool = True,
        on_step: StepHook | None = None,
    ) -> np.ndarray:
        """Run the sampler from noise [B, C, L] to latents [B, C, L] (float32 numpy)."""

    @abc.abstractmethod
    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Latents [B, C, L] -> audio [B, 2, L * hop] float32 numpy."""

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on CPU). Profilers call it; the sampler does not."""

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "device": self.device, "precision": self.precision}

    def close(self) -> None:
        """Release engines and buffers."""


class ArrayBackend(Backend):
    """`sample` written once over native arrays; subclasses supply array ops and one DiT step."""

    @abc.abstractmethod
    def to_native(self, a: np.ndarray) -> Any: ...

    @abc.abstractmethod
    def to_numpy(self, a: Any) -> np.ndarray: ...

    @abc.abstractmethod
    def concat(self, arrays: list[Any]) -> Any: ...

    @abc.abstractmethod
    def velocity(self, x: Any, curve: Any, t: Any, text: Any, text_mask: Any) -> Any:
        """One DiT forward on native arrays: [2B, C, L] -> [2B, C, L]."""

    def prepare_text(self, text: Any, text_mask: Any) -> tuple[Any, Any]:
        """Hook for hoisting per-generation text work; default: pass through."""
        return text, text_mask

    def sample(self, noise, curve, text, text_mask, ts, cfg_scale, uncond_keeps_curve=True, on_step=None):
        b = noise.shape[0]
        # Cond and uncond stacked in one batch of 2B: one forward per step.
        text2 = np.concatenate([text, np.zeros_like(text)]).astype(np.float32)
        mask2 = np.concatenate([text_mask, text_mask]).astype(np.float32)
        curve_u = curve if uncond_keeps_curve else np.zeros_like(curve)
        curve2 = self.to_native(np.concatenate([curve, curve_u]).astype(np.float32))
        text2, mask2 = self.prepare_text(self.to_native(text2), self.to_native(mask2))
        t_all = [self.to_native(np.full(2 * b, t, dtype=np.float32)) for t in ts[:-1]]

        def guided(x, i, _t):
            v = self.velocity(self.concat([x, x]), curve2, t_all[i], text2, mask2)
            return cfg_combine(v[:b], v[b:], cfg_scale)

        x = euler(guided, self.to_native(noise.astype(np.float32)), ts, on_step)
        return self.to_numpy(x)
