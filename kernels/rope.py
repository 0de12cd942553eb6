"""Rotary embedding of queries and keys straight out of the fused QKV projection, in Triton.

The DiT's self-attention (`v2m.models.dit.SelfAttention`) views the QKV
projection (B, L, 3D) as (B, L, 3, H, Dh), permutes to (3, B, H, L, Dh) and
rotates q and k in fp32 (`apply_rope`: upcast, split in halves, four products,
concatenate, downcast): about eight kernels and three full-size temporaries
per call. `rope_qkv` reads each q and k element once, rotates it in fp32 with
the model's own fp32 cos/sin tables, and writes q and k in the (B, H, L, Dh)
layout attention wants, in the model dtype. v is returned as the strided view
the model uses (attention reads it in place).

`rope_qkv_reference` is the model's own code path (the same view, permute and
`apply_rope`), the reference tests and `bench/bench_fused.py` share.
"""

from __future__ import annotations

import torch

from ._triton import on_device, tl, triton, triton_available

__all__ = ["rope_qkv", "rope_qkv_reference", "triton_available"]


if triton is not None:

    @triton.jit
    def _rope_qkv_kernel(
        QKV_ptr,
        COS_ptr,
        SIN_ptr,
        Q_ptr,
        K_ptr,
        R,
        L,
        H,
        qkv_batch_stride,
        qkv_row_stride,
        table_row_stride,
        HALF: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_P: tl.constexpr,
    ):
        """Rows r = b * L + l, ROWS a program; pairs p = h * HALF + j over all heads of a row.
        For q (part 0) and k (part 1) of the projection, x = qkv[b, l, part, h, :]:

            x1 = x[j], x2 = x[HALF + j]
            out[b, h, l, j]        = x1 * cos[l, j] - x2 * sin[l, j]
            out[b, h, l, HALF + j] = x2 * cos[l, j] + x1 * sin[l, j]

        in fp32, stored in the output dtype. Head dim Dh = 2 * HALF, width D = H * Dh.
        """
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
        pairs = tl.arange(0, BLOCK_P)  # (BLOCK_P,)
        b = rows // L
        pos = rows % L
        head = pairs // HALF
        j = pairs % HALF
        mask = (rows[:, None] < R) & (pairs[None, :] < H * HALF)  # (ROWS, BLOCK_P)
        table = pos[:, None] * table_row_stride + j[None, :]
        c = tl.load(COS_ptr + table, mask=mask, other=0.0)
        s = tl.load(SIN_ptr + table, mask=mask, other=0.0)
        dh = 2 * HALF
        src = QKV_ptr + b[:, None] * qkv_batch_stride + pos[:, None] * qkv_row_stride + (head * dh + j)[None, :]
        dst = ((b[:, None] * H + head[None, :]) * L + pos[:, None]) * dh + j[None, :]  # (B, H, L, Dh) contiguous
        _rotate(src, Q_ptr + dst, c, s, mask, HALF)  # q: part 0 of the projection
        _rotate(src + H * dh, K_ptr + dst, c, s, mask, HALF)  # k: part 1

    @triton.jit
    def _rotate(src, dst, c, s, mask, HALF: tl.constexpr):
        x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
        tl.store(dst, (x1 * c - x2 * s).to(dst.dtype.element_ty), mask=mask)
        tl.store(dst + HALF, (x2 * c + x1 * s).to(dst.dtype.element_ty), mask=mask)


def _check(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> tuple[int, int, int, int]:
    if qkv.dim() != 3 or qkv.shape[2] % (3 * heads):
        raise ValueError(f"qkv must be (B, L, 3 * D) with D divisible by heads={heads}, got {tuple(qkv.shape)}")
    b, length, three_d = qkv.shape
    dh = three_d // (3 * heads)
    if dh % 2:
        raise ValueError(f"head dim {dh} must be even for RoPE")
    if cos.shape != (length, dh // 2) or sin.shape != cos.shape:
        raise ValueError(f"cos/sin must be (L, Dh/2) = ({length}, {dh // 2}), got {tuple(cos.shape)}, {tuple(sin.shape)}")
    return b, length, dh, three_d // 3


def rope_qkv(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a QKV projection into heads and rotate q and k.

    Args:
        qkv: (B, L, 3 * D), the output of the fused QKV Linear (unit stride on the last axis).
        cos, sin: (L, Dh / 2) fp32 tables (`v2m.models.dit.rope_tables`).
        heads: H.

    Returns:
        q, k: (B, H, L, Dh) contiguous, rotated, in qkv's dtype; v: (B, H, L, Dh) strided view of qkv.
    """
    if not triton_available():
        raise RuntimeError("rope_qkv needs triton and a CUDA device (or TRITON_INTERPRET=1); "
                           "use rope_qkv_reference otherwise")
    b, length, dh, d = _check(qkv, cos, sin, heads)
    if qkv.stride(2) != 1:
        qkv = qkv.contiguous()
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    q = torch.empty((b, heads, length, dh), dtype=qkv.dtype, device=qkv.device)
    k = torch.empty_like(q)
    v = qkv.unflatten(2, (3, heads, dh))[:, :, 2].transpose(1, 2)  # (B, L, 3, H, Dh) -> (B, H, L, Dh)
    if b * length == 0:
        return q, k, v
    half = dh // 2
    block_p = triton.next_power_of_2(heads * half)
    rows = max(1, 2048 // block_p)  # about 2K pairs (4K q and k elements each) a program
    with on_device(qkv):
        _rope_qkv_kernel[(triton.cdiv(b * length, rows),)](
            qkv, cos, sin, q, k, b * length, length, heads, qkv.stride(0), qkv.stride(1), cos.stride(0),
            HALF=half, ROWS=rows, BLOCK_P=block_p, num_warps=4,
        )
    return q, k, v


def rope_qkv_reference(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's path: view (B, L, 3, H, Dh), permute, `apply_rope` on q and k."""
    from v2m.models.dit import apply_rope

    b, length, dh, _ = _check(qkv, cos, sin, heads)
    q, k, v = qkv.view(b, length, 3, heads, dh).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, L, Dh)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v
