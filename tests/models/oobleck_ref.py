"""The diffusers reference of the Oobleck VAE, shared by the decoder and encoder tests."""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")


def diffusers_vae(config: dict, seed: int = 0):
    """A diffusers AutoencoderOobleck with every parameter random, g included (so the
    fold is exercised: at init g = ||v|| and the fold would be the identity)."""
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderOobleck(**config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("weight_g"):
                p.mul_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith(("alpha", "beta")):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return vae
