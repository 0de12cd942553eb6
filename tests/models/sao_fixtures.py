"""Shared builders for the Stable Audio Open tests: random diffusers modules with tiny configs, their
weights under stable-audio-tools' names (inverse maps written from its source, independent of the
converters), a T5-like tokenizer trained here, and whole downloaded-model folders of both layouts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

# A diffusers transformer in miniature with SAO 1.0's rules: 2 query heads of 64, 1 K/V head (GQA from
# 64-wide tokens, not projected: SAO 1.0's `project_cond_tokens: false`), partial rotary 32 (= stable-audio-tools' max(64 / 2, 32)), Fourier width 256 (fixed there).
DF_DIT = dict(sample_size=16, in_channels=4, num_layers=2, attention_head_dim=64, num_attention_heads=2,
              num_key_value_attention_heads=1, out_channels=4, cross_attention_dim=64, time_proj_dim=256,
              global_states_input_dim=128, cross_attention_input_dim=64)
DF_VAE = dict(encoder_hidden_size=4, channel_multiples=[1, 2, 2, 3, 4], downsampling_ratios=[2, 4, 4, 8, 8],
              decoder_channels=4, decoder_input_channels=4)  # SAO's strides: hop 2048
T5_TINY = dict(vocab_size=100, d_model=24, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=1, num_heads=3,
               relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0)
# fp32 parity bar of the issue: max |ours - reference| <= 1e-4 * max |reference|.
REL = 1e-4
CORPUS = ["warm synth pop with soft drums", "an epic orchestral trailer at 120 bpm", "lofi hip hop beat",
          "the sound of rain on a tin roof", "upbeat house track with a driving bassline"] * 20


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (LayerNorm biases, weight-norm gains, zero-init convs included), O(1) activations."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if ("norm" in name and name.endswith(("weight", "gamma"))) or name.endswith("weight_g"):
                p.copy_(1.0 + 0.1 * r) if "norm" in name else p.mul_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith(("alpha", "beta")):
                p.copy_(0.3 * r)
            elif p.ndim == 1 and "time_proj" not in name and "weights" not in name:
                p.copy_(0.1 * r)
            elif p.ndim >= 2 and not name.endswith("weight_v"):
                p.copy_(r / math.sqrt(p[0].numel()))
            elif p.ndim == 1:
                p.copy_(r)
    return module.eval()


def diffusers_dit(seed=0, **over):
    import diffusers

    return randomize(diffusers.StableAudioDiTModel(**{**DF_DIT, **over}), seed)


def diffusers_projection(text_dim, cond_dim, seed=0, lo=0, hi=512):
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    m = StableAudioProjectionModel(text_encoder_dim=text_dim, conditioning_dim=cond_dim, min_value=lo, max_value=hi)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m.eval()


def diffusers_vae(seed=0):
    import diffusers

    return randomize(diffusers.AutoencoderOobleck(**DF_VAE), seed)


def hf_t5(seed=0, **over):
    import transformers

    torch.manual_seed(seed)
    model = transformers.T5EncoderModel(transformers.T5Config(**{**T5_TINY, **over})).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g) if "layer_norm" in name
                    else torch.randn(p.shape, generator=g) * (1.0 if "relative" in name else 0.3))
    return model


def trained_tokenizer(path) -> str:
    """A T5-like tokenizer trained here (Unigram, Metaspace, `$A </s>`), independent of v2m's make_tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=80, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    tok.save(str(path))
    return str(path)


# --- stable-audio-tools names ------------------------------------------------------------------------
def dit_to_sat(sd: dict, depth: int, rotary_dim: int) -> dict:
    """diffusers transformer weights under stable-audio-tools' `DiffusionTransformer` names (the inverse of
    diffusers' scripts/convert_stable_audio.py, plus the buffers that script drops)."""
    p = "model.model."
    out = {p + "timestep_features.weight": sd["time_proj.weight"][:, None],  # FourierFeatures: [F/2, 1]
           p + "preprocess_conv.weight": sd["preprocess_conv.weight"],
           p + "postprocess_conv.weight": sd["postprocess_conv.weight"],
           p + "transformer.project_in.weight": sd["proj_in.weight"],
           p + "transformer.project_out.weight": sd["proj_out.weight"],
           p + "transformer.rotary_pos_emb.inv_freq":
               1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))}
    for a, b in (("timestep_proj", "to_timestep_embed"), ("global_proj", "to_global_embed"),
                 ("cross_attention_proj", "to_cond_embed")):
        for k in ("0.weight", "2.weight", "0.bias", "2.bias"):
            if f"{a}.{k}" in sd:
                out[f"{p}{b}.{k}"] = sd[f"{a}.{k}"]
    for i in range(depth):
        d, s = f"transformer_blocks.{i}.", f"{p}transformer.layers.{i}."
        for dn, sn in (("norm1", "pre_norm"), ("norm2", "cross_attend_norm"), ("norm3", "ff_norm")):
            out[s + sn + ".gamma"], out[s + sn + ".beta"] = sd[d + dn + ".weight"], sd[d + dn + ".bias"]
        out[s + "self_attn.to_qkv.weight"] = torch.cat([sd[d + f"attn1.to_{c}.weight"] for c in "qkv"])
        out[s + "self_attn.to_out.weight"] = sd[d + "attn1.to_out.0.weight"]
        out[s + "cross_attn.to_q.weight"] = sd[d + "attn2.to_q.weight"]
        out[s + "cross_attn.to_kv.weight"] = torch.cat([sd[d + "attn2.to_k.weight"], sd[d + "attn2.to_v.weight"]])
        out[s + "cross_attn.to_out.weight"] = sd[d + "attn2.to_out.0.weight"]
        out[s + "ff.ff.0.proj.weight"], out[s + "ff.ff.0.proj.bias"] = sd[d + "ff.net.0.proj.weight"], sd[d + "ff.net.0.proj.bias"]
        out[s + "ff.ff.2.weight"], out[s + "ff.ff.2.bias"] = sd[d + "ff.net.2.weight"], sd[d + "ff.net.2.bias"]
    return out


def projection_to_sat(sd: dict) -> dict:
    """StableAudioProjectionModel under stable-audio-tools' names: number conditioners at
    `conditioner.conditioners.<id>.embedder.embedding.*`, the text projection at the T5 conditioner's `proj_out`."""
    out = {f"conditioner.conditioners.prompt.proj_out.{k}": sd[f"text_projection.{k}"]
           for k in ("weight", "bias") if f"text_projection.{k}" in sd}
    for sat, df in (("seconds_start", "start_number_conditioner"), ("seconds_total", "end_number_conditioner")):
        for k in ("0.weights", "1.weight", "1.bias"):
            out[f"conditioner.conditioners.{sat}.embedder.embedding.{k}"] = sd[f"{df}.time_positional_embedding.{k}"]
    return out


def vae_to_sat(vae) -> dict:
    """AutoencoderOobleck under `pretransform.model.*` (test_vae's independent inverse map)."""
    from test_vae import _to_stable_audio

    return _to_stable_audio(vae, parametrized=False)


# --- whole folders ---------------------------------------------------------------------------------
def save_t5_dir(d: Path, model, tokenizer_json: str) -> Path:
    model.save_pretrained(d)
    (d / "tokenizer.json").write_text(Path(tokenizer_json).read_text())
    return d


def sat_model_config(dit_cfg: dict, frames: int, objective: str | None = None, **diffusion_over) -> dict:
    diffusion = {"type": "dit", "cross_attention_cond_ids": ["prompt", "seconds_start", "seconds_total"],
                 "global_cond_ids": ["seconds_start", "seconds_total"], "config": dit_cfg, **diffusion_over}
    if objective:
        diffusion["diffusion_objective"] = objective
    return {
        "model_type": "diffusion_cond", "sample_size": frames * 2048, "sample_rate": 44100, "audio_channels": 2,
        "model": {
            "pretransform": {"type": "autoencoder", "config": {
                "encoder": {"type": "oobleck", "config": {}},
                "decoder": {"type": "oobleck", "config": {"use_snake": True, "final_tanh": False}},
                "bottleneck": {"type": "vae"}, "latent_dim": 4, "downsampling_ratio": 2048, "io_channels": 2}},
            "conditioning": {"cond_dim": 64, "configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 12}},
                {"id": "seconds_start", "type": "number", "config": {"min_val": 0, "max_val": 512}},
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 512}}]},
            "diffusion": diffusion, "io_channels": 4},
    }


def make_sat_folder(root: Path, dit, projection, vae, frames: int = 8, **config_over) -> Path:
    """A stable-audio-tools download: model_config.json + model.safetensors (no T5), from diffusers modules."""
    root.mkdir(parents=True)
    c = dit.config
    dit_cfg = {"io_channels": c.out_channels, "embed_dim": c.num_attention_heads * c.attention_head_dim,
               "depth": c.num_layers, "num_heads": c.num_attention_heads, "cond_token_dim": c.cross_attention_input_dim,
               "global_cond_dim": c.global_states_input_dim, "project_cond_tokens": False,
               "transformer_type": "continuous_transformer"}
    if c.in_channels != c.out_channels:
        dit_cfg["input_concat_dim"] = c.in_channels - c.out_channels
    (root / "model_config.json").write_text(json.dumps(sat_model_config(dit_cfg, frames, **config_over)))
    sd = {**dit_to_sat(dit.state_dict(), c.num_layers, c.attention_head_dim // 2),
          **projection_to_sat(projection.state_dict()), **vae_to_sat(vae)}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / "model.safetensors"))
    return root


def make_diffusers_folder(root: Path, dit, projection, vae, t5, tokenizer_json: str, max_tokens: int = 12) -> Path:
    """A diffusers StableAudioPipeline folder, component by component (save_pretrained of each)."""
    root.mkdir(parents=True)
    dit.save_pretrained(root / "transformer")
    projection.save_pretrained(root / "projection_model")
    vae.save_pretrained(root / "vae")
    t5.save_pretrained(root / "text_encoder")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text(Path(tokenizer_json).read_text())
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_tokens}))
    (root / "scheduler").mkdir()  # what stable-audio-open-1.0 ships (written here: the class needs torchsde)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "CosineDPMSolverMultistepScheduler", "sigma_min": 0.3, "sigma_max": 500.0, "sigma_data": 1.0,
        "sigma_schedule": "exponential", "solver_order": 2, "prediction_type": "v_prediction", "rho": 7.0,
        "solver_type": "midpoint", "lower_order_final": True, "euler_at_final": False, "final_sigmas_type": "zero"}))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableAudioPipeline"}))
    return root
