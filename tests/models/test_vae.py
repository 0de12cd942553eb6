"""Oobleck VAE decoder: parity with diffusers, the foreign layouts, lengths, strict loading."""

import json

import pytest
import torch
from oobleck_ref import diffusers_vae  # noqa: E402

from v2m.core.errors import BundleError
from v2m.models.checkpoint import save_safetensors
from v2m.models.vae import (
    PRESETS,
    OobleckConfig,
    OobleckDecoder,
    convert_diffusers_state_dict,
    convert_stable_audio_state_dict,
    fold_weight_norm,
    infer_config,
)

diffusers = pytest.importorskip("diffusers")

# diffusers' Oobleck still uses torch.nn.utils.weight_norm, which torch marks deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")

# Small diffusers configs: one with all-even strides (diffusers' default ratios, where the
# reference is exactly L * hop long) and one with v2m's strides, hop 3584.
SMALL = dict(encoder_hidden_size=4, channel_multiples=[1, 2, 3], downsampling_ratios=[2, 4, 2],
             decoder_channels=4, decoder_input_channels=3)
HOP3584 = dict(encoder_hidden_size=4, channel_multiples=[1, 2, 2, 3, 4], downsampling_ratios=[2, 4, 7, 8, 8],
               decoder_channels=4, decoder_input_channels=5)

# Our weights are folded once in float64 and rounded to float32; diffusers recomputes
# g * v / ||v|| in float32 on every call. The weights then differ by about one ulp
# (~6e-8 relative); ~20 conv layers and the Snake nonlinearities carry that to about
# 1e-7 absolute at outputs of ~0.3 (measured). Everything else is the same ops in the
# same order. 1e-5 of max(1, output scale) leaves ~100x margin and still catches a wrong
# fold axis or Snake formula (errors ~1e-1).
RTOL_SCALE = 1e-5


def _latents(c: int, n: int, b: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randn(b, c, n, generator=torch.Generator().manual_seed(seed))


def _assert_parity(ours: torch.Tensor, ref: torch.Tensor, tail: int = 0) -> None:
    """`ours` equals `ref` on ref's length; any extra `tail` repeats ref's last sample."""
    assert ours.shape[-1] == ref.shape[-1] + tail
    err = (ours[..., : ref.shape[-1]] - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert err <= RTOL_SCALE * scale, f"max abs error {err:.3g} at output scale {scale:.3g}"
    if tail:
        torch.testing.assert_close(ours[..., ref.shape[-1] :], ref[..., -1:].expand(*ref.shape[:-1], tail))


def _ours_from(vae) -> OobleckDecoder:
    cfg = OobleckConfig(
        latent_channels=vae.config.decoder_input_channels,
        channels=vae.config.decoder_channels,
        channel_multiples=vae.config.channel_multiples,
        strides=vae.config.downsampling_ratios,
        audio_channels=vae.config.audio_channels,
    )
    model = OobleckDecoder(cfg)
    model.load_state_dict(convert_diffusers_state_dict(vae.state_dict()), strict=True)
    return model.eval()


@pytest.mark.parametrize("config,tail", [(SMALL, 0), (HOP3584, 8)], ids=["even-strides", "hop3584"])
@torch.no_grad()
def test_parity_with_diffusers(config, tail):
    vae = diffusers_vae(config)
    ours = _ours_from(vae)
    assert ours.tail == tail
    z = _latents(config["decoder_input_channels"], 5)
    ref = vae.decode(z).sample
    out = ours(z)
    assert out.shape == (2, 2, 5 * ours.hop_length)
    _assert_parity(out, ref, tail)
    # The native model has plain parameters only: no weight-norm leftovers.
    assert not any(k.endswith(("weight_g", "weight_v")) or "parametrizations" in k for k in ours.state_dict())


@torch.no_grad()
def test_from_pretrained_diffusers_directory(tmp_path):
    vae = diffusers_vae(HOP3584, seed=5)
    vae.save_pretrained(tmp_path / "vae")
    assert (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    ours = OobleckDecoder.from_pretrained(tmp_path)  # a pipeline directory with a vae/ folder
    assert ours.cfg.hop_length == 3584 and ours.cfg.latent_channels == 5
    assert ours.cfg.channel_multiples == (1, 2, 2, 3, 4)
    z = _latents(5, 3, b=1)
    _assert_parity(ours(z), vae.decode(z).sample, ours.tail)

    # Already folded weights under diffusers' names, and the native layout with our config.
    folded = tmp_path / "folded"
    folded.mkdir()
    (folded / "config.json").write_text((tmp_path / "vae" / "config.json").read_text())
    save_safetensors({f"decoder.{k}": v for k, v in ours.state_dict().items()},
                     folded / "diffusion_pytorch_model.safetensors")
    torch.testing.assert_close(OobleckDecoder.from_pretrained(folded)(z), ours(z), atol=0, rtol=0)
    native = tmp_path / "native"
    native.mkdir()
    (native / "config.json").write_text(json.dumps(ours.cfg.to_dict()))
    save_safetensors(ours.state_dict(), native / "vae.safetensors")
    torch.testing.assert_close(OobleckDecoder.from_pretrained(native)(z), ours(z), atol=0, rtol=0)


def _to_stable_audio(vae, parametrized: bool) -> dict[str, torch.Tensor]:
    """diffusers decoder weights renamed to stable-audio-tools' layout (the inverse map,
    built independently of the converter): an autoencoder nested in a whole model."""
    n = len(vae.decoder.block)
    top = {"conv1": "0", "snake1": str(n + 1), "conv2": str(n + 2)}
    sub = {"snake1": "0", "conv_t1": "1", "res_unit1": "2", "res_unit2": "3", "res_unit3": "4"}
    res = {"snake1": "0", "conv1": "1", "snake2": "2", "conv2": "3"}
    out = {}
    for key, value in vae.state_dict().items():
        if not key.startswith("decoder."):
            out["pretransform.model." + key] = value  # encoder keys: must be ignored
            continue
        parts = key.split(".")[1:]
        if parts[0] == "block":
            names = [str(int(parts[1]) + 1), sub[parts[2]]]
            rest = parts[3:]
            if parts[2].startswith("res_unit"):
                names.append(res[rest[0]])
                rest = rest[1:]
        else:
            names, rest = [top[parts[0]]], parts[1:]
        param = rest[0]
        if param in ("alpha", "beta"):
            value = value.reshape(-1)  # stable-audio-tools' SnakeBeta keeps (C,)
        elif parametrized:
            param = {"weight_g": "parametrizations.weight.original0",
                     "weight_v": "parametrizations.weight.original1"}.get(param, param)
        out["pretransform.model.decoder.layers." + ".layers.".join(names) + "." + param] = value
    return out


@pytest.mark.parametrize("parametrized", [False, True], ids=["weight_g_v", "parametrizations"])
@torch.no_grad()
def test_stable_audio_layout(parametrized):
    vae = diffusers_vae(HOP3584, seed=7)
    sd = _to_stable_audio(vae, parametrized)
    assert "pretransform.model.decoder.layers.1.layers.2.layers.1.weight_v" in sd or parametrized
    native = convert_stable_audio_state_dict(sd)
    assert set(native) == set(_ours_from(vae).state_dict())
    ours = OobleckDecoder.from_stable_audio(sd)
    assert ours.cfg == OobleckConfig(5, 4, (1, 2, 2, 3, 4), (2, 4, 7, 8, 8), 2, 44100)
    z = _latents(5, 4)
    _assert_parity(ours(z), vae.decode(z).sample, ours.tail)

    sd["pretransform.model.decoder.layers.1.layers.0.act.alpha"] = torch.zeros(3)  # antialiased Snake
    with pytest.raises(BundleError, match="layers.1.layers.0.act.alpha"):
        convert_stable_audio_state_dict(sd)


def test_fold_weight_norm_axes():
    # ConvTranspose1d weight (in, out, k) is normed per input channel (dim 0), like Conv1d's
    # per output channel: the folded weight has norm g along every slice of axis 0.
    for conv in (torch.nn.Conv1d(3, 5, 4), torch.nn.ConvTranspose1d(3, 5, 4)):
        wn = torch.nn.utils.weight_norm(conv)
        with torch.no_grad():
            wn.weight_g.mul_(torch.rand(wn.weight_g.shape) + 0.5)
        w = fold_weight_norm(wn.weight_g, wn.weight_v)
        torch.testing.assert_close(w, torch.nn.utils.remove_weight_norm(wn).weight.detach())
    with pytest.raises(BundleError, match="does not fit"):
        fold_weight_norm(torch.ones(4, 1, 1), torch.ones(3, 2, 2))


@pytest.mark.parametrize("n", [1, 2, 7])
@torch.no_grad()
def test_output_length_and_channels(n):
    cfg = OobleckConfig(latent_channels=3, channels=2)
    model = OobleckDecoder(cfg).eval()
    assert cfg.hop_length == 3584 and model.tail == 8
    assert model(_latents(3, n, b=1)).shape == (1, 2, n * 3584)


def test_presets_and_config_round_trip():
    for name, cfg in PRESETS.items():
        assert cfg.hop_length == 3584, name
        assert cfg.audio_channels == 2 and cfg.sample_rate == 44100
        assert OobleckConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
        assert infer_config(OobleckDecoder(cfg).state_dict()) == cfg
    assert abs(PRESETS["full"].frame_rate - 12.305) < 1e-3
    assert (PRESETS["full"].channels, PRESETS["full"].latent_channels) == (128, 64)
    with pytest.raises(BundleError, match="unknown keys"):
        OobleckConfig.from_dict({**PRESETS["tiny"].to_dict(), "hop": 3584})
    with pytest.raises(BundleError, match="strides"):
        OobleckConfig(strides=(2, 4), channel_multiples=(1, 2, 4))


@torch.no_grad()
def test_tiny_preset_five_seconds():
    """Five seconds of audio from the tiny preset: shape and finiteness. How fast is bench's question
    (`python bench/bench_vae.py --preset tiny --device cpu --lengths 62`); no test reads the clock."""
    model = OobleckDecoder.from_config(PRESETS["tiny"].to_dict()).eval()
    z = _latents(16, 62, b=1)  # 5 s at 12.3 latent frames/s
    audio = model(z)
    assert audio.shape == (1, 2, 62 * 3584) and torch.isfinite(audio).all()


def _native_checkpoint(tmp_path, state):
    d = tmp_path / "ckpt"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(OobleckConfig(latent_channels=3, channels=2).to_dict()))
    save_safetensors(state, d / "vae.safetensors")
    return d


def test_wrong_checkpoint_names_the_key(tmp_path):
    good = OobleckDecoder(OobleckConfig(latent_channels=3, channels=2)).state_dict()
    missing = {k: v for k, v in good.items() if k != "block.2.res_unit3.conv1.bias"}
    with pytest.raises(BundleError, match=r"missing 1 keys: block\.2\.res_unit3\.conv1\.bias"):
        OobleckDecoder.from_pretrained(_native_checkpoint(tmp_path, missing))
    wrong = {**good, "conv1.weight": torch.zeros(32, 4, 7)}
    with pytest.raises(BundleError, match=r"conv1\.weight \(32, 4, 7\) != expected \(32, 3, 7\)"):
        OobleckDecoder.from_pretrained(_native_checkpoint(tmp_path, wrong))
    with pytest.raises(BundleError, match=r"conv2\.weight_v has no matching"):
        convert_diffusers_state_dict({"decoder.conv2.weight_v": good["conv2.weight"]})
    (tmp_path / "ckpt" / "vae.safetensors").unlink()
    with pytest.raises(BundleError, match="no safetensors"):
        OobleckDecoder.from_pretrained(tmp_path / "ckpt")
    with pytest.raises(BundleError, match="no config.json"):
        OobleckDecoder.from_pretrained(tmp_path)
