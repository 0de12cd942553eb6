"""fp32 islands for reduced-precision graphs: explicit casts around precision-sensitive math.

TensorRT 11 builds strongly typed networks only (10 can too): each layer runs in the
types the ONNX graph gives it, with no builder flag to pick precisions. So a fp16/bf16
export carries its own fp32 islands as casts, and the same graph serves ONNX Runtime's
CUDA provider. Islands: LayerNorm statistics and affine (here), Snake's
sin(alpha x)^2 in the VAE (here), timestep features and the modulation MLP (the
`schedule` graph computes them in fp32 from upcast weights), RoPE angles and rotation
(`models/dit.py` already computes them in fp32) and the solver state (the `step`
graph's x, d, coefficients and guidance weights are fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Fp32LayerNorm", "fp32_islands"]


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm whose statistics and affine run in fp32 whatever the input dtype; the output
    is cast back (PyTorch's CUDA LayerNorm already accumulates fp16 inputs in fp32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


def _snake_class():
    from v2m.models.vae import Snake1d

    class Fp32Snake(Snake1d):
        """SnakeBeta with the phase alpha x and its sine in fp32 (fp16 loses the phase of
        large activations); the output is cast back."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            alpha, beta = torch.exp(self.alpha.float()), torch.exp(self.beta.float())
            xf = x.float()
            return (xf + (beta + 1e-9).reciprocal() * torch.sin(alpha * xf).pow(2)).to(x.dtype)

    return Snake1d, Fp32Snake


def fp32_islands(module: nn.Module) -> dict[str, int]:
    """Turn LayerNorms and Snakes of a reduced-precision `module` into their fp32-island
    versions in place (weights kept); returns how many of each."""
    snake, fp32_snake = _snake_class()
    counts = {"layernorm": 0, "snake": 0}
    for m in module.modules():
        if type(m) is nn.LayerNorm:
            m.__class__ = Fp32LayerNorm
            counts["layernorm"] += 1
        elif type(m) is snake:
            m.__class__ = fp32_snake
            counts["snake"] += 1
    return counts
