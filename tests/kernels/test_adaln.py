"""Fused gated residual + LayerNorm + adaLN modulate against its plain-PyTorch reference.

`add_norm_modulate_reference` (the one `bench/bench_fused.py` imports too) does the
math in fp32 and rounds once, as the kernel does; the tolerances cover fp32
reduction order (fp32) and one rounding of the output (fp16: 2^-11 relative,
bf16: 2^-8; the interpreter's bf16 cast truncates, so bf16 gets two ulps).
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from v2m.kernels import adaln  # noqa: E402

TOL = {  # (atol, rtol) on the outputs, whose magnitude is a few units
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}

# (B, L, D): odd sizes, a row longer than any power of two below it, one row, the full width
SHAPES = [(1, 1, 8), (2, 37, 781), (3, 5, 1823), (1, 3, 2048)]
VARIANTS = {  # which of y, gate, affine, modulate each call site of the DiT uses
    "norm1_first_block": dict(y=False, gate=False, affine=False, modulate=True),
    "gated_residual_modulate": dict(y=True, gate=True, affine=False, modulate=True),
    "residual_affine_norm": dict(y=True, gate=True, affine=True, modulate=False),
    "ungated_residual_modulate": dict(y=True, gate=False, affine=False, modulate=True),
    "everything": dict(y=True, gate=True, affine=True, modulate=True),
}


def _inputs(shape, dtype, device, variant, seed=0, expanded=False):
    g = torch.Generator().manual_seed(seed)
    b, n, d = shape
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(dtype).to(device)
    per_batch = (lambda: r(1, d, scale=0.5).expand(b, d)) if expanded else (lambda: r(b, d, scale=0.5))
    h = r(b, n, d, scale=3.0) + 1.5  # an offset mean, as a residual stream has
    return dict(
        h=h,
        y=r(b, n, d) if variant["y"] else None,
        gate=per_batch() if variant["gate"] else None,
        weight=r(d) if variant["affine"] else None,
        bias=r(d) if variant["affine"] else None,
        shift=per_batch() if variant["modulate"] else None,
        scale=per_batch() if variant["modulate"] else None,
    )


@pytest.mark.parametrize("dtype", list(TOL), ids=lambda t: str(t).split(".")[-1])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", list(VARIANTS))
def test_matches_reference(device, assert_close, name, shape, dtype):
    kw = _inputs(shape, dtype, device, VARIANTS[name])
    h_out, n = adaln.add_norm_modulate(**kw, eps=1e-6)
    h_ref, n_ref = adaln.add_norm_modulate_reference(**kw, eps=1e-6)
    atol, rtol = TOL[dtype]
    assert n.dtype == dtype and h_out.dtype == dtype
    assert_close(h_out, h_ref, atol, rtol, f"{name} h'")
    if dtype != torch.bfloat16 or not VARIANTS[name]["y"]:
        assert_close(n, n_ref, atol, rtol, f"{name} n")
    # The norm of the kernel's own h': isolates the norm from a one-ulp difference in h'
    # (which LayerNorm amplifies by 1 / std) when the two round h' differently.
    mods = {k: kw[k] for k in ("weight", "bias", "shift", "scale")}
    _, n_own = adaln.add_norm_modulate_reference(h_out, None, None, **mods, eps=1e-6)
    assert_close(n, n_own, atol / 2, rtol / 2, f"{name} n of the kernel's h'")
    if not VARIANTS[name]["y"]:
        assert h_out is kw["h"]


def test_expanded_modulations_and_in_place(device, assert_close):
    """The sampler's case: modulations expanded over the CFG batch (stride 0), residual updated in place."""
    kw = _inputs((4, 19, 96), torch.float16, device, VARIANTS["everything"], expanded=True)
    assert kw["shift"].stride(0) == 0
    h_ref, n_ref = adaln.add_norm_modulate_reference(**kw, eps=1e-5)
    h = kw.pop("h")
    h_out, n = adaln.add_norm_modulate(h, **kw, eps=1e-5, out_h=h)
    assert h_out.data_ptr() == h.data_ptr()
    assert_close(h, h_ref, *TOL[torch.float16], "in-place h")
    assert_close(n, n_ref, *TOL[torch.float16], "n")


def test_matches_the_model_block_math(device, assert_close):
    """The reference is the DiT's own LayerNorm + modulate, up to one rounding."""
    from v2m.models.dit import modulate

    kw = _inputs((2, 11, 64), torch.float32, device, VARIANTS["gated_residual_modulate"])
    h_model = kw["h"] + kw["gate"][:, None, :] * kw["y"]
    ln = torch.nn.functional.layer_norm(h_model, (64,), eps=1e-6)
    n_model = modulate(ln, kw["shift"], kw["scale"])
    h_out, n = adaln.add_norm_modulate(**kw, eps=1e-6)
    assert_close(h_out, h_model, 1e-5, 1e-5, "h'")
    assert_close(n, n_model, 1e-5, 1e-5, "n")


def test_non_contiguous_rows(device, assert_close):
    """A sliced (B, L, D) view is accepted (copied when its rows are not evenly spaced)."""
    kw = _inputs((2, 16, 50), torch.float32, device, VARIANTS["gated_residual_modulate"])
    kw["h"] = kw["h"][:, ::2]
    kw["y"] = kw["y"][:, ::2]
    h_out, n = adaln.add_norm_modulate(**kw, eps=1e-6)
    h_ref, n_ref = adaln.add_norm_modulate_reference(**kw, eps=1e-6)
    assert_close(h_out, h_ref, *TOL[torch.float32], "h'")
    assert_close(n, n_ref, *TOL[torch.float32], "n")


def test_bad_arguments(device):
    kw = _inputs((2, 3, 8), torch.float32, device, VARIANTS["everything"])
    with pytest.raises(ValueError, match="both or neither"):
        adaln.add_norm_modulate(kw["h"], kw["y"], None, kw["weight"], None, None, None, 1e-6)
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        adaln.add_norm_modulate(kw["h"], kw["y"], kw["gate"][:1], None, None, None, None, 1e-6)
    with pytest.raises(ValueError, match="must match"):
        adaln.add_norm_modulate(kw["h"], kw["y"][:, :2], None, None, None, None, None, 1e-6)


def test_without_triton(monkeypatch):
    monkeypatch.setattr(adaln, "triton_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs triton"):
        adaln.add_norm_modulate(torch.zeros(1, 1, 4), None, None, None, None, None, None, 1e-6)
