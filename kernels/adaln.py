"""Fused gated residual + LayerNorm + adaLN modulate for the DiT block, in Triton.

Every DiT block (`v2m.models.dit.DiTBlock`) does, three times,

    h = h + gate * y                      # the branch output joins the residual stream
    n = LN(h) [* w + b] * (1 + scale) + shift

as five to seven separate PyTorch kernels, each reading and writing a full
(B, L, D) activation. `add_norm_modulate` does it in one pass over a row: it
reads h and y once, writes the new h and n once, keeps the LayerNorm statistics
in fp32 and rounds to the model dtype only at the two stores. In the fused DiT
backbone (`v2m.runtime.backends.torch_fused`) the residual of one branch is
folded into the norm of the next, so a block is three of these launches plus
its matmuls and attention.

Gate, shift and scale are per batch row, (B, D), with any batch stride: the
fast sampler passes adaLN modulations gathered for the current step and
expanded over the 2B CFG batch, whose batch stride is 0.

`add_norm_modulate_reference` is the same math in plain PyTorch ops (fp32
internally, one rounding at the end), the reference that tests and
`bench/bench_fused.py` share.
"""

from __future__ import annotations

import torch

from ._triton import on_device, tl, triton, triton_available

__all__ = ["add_norm_modulate", "add_norm_modulate_reference", "triton_available"]


if triton is not None:

    @triton.jit
    def _add_norm_modulate_kernel(
        H_ptr,
        Y_ptr,
        G_ptr,
        W_ptr,
        BIAS_ptr,
        SHIFT_ptr,
        SCALE_ptr,
        H_out_ptr,
        N_out_ptr,
        R,
        D,
        rows_per_batch,
        h_row_stride,
        y_row_stride,
        mod_batch_stride,
        out_row_stride,
        eps,
        HAS_Y: tl.constexpr,
        HAS_GATE: tl.constexpr,
        AFFINE: tl.constexpr,
        MODULATE: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """Rows r of (R, D), ROWS of them a program; batch b = r // rows_per_batch:

            h'   = h[r] + g[b] * y[r]      (HAS_Y; g = 1 without HAS_GATE; h' = h[r] without HAS_Y)
            z    = (h' - mean(h')) / sqrt(var(h') + eps)          biased variance, fp32
            z    = z * w + bias                                    (AFFINE)
            n[r] = z * (1 + scale[b]) + shift[b]                   (MODULATE)

        writes h' to H_out (HAS_Y) and n to N_out, both in their pointers' dtype.
        Everything between the loads and the stores is fp32. Whole rows sit in
        registers (BLOCK_D >= D), so the statistics are two-pass on the register
        copy: no cancellation in the variance. ROWS > 1 serves narrow models
        (a program still moves about 4K elements).
        """
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
        cols = tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        mask = (rows[:, None] < R) & (cols[None, :] < D)  # (ROWS, BLOCK_D)
        b = rows // rows_per_batch
        mod_offs = b[:, None] * mod_batch_stride + cols[None, :]
        out_offs = rows[:, None] * out_row_stride + cols[None, :]
        h = tl.load(H_ptr + rows[:, None] * h_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_Y:
            y = tl.load(Y_ptr + rows[:, None] * y_row_stride + cols[None, :], mask=mask, other=0.0).to(tl.float32)
            if HAS_GATE:
                y = y * tl.load(G_ptr + mod_offs, mask=mask, other=0.0).to(tl.float32)
            h = h + y
            tl.store(H_out_ptr + out_offs, h.to(H_out_ptr.dtype.element_ty), mask=mask)
            # the norm reads the rounded residual, as the unfused model does
            h = h.to(H_out_ptr.dtype.element_ty).to(tl.float32)
        mean = tl.sum(h, axis=1) / D  # (ROWS,)
        c = tl.where(mask, h - mean[:, None], 0.0)
        var = tl.sum(c * c, axis=1) / D
        z = c * (1.0 / tl.sqrt(var + eps))[:, None]
        if AFFINE:
            w = tl.load(W_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
            bias = tl.load(BIAS_ptr + cols, mask=cols < D, other=0.0).to(tl.float32)
            z = z * w[None, :] + bias[None, :]
        if MODULATE:
            shift = tl.load(SHIFT_ptr + mod_offs, mask=mask, other=0.0).to(tl.float32)
            scale = tl.load(SCALE_ptr + mod_offs, mask=mask, other=0.0).to(tl.float32)
            z = z * (1.0 + scale) + shift
        tl.store(N_out_ptr + out_offs, z.to(N_out_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor, name: str) -> torch.Tensor:
    """(B, L, D) with unit stride on D and rows evenly spaced (any contiguous (B, L, D) qualifies)."""
    if x.dim() != 3:
        raise ValueError(f"{name} must be (B, L, D), got shape {tuple(x.shape)}")
    if x.stride(2) != 1 or x.stride(0) != x.stride(1) * x.shape[1]:
        x = x.contiguous()
    return x


def _per_batch(x: torch.Tensor | None, b: int, d: int, name: str) -> torch.Tensor | None:
    """(B, D) modulation with unit stride on D; batch stride free (0 for an expanded tensor)."""
    if x is None:
        return None
    if x.shape != (b, d):
        raise ValueError(f"{name} must be (B, D) = ({b}, {d}), got {tuple(x.shape)}")
    return x if x.stride(1) == 1 else x.contiguous()


def _launch_config(d: int) -> tuple[int, int, int]:
    """ROWS a program, BLOCK_D (whole rows in registers) and num_warps: about 4K elements a
    program (one 2048-wide row of the full preset, 64 rows of the tiny one), 8 to 16 a thread."""
    block = triton.next_power_of_2(d)
    rows = max(1, 4096 // block)
    return rows, block, max(1, min(16, rows * block // 256))


def add_norm_modulate(
    h: torch.Tensor,
    y: torch.Tensor | None,
    gate: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    shift: torch.Tensor | None,
    scale: torch.Tensor | None,
    eps: float,
    out_h: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated residual, LayerNorm and adaLN modulate in one kernel.

    Args:
        h: residual stream (B, L, D).
        y: branch output (B, L, D), or None (no residual update: n = norm of h).
        gate: (B, D) or None (gate 1).
        weight, bias: LayerNorm affine (D,), both or neither.
        shift, scale: adaLN modulation (B, D), both or neither.
        eps: LayerNorm epsilon.
        out_h: where h + gate * y goes (may be `h` itself); default a new tensor.

    Returns:
        (h', n): the updated residual (h itself when y is None) and the normed,
        modulated activations, both (B, L, D) in h's dtype.
    """
    if not triton_available():
        raise RuntimeError("add_norm_modulate needs triton and a CUDA device (or TRITON_INTERPRET=1); "
                           "use add_norm_modulate_reference otherwise")
    if (weight is None) != (bias is None) or (shift is None) != (scale is None):
        raise ValueError("pass weight with bias and shift with scale (both or neither)")
    h = _rows(h, "h")
    bsz, length, d = h.shape
    if y is not None:
        if y.shape != h.shape:
            raise ValueError(f"y must match h {tuple(h.shape)}, got {tuple(y.shape)}")
        y = _rows(y, "y")
    gate, shift, scale = (_per_batch(t, bsz, d, n) for t, n in ((gate, "gate"), (shift, "shift"), (scale, "scale")))
    strides = {t.stride(0) for t in (gate, shift, scale) if t is not None}
    if len(strides) > 1:  # one stride argument serves all three; make them agree
        gate, shift, scale = (None if t is None else t.contiguous() for t in (gate, shift, scale))
        strides = {d}
    mod_stride = strides.pop() if strides else 0
    n = torch.empty((bsz, length, d), dtype=h.dtype, device=h.device)
    if y is not None:
        out_h = torch.empty_like(n) if out_h is None else out_h
        if out_h.shape != h.shape or out_h.stride() != n.stride():
            raise ValueError("out_h must be a contiguous (B, L, D) tensor like h")
    else:
        out_h = h
    if bsz * length == 0:
        return out_h, n
    rows, block, warps = _launch_config(d)
    dummy = n  # stands in for absent pointers; never read (constexpr flags)
    with on_device(n):
        _add_norm_modulate_kernel[(triton.cdiv(bsz * length, rows),)](
            h, dummy if y is None else y, dummy if gate is None else gate,
            dummy if weight is None else weight, dummy if bias is None else bias,
            dummy if shift is None else shift, dummy if scale is None else scale,
            out_h, n,
            bsz * length, d, length, h.stride(1), y.stride(1) if y is not None else 0, mod_stride, n.stride(1), float(eps),
            HAS_Y=y is not None, HAS_GATE=gate is not None, AFFINE=weight is not None, MODULATE=shift is not None,
            ROWS=rows, BLOCK_D=block, num_warps=warps,
        )
    return out_h, n


def add_norm_modulate_reference(h, y, gate, weight, bias, shift, scale, eps):
    """The plain-PyTorch twin of `add_norm_modulate`: fp32 math, rounded to h's dtype at the end.

    Returns (h', n) like the kernel (h' is h when y is None).
    """
    dt = h.dtype
    hf = h.float()
    if y is not None:
        yf = y.float() if gate is None else y.float() * gate.float()[:, None, :]
        h = (hf + yf).to(dt)
        hf = h.float()
    z = torch.nn.functional.layer_norm(hf, (hf.shape[-1],), eps=eps)
    if weight is not None:
        z = z * weight.float() + bias.float()
    if shift is not None:
        z = z * (1.0 + scale.float()[:, None, :]) + shift.float()[:, None, :]
    return h, z.to(dt)
