"""Every torch sampler path against the independent plain-loop oracle (tests/sampler_oracle.py).

fp32, rel err <= 1e-4 over Euler and Heun, shift 1 and 3, negative prompts, --no-curve and
curve guidance. ONNX Runtime runs the same cases in tests/export/test_export.py, the fused
Triton backbone in tests/kernels/test_fused_backbone.py.
"""

import numpy as np
import pytest
from sampler_oracle import CASE_IDS, CASES, case_inputs, oracle_sample, rel_err

from v2m.core.bundle import load_config
from v2m.runtime import sampler
from v2m.runtime.backends.torch_backend import TorchBackend
from v2m.runtime.backends.torch_fast import FastConfig, FastSampler


@pytest.fixture(scope="module")
def eager(tiny_bundle):
    return TorchBackend(tiny_bundle, load_config(tiny_bundle), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def oracle_dit(tiny_bundle):
    from v2m.models.bundle import load_component

    return load_component(tiny_bundle, "dit")


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("path", ["eager", "fast"])
def test_torch_sampler_matches_oracle(eager, oracle_dit, case, path):
    noise, cond, oracle_kw, opts = case_inputs(eager.cfg, case, b=2 if path == "fast" else 1)
    plan = sampler.Plan.make(sampler.SamplerOptions(**opts), eager.cfg.sampler.uncond_keeps_curve, cond.has_negative)
    seen = []
    if path == "eager":
        got = eager.sample(noise, cond, plan, seen.append)
    else:
        got = FastSampler(eager.dit, FastConfig()).sample(noise, cond, plan, seen.append)
    ref = oracle_sample(oracle_dit, noise, cond.curve, cond.text, cond.text_mask, **oracle_kw)
    assert seen == list(range(opts["steps"]))
    assert rel_err(got, ref) <= 1e-4, rel_err(got, ref)
    assert np.abs(got - noise).max() > 0.1  # it moved


def test_uncond_without_curve_matches_oracle(eager, oracle_dit):
    noise, cond, oracle_kw, opts = case_inputs(eager.cfg, dict(solver="heun", shift=2.0, curve_guidance=0.7))
    plan = sampler.Plan.make(sampler.SamplerOptions(**opts), uncond_keeps_curve=False, has_negative=False)
    got = eager.sample(noise, cond, plan)
    ref = oracle_sample(oracle_dit, noise, cond.curve, cond.text, cond.text_mask, **oracle_kw, uncond_keeps_curve=False)
    assert rel_err(got, ref) <= 1e-4


@pytest.mark.parametrize("path", ["eager", "fast"])
def test_no_prompt_on_the_null_branch_matches_oracle(eager, oracle_dit, path):
    """No prompt with `empty_prompt: null`: the oracle's prompt is the null branch's zero text
    (its three branches run as the paper writes them); the plan merges cond and uncond."""
    noise, cond, oracle_kw, opts = case_inputs(eager.cfg, dict(solver="euler", shift=1.0, curve_guidance=1.5))
    plan = sampler.Plan.make(sampler.SamplerOptions(**opts), True, False, null_prompt=True)
    assert plan.guidance.size == 2
    run = eager if path == "eager" else FastSampler(eager.dit, FastConfig())
    got = run.sample(noise, cond, plan)
    ref = oracle_sample(oracle_dit, noise, cond.curve, np.zeros_like(cond.text), cond.text_mask, **oracle_kw)
    assert rel_err(got, ref) <= 1e-4, rel_err(got, ref)
    prompted = oracle_sample(oracle_dit, noise, cond.curve, cond.text, cond.text_mask, **oracle_kw)
    assert rel_err(got, prompted) > 1e-2  # the prompt's embeddings were not used


def test_options_change_the_result(eager):
    """Each option is live: a solver, shift, negative prompt, no-curve or curve guidance that were
    silently ignored would leave the latents unchanged."""
    noise, cond, _, _ = case_inputs(eager.cfg, dict(solver="euler", shift=1.0, negative=True))
    base = dict(steps=5, cfg_scale=4.5)

    def run(has_negative=False, keeps=True, **kw):
        plan = sampler.Plan.make(sampler.SamplerOptions(**base, **kw), keeps, has_negative)
        return eager.sample(noise, cond, plan)

    ref = run()
    for variant in (run(solver="heun"), run(shift=3.0), run(has_negative=True), run(use_curve=False),
                    run(curve_guidance=1.0), run(keeps=False)):
        assert np.abs(variant - ref).max() > 1e-3


def test_eager_schedule_cache_is_keyed_by_content(eager):
    noise, cond, _, _ = case_inputs(eager.cfg, dict(solver="euler", shift=1.0))
    a = sampler.Plan.make(sampler.SamplerOptions(steps=4, cfg_scale=4.5))
    b = sampler.Plan.make(sampler.SamplerOptions(steps=4, cfg_scale=4.5, shift=3.0))  # same length, ends, other grid
    eager.sample(noise, cond, a)
    out_b = eager.sample(noise, cond, b)  # after `a`: must not reuse `a`'s modulations
    eager._sched_cache.clear()
    np.testing.assert_array_equal(out_b, eager.sample(noise, cond, b))
