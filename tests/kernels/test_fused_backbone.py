"""The fast sampler with fused Triton kernels (`FastConfig(kernels="triton")`) against the eager model.

Runs where the kernel tests run: CUDA, or the Triton interpreter on CPU (set by
this folder's conftest before triton is imported), so CI checks the fused
backbone end to end on the tiny preset.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from sampler_oracle import CASE_IDS, CASES, case_inputs, oracle_sample, rel_err  # noqa: E402

from v2m.core.errors import BackendUnavailable  # noqa: E402
from v2m.models.dit import PRESETS, DiT  # noqa: E402
from v2m.runtime import sampler  # noqa: E402
from v2m.runtime.backends.torch_fast import FastConfig, FastSampler  # noqa: E402
from v2m.runtime.backends.torch_fused import triton_backbone  # noqa: E402


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    model = DiT(PRESETS["tiny"]).init_weights(torch.Generator().manual_seed(0)).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine, so the cross-attention norm is checked
        for blk in model.blocks:
            blk.norm2.weight.uniform_(0.5, 1.5)
            blk.norm2.bias.normal_(0.0, 0.1)
    return model


def _inputs(cfg, b, length, s, seed=0):
    rng = np.random.default_rng(seed)
    noise = sampler.initial_noise(seed, (b, cfg.latent_channels, length))
    curve = rng.random((b, 1, length), dtype=np.float32)
    text = rng.standard_normal((b, s, cfg.text_dim), dtype=np.float32)
    mask = np.ones((b, s), dtype=np.float32)
    mask[:, s // 2 :] = 0
    return noise, sampler.Conditioning(curve, text, mask)


def _plan(steps, **kw):
    return sampler.Plan.make(sampler.SamplerOptions(steps=steps, cfg_scale=4.5, **kw))


@pytest.mark.parametrize("b,length", [(1, 37), (2, 62)])
def test_backbone_matches_model(device, assert_close, dit, b, length):
    model = dit.to(device)
    g = torch.Generator().manual_seed(length)
    x = torch.randn(b, model.cfg.latent_channels, length, generator=g).to(device)
    curve = torch.rand(b, 1, length, generator=g).to(device)
    t = torch.full((b,), 0.37, device=device)
    text = torch.randn(b, 5, model.cfg.text_dim, generator=g).to(device)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * b, dtype=torch.float32, device=device)
    with torch.inference_mode():
        mods, final = model.time_modulations(t)
        kvs, bias = model.text_context(text, mask)
        ref = model.backbone(x, curve, mods, final, kvs, bias)
        got = triton_backbone(model)(x, curve, mods, final, kvs, bias)
    assert_close(got, ref, 2e-5, 2e-5, "velocity")


FUSED_CASES = [1, 3, 4, 7]  # heun; heun + shift 3 + negative; euler + no-curve; heun + curve guidance + negative


@pytest.mark.parametrize("case", [CASES[i] for i in FUSED_CASES], ids=[CASE_IDS[i] for i in FUSED_CASES])
def test_fused_sampler_matches_oracle(device, dit, case):
    """The fused backbone through the one guided stage against the plain-loop oracle (fp32)."""
    if device != "cpu":
        pytest.skip("the oracle runs on the CPU in fp64")
    noise, cond, oracle_kw, opts = case_inputs(dit.cfg, case, b=1, length=19)
    plan = sampler.Plan.make(sampler.SamplerOptions(**opts), True, cond.has_negative)
    got = FastSampler(dit, FastConfig(graphs=False, kernels="triton")).sample(noise, cond, plan)
    import copy

    ref = oracle_sample(copy.deepcopy(dit), noise, cond.curve, cond.text, cond.text_mask, **oracle_kw)
    assert rel_err(got, ref) <= 1e-4, rel_err(got, ref)


def test_fused_sampler_matches_eager(device, dit):
    model = dit.to(device)
    args = (*_inputs(model.cfg, 2, 41, 6), _plan(12, solver="heun"))
    fused = FastSampler(model, FastConfig(graphs=False, kernels="triton"))
    eager = FastSampler(model, FastConfig(graphs=False))
    assert fused.path == "static_eager+triton"
    a = fused.sample(*args)
    np.testing.assert_allclose(a, eager.sample(*args), atol=1e-4, rtol=1e-4)
    assert np.array_equal(a, fused.sample(*args)), "the fused sampler is not reproducible run to run"


def test_fused_fp16_velocity_cosine(device, dit):
    """fp16 fused path vs the fp32 model along the fp32 trajectory: cosine >= 0.999 every step."""
    import copy

    ref = FastSampler(dit.to(device).float(), FastConfig(graphs=False))
    lo = FastSampler(copy.deepcopy(dit).to(device).half(), FastConfig(graphs=False, kernels="triton"))
    args = (*_inputs(dit.cfg, 1, 62, 6, seed=3), _plan(24))
    e_ref, e_lo = ref.prepare(*args), lo.prepare(*args)
    ts = sampler.time_grid(24)
    x = e_ref.state.x.clone()
    for i in range(len(ts) - 1):
        v_ref, v_lo = ref.velocity_at(e_ref, x, i), lo.velocity_at(e_lo, x, i)
        cos = torch.nn.functional.cosine_similarity(v_ref.flatten(), v_lo.flatten(), dim=0).item()
        assert cos >= 0.999, (i, cos)
        x = x + float(ts[i + 1] - ts[i]) * v_ref


def test_pipeline_with_fused_kernels(tiny_bundle, short_video, device):
    """End to end: the fused fast path gives the eager pipeline's audio (fp32, same seed)."""
    from v2m.runtime import Pipeline

    a = Pipeline.from_pretrained(tiny_bundle, device=device, precision="fp32").generate(short_video.path, "x", seed=2, steps=4)
    pipe = Pipeline.from_pretrained(tiny_bundle, device=device, precision="fp32", fast=True, kernels="triton")
    b = pipe.generate(short_video.path, "x", seed=2, steps=4)
    assert b.info["sampler_path"].endswith("+triton") and b.info["kernels"] == "triton"
    np.testing.assert_allclose(a.latents, b.latents, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(a.audio, b.audio, atol=1e-3)  # the random VAE amplifies latent differences ~5x


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_fused_graph_replay(dit):
    """On CUDA: the fused step captured in a CUDA graph equals its eager run and replays bit-identically."""
    import copy

    model = copy.deepcopy(dit).cuda().half()
    args = (*_inputs(model.cfg, 1, 62, 6), _plan(96))
    graphed = FastSampler(model, FastConfig(graphs=True, kernels="triton"))
    eager = FastSampler(model, FastConfig(graphs=False, kernels="triton"))
    a = graphed.sample(*args)
    assert graphed.path == "cuda_graph+triton" and graphed.captures == 1
    assert np.array_equal(a, graphed.sample(*args))
    np.testing.assert_allclose(a, eager.sample(*args), atol=1e-3, rtol=1e-3)


def test_kernels_and_compile_are_alternatives():
    with pytest.raises(BackendUnavailable, match="alternatives"):
        FastConfig(kernels="triton", compile="inductor")
    with pytest.raises(BackendUnavailable, match="kernels"):
        FastConfig(kernels="cuda")


def test_unavailable_is_one_clear_error(monkeypatch, dit):
    from v2m.kernels import rope

    monkeypatch.setattr(rope, "triton_available", lambda: False)
    with pytest.raises(BackendUnavailable, match="kernels='torch'"):
        FastSampler(dit, FastConfig(graphs=False, kernels="triton"))


# Lowers the fused kernels (norm, RoPE, VAE Snake) to sm_90 cubins at the full preset's launch configuration
# (fp16, D = 2048: 2 rows a program, 16 warps; RoPE with Dh = 128) and checks the row
# loads and stores vectorize. Needs only triton's bundled ptxas, no GPU; a fresh
# interpreter, since TRITON_INTERPRET replaces triton.jit process-wide.
_SM90_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from v2m.kernels import adaln, rope, snake

target = GPUTarget("cuda", 90, 32)
aligned = [["tt.divisibility", 16]]
ptrs = ["H_ptr", "Y_ptr", "G_ptr", "W_ptr", "BIAS_ptr", "SHIFT_ptr", "SCALE_ptr", "H_out_ptr", "N_out_ptr"]
sig = {p: "*fp16" for p in ptrs}
sig.update({k: "i32" for k in ("R", "D", "rows_per_batch", "h_row_stride", "y_row_stride", "mod_batch_stride", "out_row_stride")})
sig["eps"] = "fp32"
flags = ("HAS_Y", "HAS_GATE", "AFFINE", "MODULATE", "ROWS", "BLOCK_D")
sig.update({k: "constexpr" for k in flags})
names = list(sig)
attrs = {(names.index(n),): aligned for n in ptrs + ["D", "h_row_stride", "y_row_stride", "out_row_stride"]}
norm = triton.compile(ASTSource(fn=adaln._add_norm_modulate_kernel, signature=sig,
    constexprs={"HAS_Y": True, "HAS_GATE": True, "AFFINE": False, "MODULATE": True, "ROWS": 2, "BLOCK_D": 2048},
    attrs=attrs), target=target, options={"num_warps": 16})
rsig = {"QKV_ptr": "*fp16", "COS_ptr": "*fp32", "SIN_ptr": "*fp32", "Q_ptr": "*fp16", "K_ptr": "*fp16",
        "R": "i32", "L": "i32", "H": "i32", "qkv_batch_stride": "i32", "qkv_row_stride": "i32",
        "table_row_stride": "i32", "HALF": "constexpr", "ROWS": "constexpr", "BLOCK_P": "constexpr"}
rn = list(rsig)
rattrs = {(rn.index(n),): aligned for n in ("QKV_ptr", "COS_ptr", "SIN_ptr", "Q_ptr", "K_ptr", "qkv_batch_stride", "qkv_row_stride", "table_row_stride")}
rp = triton.compile(ASTSource(fn=rope._rope_qkv_kernel, signature=rsig,
    constexprs={"HALF": 64, "ROWS": 2, "BLOCK_P": 1024}, attrs=rattrs), target=target, options={"num_warps": 4})
ssig = {"X_ptr": "*fp16", "ALPHA_ptr": "*fp32", "INV_BETA_ptr": "*fp32", "Y_ptr": "*fp16", "N": "i32", "C": "i32",
        "T": "i32", "BLOCK": "constexpr"}
sn = list(ssig)
sattrs = {(sn.index(n),): aligned for n in ("X_ptr", "ALPHA_ptr", "INV_BETA_ptr", "Y_ptr", "N")}
sk = triton.compile(ASTSource(fn=snake._snake_kernel, signature=ssig, constexprs={"BLOCK": 4096},
    attrs=sattrs), target=target, options={"num_warps": 8})
assert norm.asm["cubin"] and rp.asm["cubin"] and sk.asm["cubin"]
for name, k in (("norm", norm), ("rope", rp), ("snake", sk)):
    assert "ld.global.v4" in k.asm["ptx"] and "st.global.v4" in k.asm["ptx"], name + ": fp16 rows did not vectorize"
print("ok")
"""


def test_fused_kernels_compile_for_sm90():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("triton's bundled ptxas is missing")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # silence the 3.9 default-change warning
    proc = subprocess.run([sys.executable, "-c", _SM90_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-4000:]
