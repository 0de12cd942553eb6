"""Stable Audio Open DiT: parity with diffusers' StableAudioDiTModel, stable-audio-tools' key layout
and options (checked against a functional reference written from its source), the curve channel."""

import math

import pytest
import torch
import torch.nn.functional as F

from v2m.core.errors import BundleError
from v2m.models.sao_dit import (
    PRESETS,
    SAODiT,
    SAODiTConfig,
    add_curve_channel,
    config_from_diffusers,
    config_from_stable_audio,
    convert_diffusers_state_dict,
    convert_stable_audio_state_dict,
)

diffusers = pytest.importorskip("diffusers")
from diffusers.models.embeddings import get_1d_rotary_pos_embed  # noqa: E402
from sao_fixtures import DF_DIT, REL, dit_to_sat, randomize, rel_err  # noqa: E402

# A diffusers transformer in miniature with SAO 1.0's shape rules: 4 query heads of 16, 2 K/V heads
# (GQA, cross_attention_dim 32 from 20-wide tokens), partial rotary (8 of 16 dims), 24-wide globals.
DF_TINY = dict(sample_size=16, in_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=4,
               num_key_value_attention_heads=2, out_channels=4, cross_attention_dim=32, time_proj_dim=32,
               global_states_input_dim=24, cross_attention_input_dim=20)



def _diffusers_dit(seed=0, **over):
    return randomize(diffusers.StableAudioDiTModel(**{**DF_TINY, **over}), seed)


def _ours_from_diffusers(model) -> SAODiT:
    cfg = config_from_diffusers(model.config)
    ours = SAODiT(cfg)
    ours.load_state_dict(convert_diffusers_state_dict(model.state_dict(), cfg), strict=True)
    return ours.eval()


def _inputs(cfg: SAODiTConfig, b=2, n=13, s=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.tensor([0.3, 80.0, 500.0, 2.0])[:b]
    t = sigma.atan() * 2 / math.pi  # stable-audio-tools' VDenoiser / diffusers' Cosine scheduler time
    return (torch.randn(b, cfg.latent_channels, n, generator=g), t,
            torch.randn(b, s, cfg.cond_dim, generator=g), torch.randn(b, cfg.global_dim, generator=g),
            torch.randn(b, cfg.input_concat_dim, n, generator=g))


def _diffusers_out(model, x, t, cross, glob):
    rot = get_1d_rotary_pos_embed(model.config.attention_head_dim // 2, x.shape[-1] + 1, use_real=True,
                                  repeat_interleave_real=False)  # what StableAudioPipeline passes
    return model(x, t, encoder_hidden_states=cross, global_hidden_states=glob[:, None, :],
                 rotary_embedding=rot, return_dict=False)[0]


@torch.no_grad()
def test_parity_with_diffusers():
    ref_model = _diffusers_dit()
    ours = _ours_from_diffusers(ref_model)
    assert ours.cfg.kv_heads == 2 and ours.cfg.rotary_dim == 8
    for n in (1, 13, 40):
        x, t, cross, glob, _ = _inputs(ours.cfg, n=n)
        ref = _diffusers_out(ref_model, x, t, cross, glob)
        out = ours(x, t, cross, glob)
        assert out.shape == ref.shape == (2, 4, n)
        assert rel_err(out, ref) <= REL, rel_err(out, ref)


@torch.no_grad()
def test_the_model_time_is_atan_sigma_not_log_sigma():
    """The model sees t = atan(sigma) * 2 / pi; EDM's 0.25 ln(sigma) is another model input."""
    ref_model = _diffusers_dit(seed=3)
    ours = _ours_from_diffusers(ref_model)
    x, t, cross, glob, _ = _inputs(ours.cfg)
    sigma = (t * math.pi / 2).tan()
    out = ours(x, t, cross, glob)
    assert rel_err(out, _diffusers_out(ref_model, x, t, cross, glob)) <= REL
    assert rel_err(out, _diffusers_out(ref_model, x, 0.25 * sigma.log(), cross, glob)) > 1e-2


@torch.no_grad()
def test_curve_channel_parity_with_a_widened_diffusers_model():
    """diffusers reads in_channels = C + 1 > out_channels as one input-concat channel fed cat([x, c])."""
    ref_model = _diffusers_dit(seed=5, in_channels=5)
    ours = _ours_from_diffusers(ref_model)
    assert ours.cfg.input_concat_dim == 1 and ours.cfg.latent_channels == 4
    x, t, cross, glob, curve = _inputs(ours.cfg)
    ref = _diffusers_out(ref_model, torch.cat([x, curve], 1), t, cross, glob)
    assert rel_err(ours(x, t, cross, glob, curve), ref) <= REL


@torch.no_grad()
def test_added_curve_channel_is_bit_identical_until_trained():
    cfg = PRESETS["sao-tiny"]
    base = SAODiT(cfg).init_weights(torch.Generator().manual_seed(0)).eval()
    sd, cfg1 = add_curve_channel(base.state_dict(), cfg)
    widened = SAODiT(cfg1).eval()
    widened.load_state_dict(sd, strict=True)
    x, t, cross, glob, curve = _inputs(cfg1, n=17)
    want = base(x, t, cross, glob)
    for c in (curve, 1e6 * curve, torch.zeros_like(curve)):
        assert torch.equal(widened(x, t, cross, glob, c), want)
    with pytest.raises(BundleError, match="already has 1"):
        add_curve_channel(sd, cfg1)
    # Once the channel is trained (any nonzero weight), the curve changes the output.
    widened.concat_proj_in.weight.normal_()
    assert not torch.allclose(widened(x, t, cross, glob, curve), want)


@torch.no_grad()
def test_hoisted_pieces_serve_a_cfg_batch():
    """Per-generation K/V and global embedding, per-schedule time embedding, reused across steps."""
    model = SAODiT(PRESETS["sao-tiny"]).init_weights(torch.Generator().manual_seed(2)).eval()
    x, _, cross, glob, _ = _inputs(model.cfg, b=1)
    cross2, glob2 = torch.cat([cross, torch.zeros_like(cross)]), torch.cat([glob, glob])  # cond; uncond
    kvs, g_emb = model.cross_context(cross2), model.global_embed(glob2)
    for t in (0.9, 0.5, 0.1):
        tt = torch.full((2,), t)
        out = model.backbone(torch.cat([x, x]), model.time_embed(tt), g_emb, kvs)
        assert torch.allclose(out[:1], model(x, tt[:1], cross, glob), atol=1e-6, rtol=1e-5)
        assert torch.allclose(out[1:], model(x, tt[:1], cross * 0, glob), atol=1e-6, rtol=1e-5)


# --- stable-audio-tools ------------------------------------------------------------------------------
def _sat_dit_config(cfg: SAODiTConfig, **over) -> dict:
    """A stable-audio-tools `model.diffusion` section for `cfg`."""
    c = {"io_channels": cfg.latent_channels, "embed_dim": cfg.width, "depth": cfg.depth, "num_heads": cfg.heads,
         "cond_token_dim": cfg.cond_dim, "global_cond_dim": cfg.global_dim,
         "project_cond_tokens": cfg.cross_dim != cfg.cond_dim, "transformer_type": "continuous_transformer"}
    return {"type": "dit", "config": {**c, **over}}


@torch.no_grad()
def test_stable_audio_tools_layout_loads_like_diffusers():
    ref_model = _diffusers_dit(seed=7, **DF_DIT)
    via_diffusers = _ours_from_diffusers(ref_model)
    cfg = config_from_stable_audio(_sat_dit_config(via_diffusers.cfg))
    assert cfg == via_diffusers.cfg
    sat = dit_to_sat(ref_model.state_dict(), cfg.depth, cfg.rotary_dim)
    sat["conditioner.conditioners.seconds_total.embedder.embedding.0.weights"] = torch.zeros(4)  # other parts: ignored
    sat["pretransform.model.decoder.layers.0.bias"] = torch.zeros(4)
    ours = SAODiT(cfg).eval()
    ours.load_state_dict(convert_stable_audio_state_dict(sat, cfg), strict=True)
    x, t, cross, glob, _ = _inputs(cfg)
    assert torch.equal(ours(x, t, cross, glob), via_diffusers(x, t, cross, glob))
    assert rel_err(ours(x, t, cross, glob), _diffusers_out(ref_model, x, t, cross, glob)) <= REL


def _sat_reference(sd: dict, c: dict, x, t, cross, glob, concat=None):
    """stable-audio-tools' DiffusionTransformer._forward, functionally, on its own state dict keys:
    written from dit.py / transformer.py (FourierFeatures, prepend global token, ContinuousTransformer
    with rotary max(dh/2, 32), Attention with qk_norm, GQA repeat_interleave, GLU feed-forward)."""
    w = {k[len("model.model."):]: v for k, v in sd.items() if k.startswith("model.model.")}
    heads, dim = c["num_heads"], c["embed_dim"]
    dh = dim // heads
    lin = lambda h, k, b=None: F.linear(h, w[k], w.get(b) if b else None)  # noqa: E731
    mlp = lambda h, n, bias: lin(F.silu(lin(h, f"{n}.0.weight", f"{n}.0.bias" if bias else None)),  # noqa: E731
                                 f"{n}.2.weight", f"{n}.2.bias" if bias else None)
    ctx = mlp(cross, "to_cond_embed", False)
    f = 2 * math.pi * t[:, None] @ w["timestep_features.weight"].T
    g = mlp(glob, "to_global_embed", False) + mlp(torch.cat([f.cos(), f.sin()], -1), "to_timestep_embed", True)
    if concat is not None:
        x = torch.cat([x, concat], 1)
    x = F.conv1d(x, w["preprocess_conv.weight"]) + x
    h = torch.cat([g[:, None], lin(x.transpose(1, 2), "transformer.project_in.weight")], 1)
    n = h.shape[1]
    rot = max(dh // 2, 32)
    freqs = torch.arange(n).float()[:, None] * (1.0 / 10000 ** (torch.arange(0, rot, 2).float() / rot))[None]
    freqs = torch.cat([freqs, freqs], -1)

    def rope(q):
        q1, q2 = q[..., :rot].chunk(2, -1)
        return torch.cat([q[..., :rot] * freqs.cos() + torch.cat([-q2, q1], -1) * freqs.sin(), q[..., rot:]], -1)

    def heads_of(v, hn):
        return v.reshape(v.shape[0], v.shape[1], hn, dh).transpose(1, 2)

    def qk_norm(q, k, pre):
        if f"{pre}.q_norm.weight" in w:
            q = F.layer_norm(q, (dh,), w[f"{pre}.q_norm.weight"], w[f"{pre}.q_norm.bias"], 1e-6)
            k = F.layer_norm(k, (dh,), w[f"{pre}.k_norm.weight"], w[f"{pre}.k_norm.bias"], 1e-6)
        return q, k

    def ln(v, p, nm):
        return F.layer_norm(v, (dim,), w[f"{p}.{nm}.gamma"], w[f"{p}.{nm}.beta"], 1e-5)

    for i in range(c["depth"]):
        p = f"transformer.layers.{i}"
        q, k, v = lin(ln(h, p, "pre_norm"), f"{p}.self_attn.to_qkv.weight").chunk(3, -1)
        q, k = qk_norm(heads_of(q, heads), heads_of(k, heads), f"{p}.self_attn")
        a = torch.softmax(rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(dh), -1) @ heads_of(v, heads)
        h = h + lin(a.transpose(1, 2).reshape(h.shape), f"{p}.self_attn.to_out.weight")
        q = heads_of(lin(ln(h, p, "cross_attend_norm"), f"{p}.cross_attn.to_q.weight"), heads)
        k, v = lin(ctx, f"{p}.cross_attn.to_kv.weight").chunk(2, -1)
        kvh = k.shape[-1] // dh
        q, k = qk_norm(q, heads_of(k, kvh), f"{p}.cross_attn")
        k, v = k.repeat_interleave(heads // kvh, 1), heads_of(v, kvh).repeat_interleave(heads // kvh, 1)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), -1) @ v
        h = h + lin(a.transpose(1, 2).reshape(h.shape), f"{p}.cross_attn.to_out.weight")
        y, gate = lin(ln(h, p, "ff_norm"), f"{p}.ff.ff.0.proj.weight", f"{p}.ff.ff.0.proj.bias").chunk(2, -1)
        h = h + lin(y * F.silu(gate), f"{p}.ff.ff.2.weight", f"{p}.ff.ff.2.bias")
    out = lin(h, "transformer.project_out.weight").transpose(1, 2)[:, :, 1:]
    return F.conv1d(out, w["postprocess_conv.weight"]) + out


def _random_sat_state(cfg: SAODiTConfig, seed: int) -> dict:
    """A random stable-audio-tools state dict for `cfg` (names and shapes from its source; checked once
    against a `DiffusionTransformer` built from stable-audio-tools itself: the same key set)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) / math.sqrt(s[-1] if len(s) > 1 else 1)  # noqa: E731
    d, c, cin, p = cfg.width, cfg.latent_channels, cfg.latent_channels + cfg.input_concat_dim, "model.model."
    sd = {p + "timestep_features.weight": torch.randn(cfg.freq_dim // 2, 1, generator=g),
          p + "to_timestep_embed.0.weight": r(d, cfg.freq_dim), p + "to_timestep_embed.0.bias": r(d),
          p + "to_timestep_embed.2.weight": r(d, d), p + "to_timestep_embed.2.bias": r(d),
          p + "to_global_embed.0.weight": r(d, cfg.global_dim), p + "to_global_embed.2.weight": r(d, d),
          p + "to_cond_embed.0.weight": r(cfg.cross_dim, cfg.cond_dim),
          p + "to_cond_embed.2.weight": r(cfg.cross_dim, cfg.cross_dim),
          p + "preprocess_conv.weight": r(cin, cin)[..., None],
          p + "postprocess_conv.weight": r(c, c)[..., None],
          p + "transformer.project_in.weight": r(d, cin), p + "transformer.project_out.weight": r(c, d),
          p + "transformer.rotary_pos_emb.inv_freq":  # a persistent buffer of RotaryEmbedding
              1.0 / (10000 ** (torch.arange(0, cfg.rotary_dim, 2).float() / cfg.rotary_dim))}
    dh, ff = cfg.head_dim, cfg.ff_dim
    for i in range(cfg.depth):
        s = f"{p}transformer.layers.{i}."
        for nm in ("pre_norm", "cross_attend_norm", "ff_norm"):
            sd[s + nm + ".gamma"], sd[s + nm + ".beta"] = 1 + 0.1 * r(d), 0.1 * r(d)
        sd[s + "self_attn.to_qkv.weight"], sd[s + "self_attn.to_out.weight"] = r(3 * d, d), r(d, d)
        sd[s + "cross_attn.to_q.weight"], sd[s + "cross_attn.to_out.weight"] = r(d, d), r(d, d)
        sd[s + "cross_attn.to_kv.weight"] = r(2 * cfg.cross_dim, cfg.cross_dim)
        sd[s + "ff.ff.0.proj.weight"], sd[s + "ff.ff.0.proj.bias"] = r(2 * ff, d), 0.1 * r(2 * ff)
        sd[s + "ff.ff.2.weight"], sd[s + "ff.ff.2.bias"] = r(d, ff), 0.1 * r(d)
        if cfg.qk_norm == "ln":
            for a in ("self_attn", "cross_attn"):
                for nm in ("q_norm", "k_norm"):
                    sd[f"{s}{a}.{nm}.weight"], sd[f"{s}{a}.{nm}.bias"] = 1 + 0.1 * r(dh), 0.1 * r(dh)
    return sd


@pytest.mark.parametrize("over", [
    {},  # SAO 1.0's options: context not projected (GQA), no qk-norm
    {"project_cond_tokens": True, "attn_kwargs": {"qk_norm": "ln"}, "input_concat_dim": 1},  # SAO Small's, + curve
], ids=["sao-1.0-options", "small-options-qknorm-curve"])
@torch.no_grad()
def test_stable_audio_tools_options_match_a_reference_from_its_source(over):
    base = SAODiTConfig(latent_channels=4, width=128, depth=2, heads=2, cond_dim=64, cross_dim=64,
                        global_dim=24, rotary_dim=32, freq_dim=32)
    diffusion = _sat_dit_config(base, **over)
    c = diffusion["config"]
    cfg = config_from_stable_audio(diffusion)
    assert cfg.cross_dim == (128 if c.get("project_cond_tokens") else 64)
    sd = _random_sat_state(cfg, seed=11)
    ours = SAODiT(cfg).eval()
    ours.load_state_dict(convert_stable_audio_state_dict(sd, cfg), strict=True)
    x, t, cross, glob, concat = _inputs(cfg, n=9)
    concat = concat if cfg.input_concat_dim else None
    ref = _sat_reference(sd, c, x, t, cross, glob, concat)
    assert rel_err(ours(x, t, cross, glob, concat), ref) <= REL


def test_unsupported_stable_audio_tools_options_are_refused():
    base = _sat_dit_config(PRESETS["sao-tiny"])
    for bad in ({"global_cond_type": "adaLN"}, {"patch_size": 2}, {"num_memory_tokens": 4},
                {"attn_kwargs": {"differential": True}}, {"some_new_option": 1}):
        with pytest.raises(BundleError, match="not supported"):
            config_from_stable_audio({**base, "config": {**base["config"], **bad}})
    with pytest.raises(BundleError, match="not a DiT"):
        config_from_stable_audio({"type": "adp_cfg_1d", "config": {}})


def test_wrong_weights_fail_with_names():
    cfg = PRESETS["sao-tiny"]
    sd = SAODiT(cfg).state_dict()
    sd.pop("blocks.1.ff.out.bias")
    with pytest.raises(BundleError, match="unrecognized keys"):
        convert_stable_audio_state_dict({"model.model.transformer.layers.0.mystery.weight": torch.zeros(1)}, cfg)
    from v2m.models.checkpoint import apply_state_dict

    with pytest.raises(BundleError, match="missing 1 keys: blocks.1.ff.out.bias"):
        apply_state_dict(SAODiT(cfg), sd, where="test")
    with pytest.raises(BundleError, match="divisible"):
        SAODiTConfig(width=100, heads=3)


def test_presets_have_the_published_sizes():
    with torch.device("meta"):
        n = {k: sum(p.numel() for p in SAODiT(v).parameters()) for k, v in PRESETS.items()}
    assert 1.0e9 < n["sao-1.0"] < 1.1e9  # 1.06B: SAO 1.0's DiT
    assert PRESETS["sao-1.0"].kv_heads == 12 and PRESETS["sao-1.0"].rotary_dim == 32
    assert PRESETS["sao-small"].kv_heads == 8 and PRESETS["sao-small"].rotary_dim == 64


def test_flops_count_every_matmul():
    """2 FLOPs per weight per token for the block linears (K/V hoisted), plus the attention products."""
    cfg = PRESETS["sao-tiny"]
    m = SAODiT(cfg)
    per_block = sum(p.numel() for n, p in m.blocks[0].named_parameters() if p.ndim == 2 and "cross.kv" not in n)
    n, s = 10, 7
    attn = 4 * (n + 1) ** 2 * cfg.width + 4 * (n + 1) * s * cfg.width
    io = 2 * n * (m.proj_in.weight.numel() + m.proj_out.weight.numel())
    assert cfg.flops(2, n, s) == 2 * (cfg.depth * (2 * per_block * (n + 1) + attn) + io)
