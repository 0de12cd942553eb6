"""RoPE on the fused QKV projection against the model's own path (`rope_qkv_reference`).

Both rotate in fp32 from the same fp32 tables and round once; fp32 differs only by
FMA contraction, fp16 by one output rounding, bf16 by the interpreter's truncating cast.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from v2m.kernels import rope  # noqa: E402
from v2m.models.dit import rope_tables  # noqa: E402

TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}
# (B, L, H, Dh): odd lengths, odd head counts, a head dim that is not a power of two, the full preset's heads
SHAPES = [(1, 1, 1, 2), (2, 37, 5, 18), (1, 394, 16, 128), (3, 13, 3, 66)]


@pytest.mark.parametrize("dtype", list(TOL), ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference(device, assert_close, shape, dtype):
    b, n, h, dh = shape
    g = torch.Generator().manual_seed(sum(shape))
    qkv = (torch.randn(b, n, 3 * h * dh, generator=g) * 2).to(dtype).to(device)
    cos, sin = rope_tables(n, dh, 10000.0, device)
    q, k, v = rope.rope_qkv(qkv, cos, sin, h)
    q_ref, k_ref, v_ref = rope.rope_qkv_reference(qkv, cos, sin, h)
    assert q.shape == k.shape == v.shape == (b, h, n, dh)
    assert q.is_contiguous() and k.is_contiguous() and q.dtype == dtype
    assert torch.equal(v, v_ref)
    assert_close(q, q_ref, *TOL[dtype], "q")
    assert_close(k, k_ref, *TOL[dtype], "k")


def test_strided_projection(device, assert_close):
    """A (B, L, 3D) view with a padded row stride is read in place."""
    b, n, h, dh = 2, 9, 4, 8
    big = torch.randn(b, n, 3 * h * dh + 7, device=device)
    qkv = big[:, :, : 3 * h * dh]
    cos, sin = rope_tables(n, dh, 10000.0, device)
    for got, ref, name in zip(rope.rope_qkv(qkv, cos, sin, h), rope.rope_qkv_reference(qkv, cos, sin, h), "qkv"):
        assert_close(got, ref, *TOL[torch.float32], name)


def test_bad_shapes(device):
    cos, sin = rope_tables(5, 8, 10000.0, device)
    with pytest.raises(ValueError, match="divisible"):
        rope.rope_qkv(torch.zeros(1, 5, 25, device=device), cos, sin, 2)
    with pytest.raises(ValueError, match=r"cos/sin"):
        rope.rope_qkv(torch.zeros(1, 6, 48, device=device), cos, sin, 2)
