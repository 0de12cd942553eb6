"""Whole-pipeline parity with diffusers' StableAudioPipeline (issue 13's bar: SNR >= 60 dB).

A tiny random diffusers pipeline (T5, projection model, DiT, Oobleck VAE) is saved as a
diffusers folder, converted to a v2m bundle (`v2m convert`), and both run deterministic
DPM-Solver++(2M) in v-prediction, sigma 500 -> 0.3, from the same initial latents (v2m's
numpy noise passed as diffusers' `latents`), with CFG, for the same prompt and seconds.

The diffusers scheduler is `EDMDPMSolverMultistepScheduler` (algorithm "dpmsolver++", the
deterministic 2M) with the model's own timestep convention: stable-audio-tools and the
`CosineDPMSolverMultistepScheduler` SAO ships with feed the DiT atan(sigma) * 2 / pi, which
the EDM scheduler replaces with 0.25 ln(sigma) unless told otherwise (its `precondition_noise`,
overridden here), and the Cosine scheduler itself is the SDE variant only. `lower_order_final`
off: the first step and the last (to sigma 0) are first order, as in k-diffusion.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
import sao_fixtures as fx  # noqa: E402

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

STEPS, CFG, SEED = 12, 4.0, 7
PROMPT, NEGATIVE = "warm synth pop with soft drums", "the sound of rain"


class AtanEDMDPMSolver(diffusers.EDMDPMSolverMultistepScheduler):
    """diffusers' deterministic DPM-Solver++(2M) in v-prediction, with SAO's timestep: atan(sigma) 2 / pi."""

    def precondition_noise(self, sigma):
        if not isinstance(sigma, torch.Tensor):
            sigma = torch.tensor([sigma])
        return sigma.atan() / math.pi * 2


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    err = np.sum((ref.astype(np.float64) - got) ** 2)
    return float("inf") if err == 0 else 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / err)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(diffusers StableAudioPipeline, the v2m bundle converted from its folder, its exported copy)."""
    from transformers import PreTrainedTokenizerFast

    from v2m.export.exporter import export_bundle
    from v2m.models.sao_bundle import convert

    root = tmp_path_factory.mktemp("sao_pipe")
    tok_json = fx.trained_tokenizer(root / "tokenizer.json")
    t5 = fx.hf_t5(seed=1)
    dit = fx.diffusers_dit(seed=2)
    proj = fx.diffusers_projection(t5.config.d_model, fx.DF_DIT["cross_attention_input_dim"], seed=3)
    vae = fx.diffusers_vae(seed=4)
    folder = fx.make_diffusers_folder(root / "df", dit, proj, vae, t5, tok_json)
    bundle = convert(folder, root / "bundle")
    tok = PreTrainedTokenizerFast(tokenizer_file=tok_json, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                  model_max_length=12)
    sched = AtanEDMDPMSolver(sigma_min=0.3, sigma_max=500.0, sigma_data=1.0, sigma_schedule="exponential",
                             prediction_type="v_prediction", algorithm_type="dpmsolver++", solver_order=2,
                             lower_order_final=False, final_sigmas_type="zero")
    pipe = diffusers.StableAudioPipeline(vae=vae, text_encoder=t5, projection_model=proj, tokenizer=tok,
                                         transformer=dit, scheduler=sched)
    exported = export_bundle(bundle, root / "exported", check=False).out_dir
    return pipe, bundle, exported


def _diffusers_audio(pipe, noise, negative):
    seconds = pipe.transformer.config.sample_size * 2048 / pipe.vae.config.sampling_rate
    with torch.no_grad():
        out = pipe(PROMPT, negative_prompt=negative, num_inference_steps=STEPS, guidance_scale=CFG,
                   audio_start_in_s=0.0, audio_end_in_s=seconds, latents=torch.from_numpy(noise), output_type="np")
    return out.audios[0], seconds


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("negative", [None, NEGATIVE], ids=["null-uncond", "negative-prompt"])
def test_audio_matches_diffusers(pair, backend, negative):
    from v2m.runtime import Pipeline, sampler

    df, bundle, exported = pair
    pipe = Pipeline.from_pretrained(exported if backend == "onnxruntime" else bundle, backend=backend)
    cfg = pipe.config
    length = cfg.sao_config.latent_frames
    assert length == fx.DF_DIT["sample_size"]
    noise = sampler.initial_noise(SEED, (1, cfg.latent_channels, length))
    want, seconds = _diffusers_audio(df, noise, negative)

    emb, mask, neg, neg_mask = pipe.encode_prompts(PROMPT, negative)
    cond = pipe.conditioning(np.zeros((1, length), np.float32), emb[None], mask[None],
                             None if neg is None else neg[None], None if neg_mask is None else neg_mask[None], seconds)
    plan = pipe.plan(pipe.sampler_options(steps=STEPS, cfg_scale=CFG, solver="dpmpp-2m"), neg is not None)
    latents = pipe.sample_latents(noise, cond, plan)
    got = pipe.backend.decode(latents)[0]
    assert got.shape == want.shape
    assert snr_db(want, got) >= 60, snr_db(want, got)
