"""SAO model-call conventions (torch-free module): the time input, v-preconditioning, x0 from each
objective, the model's sigma schedules, seconds conditioning; checked against analytic identities,
diffusers' EDM scheduler and stable-audio-tools' schedule formulas."""

import math

import numpy as np
import pytest

from v2m.core.bundle import SAOConfig
from v2m.core.errors import BundleError
from v2m.families.sao import denoised, model_time, seconds_values, sigma_schedule, v_scalings

SIGMAS = np.array([0.3, 0.7, 1.0, 3.0, 80.0, 500.0])


def test_model_time_is_the_v_diffusion_angle():
    """v-diffusion: alpha = cos(t pi/2), s = sin(t pi/2), and the EDM noise level is s / alpha = sigma."""
    t = model_time(SIGMAS, "v")
    np.testing.assert_allclose(np.tan(t * math.pi / 2), SIGMAS, rtol=1e-12)
    assert np.all((0 < t) & (t < 1)) and np.all(np.diff(t) > 0)
    np.testing.assert_array_equal(model_time(np.array([0.2, 1.0]), "rf_denoiser"), [0.2, 1.0])
    with pytest.raises(ValueError):
        model_time(1.0, "eps")


def test_v_scalings_match_diffusers_preconditioning():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EDMDPMSolverMultistepScheduler(sigma_data=1.0, prediction_type="v_prediction")
    x, out = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for s in SIGMAS:
        c_skip, c_out, c_in = v_scalings(s)
        torch.testing.assert_close(sched.precondition_inputs(x, torch.tensor(s, dtype=torch.float64)), x * c_in)
        torch.testing.assert_close(sched.precondition_outputs(x, out, torch.tensor(s, dtype=torch.float64)),
                                   c_skip * x + c_out * out)


@pytest.mark.parametrize("objective", ["v", "rf_denoiser", "rectified_flow"])
def test_denoised_recovers_x0_from_the_exact_model_output(objective):
    rng = np.random.default_rng(0)
    x0, noise = rng.standard_normal(8), rng.standard_normal(8)
    for s in (SIGMAS if objective == "v" else [0.05, 0.5, 1.0]):
        if objective == "v":  # x = x0 + sigma noise; the model sees x * c_in = alpha x0 + s noise, predicts v
            alpha, sv = 1 / math.sqrt(1 + s * s), s / math.sqrt(1 + s * s)
            x, v = x0 + s * noise, alpha * noise - sv * x0
            np.testing.assert_allclose(x * v_scalings(s)[2], alpha * x0 + sv * noise, rtol=1e-12)
        else:  # x = (1 - sigma) x0 + sigma noise, v = noise - x0
            x, v = (1 - s) * x0 + s * noise, noise - x0
        np.testing.assert_allclose(denoised(x, v, s, objective), x0, rtol=1e-9, atol=1e-9)


def test_exponential_schedule_matches_diffusers_and_k_diffusion():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    cfg = SAOConfig()  # SAO 1.0: 0.3 .. 500
    sched = diffusers.EDMDPMSolverMultistepScheduler(sigma_min=0.3, sigma_max=500.0, sigma_schedule="exponential",
                                                     sigma_data=1.0, prediction_type="v_prediction")
    for steps in (1, 8, 100):
        s = sigma_schedule(cfg, steps)
        assert s.shape == (steps + 1,) and s[-1] == 0.0
        if steps > 1:  # one step: diffusers' linspace starts at sigma_min, k-diffusion's at sigma_max
            sched.set_timesteps(steps)
            np.testing.assert_allclose(s, sched.sigmas.numpy(), rtol=2e-6)
        # k-diffusion get_sigmas_polyexponential(n, 0.3, 500, rho=1): exp of a linear ramp in log sigma
        ramp = torch.linspace(1, 0, steps, dtype=torch.float64)
        want = torch.exp(ramp * (math.log(500) - math.log(0.3)) + math.log(0.3))
        np.testing.assert_allclose(s[:-1], want.numpy(), rtol=1e-12)


def test_logsnr_schedule_matches_stable_audio_tools_sample_rf():
    torch = pytest.importorskip("torch")
    cfg = SAOConfig(objective="rf_denoiser", sigma_min=0.0, sigma_max=1.0, sigma_schedule="logsnr", sampler="pingpong")
    for steps in (1, 8):
        logsnr = torch.linspace(-6, 2, steps + 1)  # sample_rf with sigma_max = 1 (float32, as there)
        t = torch.sigmoid(-logsnr)
        t[0], t[-1] = 1.0, 0.0
        np.testing.assert_allclose(sigma_schedule(cfg, steps), t.numpy(), rtol=1e-6)
    assert np.all(np.diff(sigma_schedule(cfg, 8)) < 0)


def test_seconds_values_and_config_validation():
    np.testing.assert_array_equal(seconds_values(["seconds_start", "seconds_total"], 12.5), [0.0, 12.5])
    np.testing.assert_array_equal(seconds_values(["seconds_total"], 3.0, start_s=1.0), [3.0])
    with pytest.raises(BundleError, match="bpm"):
        seconds_values(["bpm"], 3.0)
    for bad, msg in (({"objective": "eps"}, "objective"), ({"sampler": "ddim"}, "sampler"),
                     ({"sigma_min": 0.0}, "sigma range"), ({"latent_frames": 0}, "latent_frames"),
                     ({"objective": "rf_denoiser", "sigma_min": 0.0, "sigma_max": 5.0}, "at most 1")):
        with pytest.raises(BundleError, match=msg):
            SAOConfig(**bad)
    with pytest.raises(BundleError, match="unknown keys"):
        SAOConfig.from_dict({"objective": "v", "eta": 1.0})
