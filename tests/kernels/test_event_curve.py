"""The batched event-curve kernel (and its plain-torch twin) against the numpy reference.

Every expected value comes from `event_curves_reference`, the batch loop over
`v2m.core.curves.event_curve` that `bench/bench_event_curve.py` imports too.
The reference is given the same rounded input as the kernel (fp16/bf16 features
cast to float64), so the tolerances only cover fp32 accumulation.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from v2m.core import curves  # noqa: E402
from v2m.kernels import event_curve as ec  # noqa: E402

FPS = 24.0
LATENT_RATE = 44100 / 3584

# (atol, rtol) per input dtype. Curves are z-scores, |z| up to about 5. The error
# is fp32 rounding in the sums over D (the cosine is computed without cancellation,
# so d keeps a relative error near 1e-7 even for a nearly still video), in mean
# and std, and in the interpolation and 31-tap window: measured worst case under
# the interpreter is 1.4e-6 (|z| = 4.6, std(d) = 6e-6), i.e. a few fp32 ulps of z.
# atol 5e-6 + rtol 5e-6 * |z| leaves 5x to 20x for GPU reduction orders. fp16 and
# bf16 get the same pair: the reference sees the same rounded input, and their
# products and differences are exact in fp32, so low precision adds no error.
TOL = {
    torch.float32: (5e-6, 5e-6),
    torch.float16: (5e-6, 5e-6),
    torch.bfloat16: (5e-6, 5e-6),
}


def assert_curves_close(actual, expected, atol: float, rtol: float, what: str = "") -> None:
    """np.allclose with a report: how many elements differ, the worst one, both values."""
    a = actual.detach().float().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
    e = np.asarray(expected, dtype=np.float32)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    assert np.isfinite(a).all(), f"{what}: {np.count_nonzero(~np.isfinite(a))} non-finite values"
    err = np.abs(a.astype(np.float64) - e)
    bad = err > atol + rtol * np.abs(e)
    if bad.any():
        excess = err - (atol + rtol * np.abs(e))
        worst = np.unravel_index(np.argmax(excess), e.shape)
        raise AssertionError(
            f"{what}: {np.count_nonzero(bad)} / {e.size} elements differ beyond "
            f"atol={atol:g} rtol={rtol:g}; worst at {tuple(int(i) for i in worst)}: "
            f"got {a[worst]!r}, expected {e[worst]!r} (|diff| {err[worst]:.3g}); "
            f"max |diff| overall {err.max():.3g}"
        )


def video_features(t: int, d: int, seed: int = 0) -> np.ndarray:
    """[T, D] float64 features that look like a video: a slow random walk with a few cuts."""
    rng = np.random.default_rng(seed)
    f = np.empty((t, d))
    cuts = set(rng.integers(1, max(t, 2), size=max(1, t // 100)).tolist())
    cur = rng.standard_normal(d)
    for i in range(t):
        cur = rng.standard_normal(d) if i in cuts else cur + 0.15 * rng.standard_normal(d)
        f[i] = cur
    return f


def latent_len(t: int, fps: float = FPS) -> int:
    return max(1, int(np.ceil(t / fps * LATENT_RATE)))


def batch(feats: list[np.ndarray], dtype=torch.float32, pad_value: float = 0.0):
    """Pad [T_b, D] arrays into a [B, T_max, D] tensor, padding filled with pad_value."""
    t_max = max(f.shape[0] for f in feats)
    out = torch.full((len(feats), t_max, feats[0].shape[1]), pad_value, dtype=dtype)
    for b, f in enumerate(feats):
        out[b, : f.shape[0]] = torch.from_numpy(f).to(dtype)
    return out, torch.tensor([f.shape[0] for f in feats])


def check(features, lengths, out_lengths, device, kernel=31, fps=FPS, max_length=None, what="", std_floor=0.0):
    """Kernel and torch twin vs the reference on the same (rounded) input."""
    atol, rtol = TOL[features.dtype]
    out_lengths = torch.as_tensor(out_lengths)
    expected = ec.event_curves_reference(
        features, lengths, out_lengths, fps, LATENT_RATE, kernel, max_length=max_length, std_floor=std_floor
    )
    args = (
        features.to(device),
        lengths.to(device),
        out_lengths.to(device),
        fps,
        LATENT_RATE,
        kernel,
    )
    got = ec.event_curves(*args, max_length=max_length, std_floor=std_floor)
    assert got.dtype == torch.float32 and got.device.type == torch.device(device).type
    assert_curves_close(got, expected, atol, rtol, f"triton {what}")
    assert_curves_close(
        ec.event_curves_torch(*args, max_length=max_length, std_floor=std_floor), expected, atol, rtol, f"torch {what}"
    )
    return got, expected


# The full T x D cross product: about 10 s under the interpreter on 2 CPU cores.
SHAPES = [(t, d) for t in (1, 2, 7, 394, 1001) for d in (1, 33, 384, 1536)]


@pytest.mark.parametrize("t,d", SHAPES, ids=[f"T{t}-D{d}" for t, d in SHAPES])
def test_matches_reference(t, d, device):
    features, lengths = batch([video_features(t, d, seed=t * 7 + d)])
    check(features, lengths, [latent_len(t)], device, what=f"T={t} D={d}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_dtypes(dtype, device):
    features, lengths = batch(
        [video_features(300, 96, seed=3), video_features(170, 96, seed=4)], dtype
    )
    check(features, lengths, [latent_len(300), latent_len(170)], device, what=str(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_ragged_batch_ignores_padding(dtype, device):
    """Different T_b and L_b in one batch; padded frames hold NaN, which must not leak."""
    lens = [130, 7, 1, 0, 61]
    feats = [video_features(max(t, 1), 48, seed=10 + i)[:t] for i, t in enumerate(lens)]
    features, lengths = batch(feats, dtype, pad_value=float("nan"))
    out_lengths = [latent_len(130), 40, 3, 5, 9]  # row 1: L > T, row 4: L < T
    got, expected = check(features, lengths, out_lengths, device, what="ragged")
    assert (got[3] == 0).all(), "a video with no frames gives a zero curve"
    for b, n in enumerate(out_lengths):
        assert (got[b, n:] == 0).all(), f"row {b}: nonzero past its length {n}"
    # Each row equals the curve of that video alone.
    single, single_len = batch([feats[0]], dtype)
    alone = ec.event_curves(
        single.to(device),
        single_len.to(device),
        torch.tensor([out_lengths[0]], device=device),
        FPS,
        LATENT_RATE,
    )
    assert_curves_close(
        got[0, : out_lengths[0]], alone[0].cpu().numpy(), 1e-6, 0.0, "batched vs alone"
    )


def test_constant_features_give_zeros(device):
    features = torch.full((2, 50, 40), 3.5)
    out = ec.event_curves(
        features.to(device),
        torch.tensor([50, 20], device=device),
        torch.tensor([26, 11], device=device),
        FPS,
        LATENT_RATE,
    )
    assert (out.cpu() == 0).all()
    check(features, torch.tensor([50, 20]), [26, 11], device, what="constant")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_large_magnitudes(dtype, device):
    """1e4-scale features (peak 3e4, still finite in fp16): squared norms far past fp16 range."""
    f = video_features(200, 128, seed=5)
    features, lengths = batch([f / np.abs(f).max() * 3e4], dtype)
    assert torch.isfinite(features).all() and features.abs().max() > 1e4
    check(features, lengths, [latent_len(200)], device, what="1e4 scale")


def test_zero_vectors(device):
    """Zero frames hit the 1e-8 floor of the cosine denominator: d = 1, not NaN."""
    f = video_features(90, 64, seed=6)
    f[[0, 10, 11, 40, 89]] = 0.0
    features, lengths = batch([f])
    check(features, lengths, [latent_len(90)], device, what="zero vectors")


def still_video(t: int, d: int, motion: float, seed: int = 1) -> np.ndarray:
    """A fixed frame plus a small random walk: d ~ motion^2, std(d) ~ 0.06 * motion^2."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(d) + motion * np.cumsum(rng.standard_normal((t, d)), axis=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("motion", [0.03, 0.006], ids=lambda m: f"motion{m}")
def test_nearly_still_video(motion, dtype, device):
    """std(d) of 6e-5 and 2e-6: the naive fp32 1 - dot / den would be off by 1e-2 to 1e-1 here."""
    features, lengths = batch([still_video(200, 256, motion)], dtype)
    d = curves.dissimilarity(features[0].double().numpy())
    assert 1e-6 < d.std() < 1e-4
    got, _ = check(features, lengths, [latent_len(200)], device, what=f"motion {motion}")
    assert got.abs().max() > 1.0  # a real curve, not the flat one


def test_below_std_floor_is_flat(device):
    """std(d) = 3e-7 < 1e-6: the reference's still-video rule gives an all-zero curve."""
    features, lengths = batch([still_video(200, 256, 0.002)])
    assert curves.dissimilarity(features[0].double().numpy()).std() < 5e-7
    got, _ = check(features, lengths, [latent_len(200)], device, what="below floor")
    assert (got.cpu() == 0).all()


def test_std_floor(device):
    """Convention 2 (a bundle's curve.std_floor) on a ragged batch: a nearly still row under the
    floor and a row with cuts above it, odd shapes."""
    still, cuts = still_video(211, 33, 0.03), video_features(137, 33, seed=5)
    features, lengths = batch([still, cuts])
    floor = 0.005
    assert curves.dissimilarity(still).std() < floor < curves.dissimilarity(cuts).std()
    got, _ = check(features, lengths, [latent_len(211), latent_len(137)], device, std_floor=floor, what="floor")
    unfloored, _ = check(features, lengths, [latent_len(211), latent_len(137)], device, what="no floor")
    assert got[0].abs().max() < 0.1 < unfloored[0].abs().max()  # no events from noise
    assert_curves_close(got[1], unfloored[1].cpu().numpy(), 0.0, 0.0, "above the floor: unchanged")


@pytest.mark.parametrize("shape", [(2, 5, 0), (2, 0, 4), (0, 3, 4)], ids=["D0", "T0", "B0"])
def test_degenerate_shapes(shape, device):
    """D = 0 (every d is 1: zero vectors), T = 0 (flat curves), B = 0 (empty output)."""
    features = torch.zeros(shape)
    lengths = torch.full((shape[0],), shape[1])
    check(features, lengths, [6] * shape[0], device, max_length=6, what=f"shape {shape}")


@pytest.mark.parametrize("kernel", [1, 5, 31])
def test_kernel_sizes(kernel, device):
    features, lengths = batch([video_features(150, 40, seed=7), video_features(23, 40, seed=8)])
    check(features, lengths, [latent_len(150), 3], device, kernel=kernel, what=f"K={kernel}")


@pytest.mark.parametrize("out_len", [1, 17, 80, 400], ids=lambda n: f"L{n}")
def test_out_length_vs_frames(out_len, device):
    """L much smaller than, close to and larger than T (= 80 frames)."""
    features, lengths = batch([video_features(80, 32, seed=9)])
    check(features, lengths, [out_len], device, what=f"L={out_len}")


def test_odd_fps(device):
    features, lengths = batch([video_features(299, 32, seed=11)])
    check(features, lengths, [latent_len(299, 29.97)], device, fps=29.97, what="fps 29.97")


# fps above the latent rate takes the anti-aliased span mean (every FPS = 24 test above
# does too); at or below it, linear interpolation. Both sides, the boundary, and ratios
# whose spans start exactly on a sample (2x) or cover many samples (60 fps, 8 taps).
@pytest.mark.parametrize("fps", [8.0, LATENT_RATE, 12.31, 2 * LATENT_RATE, 60.0], ids=lambda f: f"fps{f:.2f}")
def test_resample_rules(fps, device):
    features, lengths = batch([video_features(150, 24, seed=16), video_features(41, 24, seed=17)])
    out_lengths = [latent_len(150, fps), latent_len(41, fps) + 9]  # row 1 runs past its last sample
    check(features, lengths, out_lengths, device, fps=fps, what=f"fps {fps}")


@pytest.mark.parametrize("max_length", [5, 60])
def test_max_length(max_length, device):
    """max_length fixes the width: shorter truncates rows, longer pads with zeros."""
    features, lengths = batch([video_features(70, 16, seed=12), video_features(30, 16, seed=13)])
    got, _ = check(features, lengths, [37, 16], device, max_length=max_length, what="max_length")
    assert got.shape == (2, max_length)


def test_strided_features(device):
    """A non-contiguous view (every other channel) is read through its strides."""
    full, lengths = batch([video_features(60, 64, seed=14)])
    features = full[:, :, ::2]
    assert not features.is_contiguous()
    check(features, lengths, [latent_len(60)], device, what="strided")


def test_runtime_call_convention(device):
    """What runtime/pipeline.py does: features[None], int64 length tensors, out[0, :length]."""
    f = torch.from_numpy(video_features(120, 24, seed=15)).float().to(device)
    length = latent_len(120)
    t = torch.tensor([f.shape[0]], device=device)
    out = ec.event_curves(f[None], t, torch.tensor([length], device=device), FPS, LATENT_RATE, 31)
    expected = curves.event_curve(f.cpu().numpy(), length, FPS, LATENT_RATE, 31)
    assert_curves_close(out[0, :length], expected, *TOL[torch.float32], "runtime convention")


def test_invalid_arguments(device):
    features = torch.zeros(1, 4, 3, device=device)
    lens = torch.tensor([4], device=device)
    for fn in (ec.event_curves, ec.event_curves_torch):
        with pytest.raises(ValueError, match="odd"):
            fn(features, lens, lens, FPS, LATENT_RATE, 4)
        with pytest.raises(ValueError, match=r"\[B, T, D\]"):
            fn(features[0], lens, lens, FPS, LATENT_RATE)


def test_without_triton(monkeypatch):
    """Installs without triton: the module imports, reports unavailable, raises clearly."""
    monkeypatch.setattr(ec, "triton", None)
    assert not ec.triton_available()
    with pytest.raises(RuntimeError, match="needs triton"):
        ec.event_curves(
            torch.zeros(1, 2, 3), torch.tensor([2]), torch.tensor([2]), FPS, LATENT_RATE
        )


# Lowers both kernels to a cubin for sm_90 (fp16 features, the strides the launcher
# passes, 16-byte alignment hints as the JIT would give them) and checks the feature
# loads vectorize. No GPU needed, only the ptxas that ships with triton; it must run
# in a fresh interpreter because TRITON_INTERPRET replaces triton.jit process-wide.
_SM90_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from v2m.kernels import event_curve as ec

target = GPUTarget("cuda", 90, 32)
aligned = [["tt.divisibility", 16]]
diff_sig = {"F_ptr": "*fp16", "D_ptr": "*fp32", "LEN_ptr": "*i64", "T_max": "i32",
            "D_dim": "i32", "f_batch_stride": "i32", "f_row_stride": "i32",
            "f_col_stride": "i32", "d_batch_stride": "i32",
            "BLOCK_T": "constexpr", "BLOCK_D": "constexpr"}
diff = triton.compile(ASTSource(
    fn=ec._curve_diff_kernel, signature=diff_sig,
    constexprs={"f_col_stride": 1, "BLOCK_T": 16, "BLOCK_D": 128},
    attrs={(i,): aligned for i in (0, 1, 4, 5, 6, 8)}), target=target, options={"num_warps": 4})
smooth_sig = {"D_ptr": "*fp32", "W_ptr": "*fp32", "OUT_ptr": "*fp32", "LEN_ptr": "*i64",
              "OUT_LEN_ptr": "*i64", "T_max": "i32", "L_max": "i32", "d_batch_stride": "i32",
              "out_batch_stride": "i32", "src_per_dst": "fp64", "n_taps": "i32", "std_floor": "fp32", "K": "constexpr",
              "SPAN": "constexpr", "BLOCK_T": "constexpr", "BLOCK_L": "constexpr", "BLOCK_K": "constexpr"}
for span in (False, True):  # linear interpolation (fps <= latent rate) and the span mean
    smooth = triton.compile(ASTSource(
        fn=ec._curve_smooth_kernel, signature=smooth_sig,
        constexprs={"K": 31, "SPAN": span, "BLOCK_T": 1024, "BLOCK_L": 64, "BLOCK_K": 32}),
        target=target, options={"num_warps": 4})
    assert smooth.asm["cubin"]
assert diff.asm["cubin"]
assert "ld.global.v4" in diff.asm["ptx"], "fp16 feature loads did not vectorize"
print("ok")
"""


def test_kernels_compile_for_sm90():
    """The compiled (not interpreted) path: both kernels lower to Hopper cubins."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("triton's bundled ptxas is missing")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence the 3.9 default-change warning
    proc = subprocess.run(
        [sys.executable, "-c", _SM90_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-4000:]
