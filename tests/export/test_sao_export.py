"""Stable Audio Open bundles through the one sampler and the generic exporter.

- every graph (t5, cond, encoder, vae, text, schedule, step) matches PyTorch in ONNX Runtime at
  two shapes, fp32 and fp16;
- the torch (eager, fast) and ONNX Runtime samplers against an independent oracle: a plain loop
  over `SAODiT.forward` with the conditioner, the guidance and k-diffusion's DPM-Solver++(2M)
  written out (no sigma table, no step model, no branch batch);
- a model with a curve channel takes the curve through the exported step;
- prompts encoded by the lean runtime (torch unimportable) with the exported t5 graph.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sampler_oracle import rel_err

from v2m.core.bundle import load_config
from v2m.export.exporter import export_bundle
from v2m.models.bundle import init_bundle, load_component
from v2m.models.checkpoint import save_safetensors
from v2m.models.sao_dit import SAODiTConfig, add_curve_channel
from v2m.runtime import sampler
from v2m.runtime.text import load_text_encoder

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

PROMPTS = ["warm synth pop with soft drums", "", "an epic orchestral trailer " * 6]


@pytest.fixture(scope="module")
def sao_bundle(tmp_path_factory) -> Path:
    return init_bundle("sao-tiny", tmp_path_factory.mktemp("sao") / "bundle", seed=0)


@pytest.fixture(scope="module")
def exported(sao_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("sao-onnx") / "exported"
    return out, export_bundle(sao_bundle, out, precisions=("fp32", "fp16"))


def test_every_graph_matches_pytorch(exported):
    out, res = exported
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["graphs"]["fp32"]) == {"t5", "cond", "encoder", "vae", "text", "schedule", "step"}
    assert set(man["graphs"]["fp16"]) == set(man["graphs"]["fp32"])
    assert res.checks and all(c.ok for c in res.checks), [c.line() for c in res.checks if not c.ok]
    steps = {tuple(c.shape) for c in res.checks if c.graph == "step" and c.output == "x_out"}
    assert steps == {(1, 8, 31), (2, 8, 17)}  # another B, G, K, N and L than the export's: all stayed dynamic
    # lean: no weights, the tokenizer for the t5 graph
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "manifest.json", "onnx", "tokenizer.json"]


def _oracle_sao(dit, cond_model, noise, curve, emb, mask, neg, seconds, sigmas, cfg_scale):
    """k-diffusion's sample_dpmpp_2m over SAO's VDenoiser with CFG, from the model's own forward."""
    from v2m.families.sao import v_scalings

    f64 = lambda a: torch.from_numpy(np.asarray(a)).double()
    dit, cond_model = dit.double(), cond_model.double()
    with torch.no_grad():
        cross, glob = cond_model(f64(emb), f64(mask), f64(seconds))
        cross_u = torch.zeros_like(cross) if neg is None else cond_model(f64(neg[0]), f64(neg[1]), f64(seconds))[0]

        def denoise(x, s):
            c_skip, c_out, c_in = (float(v) for v in v_scalings(s))
            t = torch.full((x.shape[0],), float(np.arctan(s) * 2 / np.pi), dtype=torch.float64)
            c = f64(curve) if dit.cfg.input_concat_dim else None
            v_c = dit(x * c_in, t, cross, glob, c)
            v_u = dit(x * c_in, t, cross_u, glob, c)
            v = v_u + cfg_scale * (v_c - v_u)
            return c_skip * x + c_out * v

        x = f64(noise) * sigmas[0]
        old = None
        for i in range(len(sigmas) - 1):
            d = denoise(x, sigmas[i])
            if sigmas[i + 1] == 0:
                x = d
            elif old is None:
                x = (sigmas[i + 1] / sigmas[i]) * x - np.expm1(-np.log(sigmas[i] / sigmas[i + 1])) * d
            else:
                h = np.log(sigmas[i] / sigmas[i + 1])
                r = np.log(sigmas[i - 1] / sigmas[i]) / h
                x = (sigmas[i + 1] / sigmas[i]) * x - np.expm1(-h) * ((1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old)
            old = d
    return x.float().numpy()


def _inputs(cfg, b, length, seed=0, negative=False):
    rng = np.random.default_rng(seed)
    s = cfg.text["max_tokens"]
    emb = rng.standard_normal((b, s, cfg.text_dim)).astype(np.float32)
    mask = np.ones((b, s), np.float32)
    mask[:, -4:] = 0
    neg = None
    if negative:
        neg = (rng.standard_normal((b, s, cfg.text_dim)).astype(np.float32), np.ones((b, s), np.float32))
    curve = rng.random((b, length)).astype(np.float32)
    noise = sampler.initial_noise(seed, (b, cfg.latent_channels, length))
    return noise, curve, emb, mask, neg


@pytest.mark.parametrize("backend", ["torch", "torch-fast", "onnxruntime"])
@pytest.mark.parametrize("negative", [False, True])
def test_sampler_matches_the_oracle(sao_bundle, exported, backend, negative):
    from v2m.families.sao import seconds_values, sigma_schedule
    from v2m.runtime import Pipeline

    out, _ = exported
    path = out if backend == "onnxruntime" else sao_bundle
    pipe = Pipeline.from_pretrained(path, backend="onnxruntime" if backend == "onnxruntime" else "torch",
                                    fast=True if backend == "torch-fast" else None)
    cfg = pipe.config
    length = cfg.sao_config.latent_frames
    noise, curve, emb, mask, neg = _inputs(cfg, 2, length, negative=negative)
    opts = pipe.sampler_options(steps=6, cfg_scale=3.5, solver="dpmpp-2m")
    plan = pipe.plan(opts, negative)
    cond = pipe.conditioning(curve, emb, mask, None if neg is None else neg[0], None if neg is None else neg[1], 1.5)
    got = pipe.sample_latents(noise, cond, plan)
    sig = sigma_schedule(cfg.sao_config, 6)
    seconds = np.repeat(seconds_values(cfg.sao_config.seconds_names, 1.5)[None], 2, axis=0)
    ref = _oracle_sao(load_component(sao_bundle, "dit"), load_component(sao_bundle, "cond"), noise, curve[:, None],
                      emb, mask, neg, seconds, sig, 3.5)
    assert rel_err(got, ref) <= 1e-4, rel_err(got, ref)


def test_ping_pong_torch_vs_onnxruntime(tmp_path):
    """SAO Small's rectified flow with the stochastic ping-pong sampler: the same stage noise from the
    seed gives the same latents on both backends."""
    from v2m.runtime import Pipeline

    b = init_bundle("sao-small-tiny", tmp_path / "b", seed=0)
    export_bundle(b, tmp_path / "e", check=False, with_weights=True)
    out = {}
    for be in ("torch", "onnxruntime"):
        pipe = Pipeline.from_pretrained(tmp_path / "e", backend=be)
        assert pipe.config.sampler.solver == "pingpong"
        length = pipe.config.sao_config.latent_frames
        noise, curve, emb, mask, _ = _inputs(pipe.config, 1, length)
        plan = pipe.plan(pipe.sampler_options(steps=5))
        assert plan.table.stochastic
        cond = pipe.conditioning(curve, emb, mask, None, None, 2.0)
        out[be] = pipe.sample_latents(noise, cond, plan, stage_noise=pipe.stage_noise([3], plan, length))
    assert rel_err(out["onnxruntime"], out["torch"]) <= 1e-4


def test_generate_crops_a_short_video_and_windows_a_long_one(sao_bundle, make_video):
    """A fixed-length model: a clip shorter than its length is generated at full length and cropped; a
    longer one goes through windows of exactly that length."""
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(sao_bundle)
    rate = pipe.config.latent_rate
    short = pipe.generate(make_video("s.mp4", duration_s=1.0), "x", seed=1, steps=3)
    assert short.latents.shape[-1] == round(1.0 * rate) or abs(short.latents.shape[-1] - 1.0 * rate) <= 1
    assert short.audio.shape[-1] == 44100
    long = pipe.generate(make_video("l.mp4", duration_s=4.0), "x", seed=1, steps=3)
    assert long.audio.shape[-1] == 4 * 44100 and long.latents.shape[-1] > pipe.config.sao_config.latent_frames


def test_curve_channel_goes_through_the_exported_step(sao_bundle, tmp_path):
    b = Path(shutil.copytree(sao_bundle, tmp_path / "curve"))
    cfg = load_config(b)
    sd, dit_cfg = add_curve_channel(load_component(b, "dit").state_dict(), SAODiTConfig.from_dict(cfg.dit))
    sd["concat_proj_in.weight"].normal_()  # a "trained" channel, so the check sees the curve's effect
    save_safetensors(sd, b / "dit.safetensors")
    raw = json.loads((b / "config.json").read_text())
    raw["dit"] = dit_cfg.to_dict()
    (b / "config.json").write_text(json.dumps(raw))
    res = export_bundle(b, tmp_path / "out", names=("text", "schedule", "step"))
    assert all(c.ok for c in res.checks)
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(b)
    noise, curve, emb, mask, _ = _inputs(pipe.config, 1, pipe.config.sao_config.latent_frames)
    plan = pipe.plan(pipe.sampler_options(steps=4, solver="dpmpp-2m"))
    a = pipe.sample_latents(noise, pipe.conditioning(curve, emb, mask, None, None, 1.0), plan)
    z = pipe.sample_latents(noise, pipe.conditioning(curve * 0, emb, mask, None, None, 1.0), plan)
    assert np.abs(a - z).max() > 1e-3  # the curve is live
    plan_nc = pipe.plan(pipe.sampler_options(steps=4, solver="dpmpp-2m", use_curve=False))
    np.testing.assert_array_equal(pipe.sample_latents(noise, pipe.conditioning(curve, emb, mask, None, None, 1.0), plan_nc), z)


def test_a_model_without_the_curve_ignores_it(sao_bundle):
    from v2m.runtime import Pipeline

    pipe = Pipeline.from_pretrained(sao_bundle)
    noise, curve, emb, mask, _ = _inputs(pipe.config, 1, pipe.config.sao_config.latent_frames)
    plan = pipe.plan(pipe.sampler_options(steps=3, solver="dpmpp-2m"))
    a = pipe.sample_latents(noise, pipe.conditioning(curve, emb, mask, None, None, 1.0), plan)
    b = pipe.sample_latents(noise, pipe.conditioning(curve * 0, emb, mask, None, None, 1.0), plan)
    np.testing.assert_array_equal(a, b)


def test_solvers_that_do_not_fit_are_one_line(sao_bundle, short_video, capsys, tmp_path):
    from v2m.cli.main import main

    rc = main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "-m", str(sao_bundle), "--solver",
               "heun", "--steps", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "does not fit" in err[0] and "dpmpp-2m" in err[0]
    assert not (tmp_path / "o.wav").exists()


SITECUSTOMIZE = """
import sys


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "tensorrt", "triton", "transformers"}:
            raise ImportError(f"{name} is blocked (lean runtime test)")
        return None


sys.meta_path.insert(0, _Blocker())
"""


def test_lean_runtime_encodes_prompts_like_torch(sao_bundle, exported, tmp_path):
    out, _ = exported
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from v2m.core.bundle import load_config
        from v2m.runtime.text import load_text_encoder
        cfg = load_config({str(out)!r})
        enc = load_text_encoder({str(out)!r}, cfg.text, cfg.text_dim)
        assert type(enc).__name__ == "OnnxT5TextEncoder", type(enc)
        assert "torch" not in sys.modules
        res = [enc.encode(p) for p in {PROMPTS!r}]
        np.save({str(tmp_path / "emb.npy")!r}, np.stack([e for e, _ in res]))
        np.save({str(tmp_path / "mask.npy")!r}, np.stack([m for _, m in res]))
    """)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "blocker"))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = load_config(sao_bundle)
    ref = load_text_encoder(sao_bundle, cfg.text, cfg.text_dim)  # torch weights
    assert type(ref).__name__ == "T5TextEncoder"
    emb, mask = np.load(tmp_path / "emb.npy"), np.load(tmp_path / "mask.npy")
    for i, prompt in enumerate(PROMPTS):
        e, m = ref.encode(prompt)
        np.testing.assert_array_equal(mask[i], m)
        assert np.abs(emb[i] - e).max() <= 1e-4 * np.abs(e).max()
    assert mask[1].sum() == 1 and mask[2].all()  # "" is just </s>; the long prompt fills all 16 tokens
    assert torch.from_numpy(emb[1, 1:]).abs().max() == 0
