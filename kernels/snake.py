"""SnakeBeta activation of the Oobleck VAE decoder in one Triton pass.

`v2m.models.vae.Snake1d` computes, per channel c with log-scale parameters,

    y = x + 1 / (exp(beta_c) + 1e-9) * sin(exp(alpha_c) * x)^2

as about seven PyTorch kernels (two exp, add, reciprocal, mul, sin, pow, mul,
add), each over the whole (B, C, T) activation. In the decoder's last blocks T is
the audio rate (1.4M samples for 32 s) and Snake runs seven times a block, so the
decoder is bound by these passes rather than by its convolutions. `snake` reads x
once and writes y once, with the parameters exponentiated once (`snake_params`)
and the math done in fp32 (in fp16, 1e-9 vanishes next to exp(beta) and a small exp(beta) would make
the reciprocal overflow; here neither happens).

`snake_reference` is the module's formula in fp32, rounded once: the reference
tests and `bench/bench_fused.py` share.
"""

from __future__ import annotations

import torch

from ._triton import on_device, tl, triton, triton_available

__all__ = ["snake", "snake_params", "snake_reference", "triton_available"]


if triton is not None:

    @triton.jit
    def _snake_kernel(
        X_ptr,
        ALPHA_ptr,
        INV_BETA_ptr,
        Y_ptr,
        N,
        C,
        T,
        BLOCK: tl.constexpr,
    ):
        """Flat over the N = B * C * T elements of a contiguous (B, C, T) tensor, channel c = (i // T) % C:

            y[i] = x[i] + inv_beta[c] * sin(alpha[c] * x[i])^2

        with alpha = exp(log_alpha), inv_beta = 1 / (exp(log_beta) + 1e-9) prepared in fp32
        (`snake_params`). Flat indexing keeps every block contiguous and aligned whatever T
        is (the decoder's odd-stride lengths are not multiples of 16), so fp16 loads and
        stores vectorize; the per-element channel gather hits two small cached arrays.
        """
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        c = (offs // T) % C
        alpha = tl.load(ALPHA_ptr + c, mask=mask, other=0.0)
        inv_beta = tl.load(INV_BETA_ptr + c, mask=mask, other=0.0)
        x = tl.load(X_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.sin(alpha * x)
        tl.store(Y_ptr + offs, (x + inv_beta * s * s).to(Y_ptr.dtype.element_ty), mask=mask)


def snake_params(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`Snake1d`'s log-scale parameters -> fp32 per-channel (alpha, 1 / (beta + 1e-9)), shape (C,).

    Constant at inference: `TritonSnake1d` computes them once, not per call.
    """
    alpha = torch.exp(log_alpha.detach().float().reshape(-1)).contiguous()
    inv_beta = (torch.exp(log_beta.detach().float().reshape(-1)) + 1e-9).reciprocal().contiguous()
    return alpha, inv_beta


def snake(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
    """SnakeBeta of x (B, C, T); same dtype as x.

    Args:
        x: activations (B, C, T); a non-contiguous one is copied first.
        alpha, inv_beta: fp32 (C,) from `snake_params(Snake1d.alpha, Snake1d.beta)`.
    """
    if not triton_available():
        raise RuntimeError("snake needs triton and a CUDA device (or TRITON_INTERPRET=1); use snake_reference otherwise")
    if x.dim() != 3:
        raise ValueError(f"x must be (B, C, T), got {tuple(x.shape)}")
    b, c, t = x.shape
    if alpha.shape != (c,) or inv_beta.shape != (c,) or alpha.dtype != torch.float32 or inv_beta.dtype != torch.float32:
        raise ValueError(f"alpha and inv_beta must be fp32 (C,) = ({c},) from snake_params, "
                         f"got {tuple(alpha.shape)} {alpha.dtype} and {tuple(inv_beta.shape)} {inv_beta.dtype}")
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return y
    block = 4096
    with on_device(x):
        _snake_kernel[(triton.cdiv(n, block),)](x, alpha, inv_beta, y, n, c, t, BLOCK=block, num_warps=8)
    return y


def snake_reference(x: torch.Tensor, log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """`Snake1d.forward`'s formula in fp32, rounded once to x's dtype."""
    c = x.shape[1]
    alpha = torch.exp(log_alpha.float().reshape(1, c, 1))
    beta = torch.exp(log_beta.float().reshape(1, c, 1))
    xf = x.float()
    return (xf + (beta + 1e-9).reciprocal() * torch.sin(alpha * xf).pow(2)).to(x.dtype)
