"""Batched event curves in Triton: `v2m.core.curves.event_curve` for B videos at once.

The numpy function in `v2m.core.curves` is the ground truth; this module
computes the same curve for a padded batch of feature sequences on the GPU in
two kernel launches and no host sync between them:

1. `_curve_diff_kernel`, grid (B, cdiv(T_max, BLOCK_T)): the frame-to-frame
   cosine dissimilarity d of each video, into a [B, T_max] fp32 scratch. It
   reads the features once (plus a cached neighbour row per frame) and uses a
   cancellation-free form of 1 - cos, so a nearly still video, where std(d) is
   1e-5 and 1 / std(d) amplifies every error in d, still matches the float64
   reference to a few fp32 ulps.
2. `_curve_smooth_kernel`, grid (B, cdiv(L_max, BLOCK_L)): each program
   recomputes the mean and std of its row of d (two passes over T_b floats,
   tiny next to the features), then standardizes, resamples to the latent rate
   (linear interpolation when fps <= latent_rate, the anti-aliased mean over each
   latent frame's span when fps > latent_rate: `v2m.core.curves.resample`)
   and applies the Hann window (the reference's own weights, a cached [K] fp32
   tensor) over its block of output frames.

`event_curves_torch` is the same computation as a handful of plain PyTorch ops
(the baseline `bench/bench_event_curve.py` compares against) and
`event_curves_reference` loops the numpy reference over a batch (the one
reference tests and bench share).

Launching without torch (not implemented). The kernels take raw pointers,
int32 strides and one fp64 scalar, so they need nothing from PyTorch at run
time. Triton's ahead-of-time path (`python -m triton.tools.compile`, or
`triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))` as
`test_kernels_compile_for_sm90` does) turns each kernel into a cubin for fixed
constexprs (BLOCK_*, K), a fixed feature dtype and fixed alignment hints (the
16-byte divisibility of pointers, D and strides that makes the fp16 loads
vectorize; a variant without them serves odd D). A torch-free runtime would
ship those cubins in the bundle, keyed by compute capability, load them with
cuda-python (`cuModuleLoadData`, `cuModuleGetFunction`) and launch with
`cuLaunchKernel` on the stream that produced the features, allocating the
[B, T_max] scratch and the [K] Hann weights itself. On the TensorRT route
(10.8+), each kernel becomes a Quickly Deployable Plugin whose `@trtp.aot_impl`
returns the Triton-compiled PTX and its launch grid, d being the tensor between
the two plugin layers, so the curve runs inside the engine next to the encoder
that produces the features and no Python is left at run time (QDP AOT wants
inputs, then scalars, then outputs in the kernel signature, a reordering of
these arguments). The lean
runtime today uses the numpy reference whenever torch is absent, and importing
this module needs neither triton nor torch.
"""

import functools

import numpy as np

from v2m.core import curves as _curves

__all__ = [
    "triton_available",
    "event_curves",
    "event_curves_torch",
    "event_curves_reference",
]

from . import _triton
from ._triton import tl, triton


def triton_available() -> bool:
    """True when triton imports and can run: a CUDA device, or the CPU interpreter (see `_triton`)."""
    return triton is not None and _triton.triton_available()


if triton is not None:

    @triton.jit
    def _curve_diff_kernel(
        F_ptr,
        D_ptr,
        LEN_ptr,
        T_max,
        D_dim,
        f_batch_stride,
        f_row_stride,
        f_col_stride,
        d_batch_stride,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """d[b, i] = 1 - <a, c> / max(||a|| ||c||, 1e-8), a = f[b, i], c = f[b, i-1], for 1 <= i < T_b, else 0.

        F: [B, T_max, D] features (any float dtype, loaded and accumulated in fp32),
        D: [B, T_max] fp32 scratch, LEN: [B] frame counts T_b (clamped to T_max).
        One program covers BLOCK_T frames of one video and loops over the feature
        dimension in BLOCK_D chunks; the previous frame is re-read (it is the
        neighbouring row, so it comes from cache).

        Computed in an equal form, since for similar frames 1 - cos cancels in
        fp32 (an absolute error of ~1e-7 in d, which 1 / std(d) turns into percent
        errors in z for a nearly still video). With p = ||a||^2, q = ||c||^2,
        s = ||a - c||^2 and m = <a - c, a + c> = p - q, each summed directly,
            1 - cos = (s - (||a|| - ||c||)^2) / (2 ||a|| ||c||),  ||a|| - ||c|| = m / (||a|| + ||c||),
        which keeps d's relative error near fp32 epsilon. Below the 1e-8 floor it
        is 1 - <a, c> / 1e-8 with <a, c> = (p + q - s) / 2, as the reference.
        """
        pid_b = tl.program_id(0)
        pid_t = tl.program_id(1)
        n_frames = tl.minimum(tl.load(LEN_ptr + pid_b).to(tl.int32), T_max)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        valid = (offs_t >= 1) & (offs_t < n_frames)
        row_ptr = F_ptr + pid_b.to(tl.int64) * f_batch_stride
        cur_ptr = row_ptr + offs_t.to(tl.int64)[:, None] * f_row_stride  # (BLOCK_T, 1)
        prev_ptr = cur_ptr - f_row_stride
        # Per-lane partial sums, reduced over D once after the loop.
        sq_cur = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)  # p
        sq_prev = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)  # q
        sq_diff = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)  # s
        cross = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)  # m
        for d0 in range(0, D_dim, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask = valid[:, None] & (offs_d[None, :] < D_dim)  # (BLOCK_T, BLOCK_D)
            col = offs_d[None, :] * f_col_stride
            a = tl.load(cur_ptr + col, mask=mask, other=0.0).to(tl.float32)
            c = tl.load(prev_ptr + col, mask=mask, other=0.0).to(tl.float32)
            diff = a - c  # exact for fp16/bf16 inputs
            sq_cur += a * a
            sq_prev += c * c
            sq_diff += diff * diff
            cross += diff * (a + c)
        p = tl.sum(sq_cur, axis=1)
        q = tl.sum(sq_prev, axis=1)
        s = tl.sum(sq_diff, axis=1)
        m = tl.sum(cross, axis=1)
        # sqrt of each norm separately: ||a||^2 * ||c||^2 overflows fp32 for large features
        norm_a = tl.sqrt_rn(p)
        norm_c = tl.sqrt_rn(q)
        den = norm_a * norm_c
        gap = tl.div_rn(m, tl.maximum(norm_a + norm_c, 1e-30))  # ||a|| - ||c||
        stable = tl.div_rn(s - gap * gap, 2.0 * tl.maximum(den, 1e-8))
        floored = 1.0 - tl.div_rn((p + q - s) * 0.5, 1e-8)  # den < 1e-8: 1 - <a, c> / 1e-8
        d = tl.where(den >= 1e-8, stable, floored)
        d = tl.where(valid, d, 0.0)
        tl.store(D_ptr + pid_b.to(tl.int64) * d_batch_stride + offs_t, d, mask=offs_t < T_max)

    @triton.jit
    def _curve_smooth_kernel(
        D_ptr,
        W_ptr,
        OUT_ptr,
        LEN_ptr,
        OUT_LEN_ptr,
        T_max,
        L_max,
        d_batch_stride,
        out_batch_stride,
        src_per_dst: tl.float64,
        n_taps,
        std_floor,
        K: tl.constexpr,
        SPAN: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_L: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        """out[b, j] = sum_k w[k] * r(clamp(j + k - K // 2, 0, L_b - 1)) for j < L_b, else 0.

        z = (d - mean(d)) / max(std(d), std_floor) over the row's T_b frames (population
        std, z = 0 when that is < 1e-6), q = src_per_dst = fps / latent_rate. Without SPAN
        (q <= 1): r(m) = z linearly interpolated at source position p = m q (p in
        fp64, i0 = min(floor(p), T_b - 1), i1 = min(i0 + 1, T_b - 1)), which is
        numpy.interp of z (frame i at i / fps) at latent time m / latent_rate,
        clamped at both ends. With SPAN (q > 1, anti-aliased downsampling): r(m) =
        (1 / q) sum_i |[i, i + 1) & [m q, (m + 1) q)| z[min(i, T_b - 1)] over the
        n_taps = ceil(q) + 1 cells from floor(m q): the mean over latent frame m's
        span of the step curve holding z[i] on [i, i + 1), z[T_b - 1] after the end
        (overlaps in fp64). W: [K] fp32, the
        reference's own window (numpy.hanning(K) / sum, rounded once), since
        an in-kernel tl.cos may be an approximate instruction on GPU. The index
        clamp is the edge-replicate padding. Each program recomputes the row's
        mean and std in two passes over d (T_b floats, from cache).
        """
        pid_b = tl.program_id(0)
        pid_l = tl.program_id(1)
        n_frames = tl.maximum(tl.minimum(tl.load(LEN_ptr + pid_b).to(tl.int32), T_max), 0)
        n_out = tl.load(OUT_LEN_ptr + pid_b).to(tl.int32)
        d_row = D_ptr + pid_b.to(tl.int64) * d_batch_stride

        # Population mean and std of d[0:T_b], two passes (d is [T] fp32, cheap to re-read).
        count = tl.maximum(n_frames, 1).to(tl.float32)
        acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        for t0 in range(0, n_frames, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            acc += tl.load(d_row + offs_t, mask=offs_t < n_frames, other=0.0)
        mean = tl.div_rn(tl.sum(acc, axis=0), count)
        acc = tl.zeros([BLOCK_T], dtype=tl.float32)
        for t0 in range(0, n_frames, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            mask = offs_t < n_frames
            dev = tl.where(mask, tl.load(d_row + offs_t, mask=mask, other=0.0) - mean, 0.0)
            acc += dev * dev
        std = tl.maximum(tl.sqrt_rn(tl.div_rn(tl.sum(acc, axis=0), count)), std_floor)
        inv_std = tl.where(
            std >= 1e-6, tl.div_rn(1.0, tl.maximum(std, 1e-6)), 0.0
        )  # still video: flat

        # Resample + smooth: every (output j, tap k) pair reads its clamped latent index.
        offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_k = tl.arange(0, BLOCK_K)
        idx = offs_l[:, None] + offs_k[None, :] - K // 2  # (BLOCK_L, BLOCK_K)
        idx = tl.maximum(tl.minimum(idx, n_out - 1), 0)
        pos = idx.to(tl.float64) * src_per_dst  # fp64: p reaches thousands, frac must stay exact
        last = tl.maximum(n_frames - 1, 0)
        has = n_frames > 0
        if SPAN:
            lo = pos  # latent frame idx spans [lo, lo + q) in source samples
            hi = pos + src_per_dst
            first = pos.to(tl.int32)  # floor: pos >= 0
            acc = tl.zeros([BLOCK_L, BLOCK_K], dtype=tl.float32)
            for s in range(0, n_taps):
                cell = first + s
                start = tl.maximum(lo, cell.to(tl.float64))
                end = tl.minimum(hi, (cell + 1).to(tl.float64))
                w_cell = tl.maximum(end - start, 0.0).to(tl.float32)  # overlap of [cell, cell + 1)
                ic = tl.minimum(cell, last)  # past the end: z[T_b - 1] held
                zc = (tl.load(d_row + ic, mask=ic < n_frames, other=0.0) - mean) * inv_std
                acc += w_cell * zc
            r = (acc / src_per_dst).to(tl.float32)
        else:
            i0 = tl.minimum(pos.to(tl.int32), last)  # pos >= 0, so truncation is floor
            i1 = tl.minimum(i0 + 1, last)
            frac = (pos - i0.to(tl.float64)).to(tl.float32)  # past the end i0 == i1: frac unused
            z0 = (tl.load(d_row + i0, mask=i0 < n_frames, other=0.0) - mean) * inv_std
            z1 = (tl.load(d_row + i1, mask=i1 < n_frames, other=0.0) - mean) * inv_std
            r = z0 + (z1 - z0) * frac
        w = tl.load(W_ptr + offs_k, mask=offs_k < K, other=0.0)  # (BLOCK_K,)
        out = tl.sum(r * w[None, :], axis=1)  # (BLOCK_L,)
        out = tl.where((offs_l < n_out) & has, out, 0.0)
        tl.store(OUT_ptr + pid_b.to(tl.int64) * out_batch_stride + offs_l, out, mask=offs_l < L_max)


@functools.lru_cache(maxsize=16)
def _hann_weights(kernel: int, device):
    """The reference's normalized Hann window as an fp32 tensor on `device`, made once per (K, device)."""
    import torch

    return torch.tensor(_curves.hann_window(kernel), dtype=torch.float32, device=device)


def _span_taps(fps: float, latent_rate: float) -> int:
    """Source cells one latent frame's span can touch when downsampling: ceil(fps / latent_rate) + 1."""
    import math

    return math.ceil(float(fps) / float(latent_rate)) + 1


def _check_args(features, kernel: int, fps: float, latent_rate: float) -> None:
    if features.ndim != 3:
        raise ValueError(f"features must be [B, T, D], got shape {tuple(features.shape)}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"smoothing kernel must be a positive odd number, got {kernel}")
    if not (fps > 0 and latent_rate > 0):
        raise ValueError(f"fps and latent_rate must be positive, got {fps}, {latent_rate}")


def _lengths_on_device(features, lengths, out_lengths, max_length: int | None, dtype=None):
    """`lengths`, `out_lengths` ([B] each) moved to `features.device` (and `dtype`, if given),
    and L_max, the output's column count: `max_length`, else max(out_lengths).

    L_max is read on the host before any launch: the only sync, and none if max_length is given.
    """
    lengths = lengths.to(device=features.device, dtype=dtype)  # no-ops when already there
    out_lengths = out_lengths.to(device=features.device, dtype=dtype)
    if max_length is not None:
        l_max = int(max_length)
    else:
        l_max = int(out_lengths.max()) if out_lengths.numel() else 0
    return lengths, out_lengths, l_max


def event_curves(
    features,
    lengths,
    out_lengths,
    fps: float,
    latent_rate: float,
    kernel: int = 31,
    max_length: int | None = None,
    std_floor: float = 0.0,
):
    """Event curves of a padded batch of videos, two Triton launches.

    Args:
        features: [B, T_max, D] fp16/bf16/fp32 tensor, frame i of video b at time
            i / fps; rows past lengths[b] are ignored (any values).
        lengths: [B] int tensor, real frame count T_b of each video.
        out_lengths: [B] int tensor, latent length L_b of each video's curve.
        fps: rate at which the features were sampled.
        latent_rate: latent frames per second.
        kernel: odd Hann window length.
        max_length: columns of the output; default max(out_lengths) (one host read).
        std_floor: the least std the standardization divides by (`v2m.core.curves`, convention 2).

    Returns:
        fp32 [B, L_max] tensor on the features' device; row b equals
        `v2m.core.curves.event_curve(features[b, :T_b], L_b, ...)`, zeros past L_b.
    """
    if triton is None:
        raise RuntimeError(
            "v2m.kernels.event_curve.event_curves needs triton; install it or use "
            "event_curves_torch / v2m.core.curves.event_curve"
        )
    import torch

    _check_args(features, kernel, fps, latent_rate)
    if not features.is_floating_point():
        raise TypeError(f"features must be a float tensor, got {features.dtype}")
    device = features.device
    batch, t_max, dim = features.shape
    # dtypes kept: the kernels read any int dtype
    lengths, out_lengths, l_max = _lengths_on_device(features, lengths, out_lengths, max_length)
    out = torch.empty((batch, l_max), dtype=torch.float32, device=device)
    if batch == 0 or l_max == 0:
        return out
    if t_max == 0:
        return out.zero_()  # no frames anywhere: every curve is flat (the reference's rule)
    scratch = torch.empty((batch, t_max), dtype=torch.float32, device=device)

    block_t = 16
    block_d = min(128, triton.next_power_of_2(max(dim, 1)))  # D = 0 is legal: every d is 1
    _curve_diff_kernel[(batch, triton.cdiv(t_max, block_t))](
        features,
        scratch,
        lengths,
        t_max,
        dim,
        features.stride(0),
        features.stride(1),
        features.stride(2),
        scratch.stride(0),
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        num_warps=4,
    )
    block_k = triton.next_power_of_2(kernel)
    block_l = max(16, 2048 // block_k)  # a (BLOCK_L, BLOCK_K) tile of about 2k taps
    _curve_smooth_kernel[(batch, triton.cdiv(l_max, block_l))](
        scratch,
        _hann_weights(kernel, device),
        out,
        lengths,
        out_lengths,
        t_max,
        l_max,
        scratch.stride(0),
        out.stride(0),
        float(fps) / float(latent_rate),
        _span_taps(fps, latent_rate),
        float(std_floor),
        K=kernel,
        SPAN=float(fps) > float(latent_rate),
        BLOCK_T=1024,
        BLOCK_L=block_l,
        BLOCK_K=block_k,
        num_warps=4,
    )
    return out


def event_curves_torch(
    features,
    lengths,
    out_lengths,
    fps: float,
    latent_rate: float,
    kernel: int = 31,
    max_length: int | None = None,
    std_floor: float = 0.0,
):
    """The same batched curves as `event_curves`, in plain PyTorch ops (fp32 math, any device).

    Args and returns as `event_curves`.
    """
    import torch
    import torch.nn.functional as F

    _check_args(features, kernel, fps, latent_rate)
    device = features.device
    batch, t_max, _ = features.shape
    lengths, out_lengths, l_max = _lengths_on_device(features, lengths, out_lengths, max_length, torch.long)
    lengths = lengths.clamp(0, t_max)
    if batch == 0 or l_max == 0 or t_max == 0:
        return torch.zeros((batch, l_max), dtype=torch.float32, device=device)

    frame = torch.arange(t_max, device=device)
    valid = frame[None, :] < lengths[:, None]  # (B, T)
    f = torch.where(valid[..., None], features.float(), 0.0)  # padding may hold anything
    # 1 - cos without cancellation, as in `_curve_diff_kernel`: s = ||a - c||^2,
    # m = <a - c, a + c>, 1 - cos = (s - (m / (||a|| + ||c||))^2) / (2 ||a|| ||c||).
    a, c = f[:, 1:], f[:, :-1]  # (B, T-1, D): frame i and frame i - 1
    diff = a - c
    s = diff.square().sum(-1)  # (B, T-1)
    m = (diff * (a + c)).sum(-1)
    sq = f.square().sum(-1)  # (B, T)
    p, q = sq[:, 1:], sq[:, :-1]
    norm_a, norm_c = p.sqrt(), q.sqrt()
    den = norm_a * norm_c
    gap = m / (norm_a + norm_c).clamp_min(1e-30)
    stable = (s - gap.square()) / (2.0 * den.clamp_min(_curves.COS_EPS))
    floored = 1.0 - 0.5 * (p + q - s) / _curves.COS_EPS  # below the floor: 1 - <a, c> / 1e-8
    d = F.pad(torch.where(den >= _curves.COS_EPS, stable, floored), (1, 0))  # (B, T), d[:, 0] = 0
    d = torch.where(valid, d, 0.0)

    count = lengths.clamp_min(1).float()[:, None]  # (B, 1)
    mean = d.sum(1, keepdim=True) / count
    std = (torch.where(valid, d - mean, 0.0).square().sum(1, keepdim=True) / count).sqrt().clamp_min(float(std_floor))
    inv_std = torch.where(std >= _curves.STD_EPS, 1.0 / std.clamp_min(_curves.STD_EPS), 0.0)
    z = (d - mean) * inv_std  # (B, T)

    # Resample at the latent indices the window touches: 0 .. L_max + K//2 - 1, each
    # clamped to L_b - 1 (right edge replicate); the left edge is replicated by F.pad.
    pad = kernel // 2
    idx = torch.arange(l_max + pad, device=device)
    idx = torch.minimum(idx[None, :], (out_lengths[:, None] - 1).clamp_min(0))  # (B, L + pad)
    q = float(fps) / float(latent_rate)
    pos = idx.double() * q
    last = (lengths - 1).clamp_min(0)[:, None]
    if q > 1.0:  # anti-aliased: the mean of the step curve over each latent frame's span
        taps = pos.floor().long()[..., None] + torch.arange(_span_taps(fps, latent_rate), device=device)  # (B, L + pad, n)
        w = (torch.minimum(pos[..., None] + q, (taps + 1).double()) - torch.maximum(pos[..., None], taps.double()))
        cells = torch.minimum(taps, last[..., None]).reshape(batch, -1)  # past the end: z[T_b - 1]
        zc = z.gather(1, cells).reshape(taps.shape)
        r = (w.clamp_min(0.0).float() * zc).sum(-1) / q  # (B, L + pad)
    else:
        i0 = torch.minimum(pos.long(), last)
        i1 = torch.minimum(i0 + 1, last)
        frac = (pos - i0.double()).float()
        z0, z1 = z.gather(1, i0), z.gather(1, i1)
        r = z0 + (z1 - z0) * frac  # (B, L + pad)

    w = _hann_weights(kernel, device)
    r = F.pad(r[:, None, :], (pad, 0), mode="replicate")  # (B, 1, L + 2 pad)
    out = F.conv1d(r, w.view(1, 1, -1))[:, 0]  # (B, L)
    keep = (torch.arange(l_max, device=device)[None, :] < out_lengths[:, None]) & (
        lengths[:, None] > 0
    )
    return torch.where(keep, out, 0.0)


def _to_numpy(x, dtype) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; via float64 so bf16 converts too
        x = x.detach().cpu()
        x = x.double() if x.is_floating_point() else x.long()
        return x.numpy().astype(dtype, copy=False)
    return np.asarray(x, dtype=dtype)


def event_curves_reference(
    features,
    lengths,
    out_lengths,
    fps: float,
    latent_rate: float,
    kernel: int = 31,
    max_length: int | None = None,
    std_floor: float = 0.0,
) -> np.ndarray:
    """`v2m.core.curves.event_curve` looped over a batch (features cast to float64).

    Args and layout as `event_curves` (tensors or arrays); returns float32 [B, L_max].
    """
    f = _to_numpy(features, np.float64)
    lens = _to_numpy(lengths, np.int64)
    out_lens = _to_numpy(out_lengths, np.int64)
    l_max = int(max_length) if max_length is not None else int(out_lens.max(initial=0))
    out = np.zeros((f.shape[0], l_max), dtype=np.float32)
    for b in range(f.shape[0]):
        n_out = int(out_lens[b])
        if n_out < 1:
            continue
        curve = _curves.event_curve(f[b, : int(lens[b])], n_out, fps, latent_rate, kernel, std_floor=std_floor)
        out[b, : min(n_out, l_max)] = curve[:l_max]
    return out
