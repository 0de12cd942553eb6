"""SAO conditioner: parity with diffusers' StableAudioProjectionModel (and the pipeline's assembly of
the DiT inputs), stable-audio-tools' key layout and config, SAO Small's single seconds value."""

import math

import pytest
import torch

from v2m.core.errors import BundleError
from v2m.models.sao_cond import (
    PRESETS,
    SAOCondConfig,
    SAOConditioner,
    config_from_diffusers,
    config_from_stable_audio,
    convert_diffusers_state_dict,
    convert_stable_audio_state_dict,
)

diffusers = pytest.importorskip("diffusers")
from sao_fixtures import REL, diffusers_projection, rel_err  # noqa: E402


def _ours(ref) -> SAOConditioner:
    cfg = config_from_diffusers(ref.config)
    ours = SAOConditioner(cfg)
    ours.load_state_dict(convert_diffusers_state_dict(ref.state_dict(), cfg), strict=True)
    return ours.eval()


def _text(b=2, s=6, e=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[0, 4:] = 0
    return torch.randn(b, s, e, generator=g), mask


@pytest.mark.parametrize("text_dim,cond_dim", [(12, 12), (12, 20)], ids=["identity", "projected"])
@torch.no_grad()
def test_parity_with_diffusers_projection_and_pipeline_assembly(text_dim, cond_dim):
    ref = diffusers_projection(text_dim, cond_dim)
    ours = _ours(ref)
    text, mask = _text(e=text_dim)
    start, end = torch.tensor([0.0, 3.5]), torch.tensor([47.55, 600.0])  # 600 is clamped to 512
    cross, glob = ours(text, mask, torch.stack([start, end], 1))
    # What StableAudioPipeline.encode_prompt / encode_duration / __call__ build from the projection model:
    out = ref(text_hidden_states=text, start_seconds=start, end_seconds=end)
    emb = out.text_hidden_states * mask[:, :, None].to(text.dtype)
    want_cross = torch.cat([emb, out.seconds_start_hidden_states, out.seconds_end_hidden_states], 1)
    want_glob = torch.cat([out.seconds_start_hidden_states, out.seconds_end_hidden_states], 2)[:, 0]
    assert cross.shape == (2, 6 + 2, cond_dim) and glob.shape == (2, 2 * cond_dim)
    assert rel_err(cross, want_cross) <= REL and rel_err(glob, want_glob) <= REL
    assert torch.equal(cross[0, 4:6], torch.zeros(2, cond_dim))  # padded text rows are zero vectors


@torch.no_grad()
def test_number_embedding_against_its_formula():
    """NumberEmbedder: Linear([x, sin(2 pi x w), cos(2 pi x w)]) of x = (clamp(s) - min) / (max - min)."""
    cfg = SAOCondConfig(text_dim=4, cond_dim=4, number_features=6)
    m = SAOConditioner(cfg).eval()
    seconds = torch.tensor([[-5.0, 10.0], [100.0, 1000.0]])
    nums = m.number_embeds(seconds)
    for i, name in enumerate(("seconds_start", "seconds_total")):
        emb = m.numbers[name]
        x = (seconds[:, i].clamp(0, 512) / 512)[:, None]
        f = 2 * math.pi * x * emb.weights[None]
        want = torch.cat([x, f.sin(), f.cos()], -1) @ emb.proj.weight.T + emb.proj.bias
        torch.testing.assert_close(nums[name], want)


def _sat_model_section(small=False):
    nums = ["seconds_total"] if small else ["seconds_start", "seconds_total"]
    hi = 256 if small else 512
    return {"conditioning": {"cond_dim": 20, "configs": [
        {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 64 if small else 128}},
        *({"id": n, "type": "number", "config": {"min_val": 0, "max_val": hi}} for n in nums)]},
        "diffusion": {"type": "dit", "cross_attention_cond_ids": ["prompt", *nums], "global_cond_ids": nums}}


@torch.no_grad()
def test_stable_audio_tools_layout_and_config():
    cfg, name, tokens = config_from_stable_audio(_sat_model_section(), text_dim=20)
    assert (name, tokens) == ("t5-base", 128) and cfg.global_dim == 40 and not cfg.text_projection
    ref = diffusers_projection(20, 20, seed=3)
    via_diffusers = _ours(ref)
    # stable-audio-tools names: conditioner.conditioners.<id>.embedder.embedding.{0.weights,1.weight,1.bias}
    sd = {"model.model.preprocess_conv.weight": torch.zeros(1)}  # other parts of the checkpoint: ignored
    for sat, df in (("seconds_start", "start_number_conditioner"), ("seconds_total", "end_number_conditioner")):
        for a, b in (("0.weights", "0.weights"), ("1.weight", "1.weight"), ("1.bias", "1.bias")):
            sd[f"conditioner.conditioners.{sat}.embedder.embedding.{a}"] = ref.state_dict()[f"{df}.time_positional_embedding.{b}"]
    ours = SAOConditioner(cfg).eval()
    ours.load_state_dict(convert_stable_audio_state_dict(sd, cfg), strict=True)
    text, mask = _text(e=20)
    secs = torch.tensor([[0.0, 10.0], [1.0, 30.0]])
    for a, b in zip(ours(text, mask, secs), via_diffusers(text, mask, secs)):
        assert torch.equal(a, b)


@torch.no_grad()
def test_sao_small_conditions_on_seconds_total_only():
    cfg, _, tokens = config_from_stable_audio(_sat_model_section(small=True), text_dim=20)
    assert tokens == 64 and cfg.number_names == ("seconds_total",) and cfg.global_dim == 20
    m = SAOConditioner(cfg).eval()
    text, mask = _text(e=20)
    cross, glob = m(text, mask, torch.tensor([[5.0], [300.0]]))
    assert cross.shape == (2, 7, 20)
    torch.testing.assert_close(glob, cross[:, -1])  # the one seconds token is also the global input
    assert torch.equal(m(text, mask, torch.tensor([[256.0], [256.0]]))[1][0],
                       m(text, mask, torch.tensor([[999.0], [1.0]]))[1][0])  # clamped to max 256
    assert PRESETS["sao-small"].number_names == ("seconds_total",)


def test_unsupported_conditioning_is_refused():
    sec = _sat_model_section()
    sec["conditioning"]["configs"][0]["type"] = "clap_text"
    with pytest.raises(BundleError, match="T5 prompt"):
        config_from_stable_audio(sec, text_dim=20)
    sec = _sat_model_section()
    sec["conditioning"]["configs"][1]["type"] = "int"
    with pytest.raises(BundleError, match="only T5 text and number"):
        config_from_stable_audio(sec, text_dim=20)
    with pytest.raises(BundleError, match="unrecognized keys"):
        convert_diffusers_state_dict({"mystery.weight": torch.zeros(1)}, PRESETS["sao-1.0"])
