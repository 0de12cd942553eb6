"""Oobleck decode speed paths: in-place Snake (bit-identical), chunked decode (== whole), FLOPs.

Oracles: the plain out-of-place Snake formula written here; the whole (unchunked) decode; a
perturbation probe of a float64 decoder for the receptive field; torch's FlopCounterMode for
the FLOP count.
"""

import numpy as np
import pytest
import torch

from v2m.models.bundle import randomize_weights
from v2m.models.vae import (
    DECODE_CHUNK,
    PRESETS,
    OobleckConfig,
    OobleckDecoder,
    ResidualUnit,
    Snake1d,
)

TINY = PRESETS["tiny"]
NARROW = OobleckConfig(latent_channels=4, channels=2)  # hop 3584, cheap enough for float64 probes


def _decoder(cfg: OobleckConfig, seed: int = 0, dtype=torch.float32) -> OobleckDecoder:
    vae = OobleckDecoder(cfg)
    randomize_weights(vae, torch.Generator().manual_seed(seed))
    return vae.to(dtype).eval()


def _latents(cfg, length, seed=1, dtype=torch.float32):
    return torch.randn(1, cfg.latent_channels, length, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _snake_reference(x, log_alpha, log_beta):
    """diffusers' Snake1d, out of place: x + 1 / (exp(beta) + 1e-9) * sin(exp(alpha) x)^2."""
    alpha, beta = torch.exp(log_alpha), torch.exp(log_beta)
    return x + (beta + 1e-9).reciprocal() * torch.sin(alpha * x).pow(2)


# --- Snake in place ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 7, 1823), (1, 3, 5)])
def test_snake_in_place_is_bit_identical(dtype, shape):
    g = torch.Generator().manual_seed(0)
    snake = Snake1d(shape[1])
    with torch.no_grad():
        snake.alpha.copy_(0.5 * torch.randn(snake.alpha.shape, generator=g))
        snake.beta.copy_(0.5 * torch.randn(snake.beta.shape, generator=g))
    snake = snake.to(dtype)
    x = (30 * torch.randn(shape, generator=g)).to(dtype)  # activations grow to |x| ~ 100
    x_before = x.clone()
    ref = _snake_reference(x, snake.alpha.detach(), snake.beta.detach())
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            got = snake(x)
        assert torch.equal(got, ref), f"{ctx.__name__}: {(got - ref).abs().max().item():.3g}"
    assert torch.equal(x, x_before)  # the input is never written


def test_residual_unit_in_place_is_bit_identical():
    unit = ResidualUnit(6, dilation=3)
    x = torch.randn(2, 6, 301, generator=torch.Generator().manual_seed(2))
    ref = x + unit.conv2(unit.snake2(unit.conv1(unit.snake1(x))))  # grad on: the out-of-place path
    with torch.inference_mode():
        got = unit(x)
    assert torch.equal(got, ref.detach())


def test_training_keeps_autograd():
    """With gradients the reference ops run: backward works and matches an out-of-place copy."""
    snake = Snake1d(4)
    x = torch.randn(1, 4, 50, requires_grad=True)
    snake(x).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    _snake_reference(x2, snake.alpha.detach(), snake.beta.detach()).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)


# --- receptive field and chunked decode --------------------------------------------------------
def test_receptive_field_covers_the_measured_reach():
    """Perturb one latent frame of a float64 decoder: every changed output sample lies within
    `receptive_field` frames, and the bound is close (a transposed conv's reach is counted as
    two input samples where it is one and a fraction: 9.2 frames measured, 11 counted)."""
    vae = _decoder(NARROW, dtype=torch.float64)
    length, k = 31, 15
    z = _latents(NARROW, length, dtype=torch.float64)
    z2 = z.clone()
    z2[:, :, k] += 1.0
    with torch.inference_mode():
        diff = (vae(z2) - vae(z)).abs().amax(dim=(0, 1))  # (L * hop,)
    changed = torch.nonzero(diff > 0).flatten()
    hop = NARROW.hop_length
    reach = max(k * hop - changed.min().item(), changed.max().item() + 1 - (k + 1) * hop)  # samples
    rf = NARROW.receptive_field
    assert (rf - 2) * hop < reach <= rf * hop, (reach / hop, rf)
    assert OobleckConfig().receptive_field == rf == 11  # depends on strides only


@pytest.mark.parametrize("cfg,length,chunk", [(TINY, 29, 10), (TINY, 12, 5), (PRESETS["small"], 30, 8)],
                         ids=["tiny-29", "tiny-12", "small-30"])
def test_chunked_decode_equals_whole(cfg, length, chunk):
    vae = _decoder(cfg)
    z = _latents(cfg, length, seed=length)
    with torch.inference_mode():
        whole = vae(z)
    got = vae.decode_chunked(z, chunk)
    assert got.shape == whole.shape and got.dtype == torch.float32
    # float32: within the rounding of the whole decode itself (~1e-4 from float64 at |audio| ~ 0.6)
    scale = max(1.0, whole.abs().max().item())
    torch.testing.assert_close(got, whole, atol=1e-4 * scale, rtol=0)


def test_chunked_decode_exact_in_float64():
    vae = _decoder(TINY, dtype=torch.float64)
    z = _latents(TINY, 23, dtype=torch.float64)
    with torch.inference_mode():
        whole = vae(z)
    got = vae.decode_chunked(z, 8)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, whole, atol=1e-10, rtol=0)


def test_chunk_overlap_too_small_differs():
    vae = _decoder(TINY)
    z = _latents(TINY, 30)
    with torch.inference_mode():
        whole = vae(z)
    assert not torch.allclose(vae.decode_chunked(z, 7, overlap=0), whole, atol=1e-5)


def test_torch_backend_decodes_in_bounded_chunks(tiny_bundle):
    """TorchBackend.decode: the whole decode's audio, each decoder call at most one chunk
    plus the receptive field each side."""
    from v2m.core.bundle import load_config
    from v2m.runtime.backends.torch_backend import TorchBackend

    be = TorchBackend(tiny_bundle, load_config(tiny_bundle), device="cpu", precision="fp32")
    length = 2 * DECODE_CHUNK + 9
    z = _latents(be.vae.cfg, length)
    with torch.inference_mode():
        whole = be.vae(z).numpy()
    seen: list[int] = []
    hook = be.vae.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-1]))
    try:
        got = be.decode(z.numpy())
    finally:
        hook.remove()
    assert len(seen) == 3 and max(seen) <= DECODE_CHUNK + 2 * be.vae.cfg.receptive_field
    np.testing.assert_allclose(got, whole, atol=1e-4, rtol=0)


# --- FLOPs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [TINY, OobleckConfig(latent_channels=3, channels=2, channel_multiples=(1, 2, 3),
                                                     strides=(2, 3, 4))])
def test_flops_match_torch_flop_counter(cfg):
    from torch.utils.flop_counter import FlopCounterMode

    vae = _decoder(cfg)
    length = 7
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        vae(_latents(cfg, length))
    # torch counts the transposed conv at its unpadded output length (s*(L-1) + 2s samples);
    # ours at s*L: the difference is the padding, a few samples per block
    assert cfg.flops(length) == pytest.approx(counter.get_total_flops(), rel=0.03)
