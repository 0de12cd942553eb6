"""`v2m convert` and SAO bundles: both downloaded layouts to a bundle whose every component equals the
diffusers module it came from; the curve channel; bundle config; random SAO presets; one-line errors."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from v2m.cli.main import main
from v2m.core.bundle import SAO_PRESET_NAMES, BundleConfig, load_config
from v2m.core.errors import BundleError, InputError, OutputError
from v2m.families import sao as sao_rt
from v2m.models.bundle import PRESET_NAMES, init_bundle, load_component
from v2m.models.sao_bundle import SAO_PRESETS, convert
from v2m.models.vae import OobleckDecoder
from v2m.runtime.text import load_text_encoder

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
from diffusers.models.embeddings import get_1d_rotary_pos_embed  # noqa: E402
from sao_fixtures import (  # noqa: E402
    REL,
    diffusers_dit,
    diffusers_projection,
    diffusers_vae,
    hf_t5,
    make_diffusers_folder,
    make_sat_folder,
    rel_err,
    save_t5_dir,
    trained_tokenizer,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")



@pytest.fixture(scope="module")
def parts():
    """Random diffusers modules: DiT, projection (T5 width 24 -> 64: a text projection), VAE, T5."""
    return {"dit": diffusers_dit(seed=1), "projection": diffusers_projection(24, 64, seed=2),
            "vae": diffusers_vae(seed=3), "t5": hf_t5(seed=4)}


@pytest.fixture(scope="module")
def folders(parts, tmp_path_factory):
    root = tmp_path_factory.mktemp("sao")
    tok = trained_tokenizer(root / "tokenizer.json")
    t5_dir = save_t5_dir(root / "t5", parts["t5"], tok)
    sat = make_sat_folder(root / "sat", parts["dit"], parts["projection"], parts["vae"])
    df = make_diffusers_folder(root / "df", parts["dit"], parts["projection"], parts["vae"], parts["t5"], tok)
    return {"root": root, "t5": t5_dir, "sat": sat, "df": df,
            "sat_bundle": convert(sat, root / "sat-bundle", t5_dir=t5_dir),
            "df_bundle": convert(df, root / "df-bundle")}


def _dit_inputs(b=2, n=8, s=12 + 2):
    g = torch.Generator().manual_seed(9)
    t = torch.tensor([0.3, 500.0]).atan() * 2 / math.pi
    return (torch.randn(b, 4, n, generator=g), t, torch.randn(b, s, 64, generator=g), torch.randn(b, 128, generator=g))


@torch.no_grad()
def test_vae_parity_with_sao_strides(parts, tmp_path):
    vae = parts["vae"]
    vae.save_pretrained(tmp_path / "vae")
    ours = OobleckDecoder.from_pretrained(tmp_path / "vae")
    assert ours.cfg.strides == (2, 4, 4, 8, 8) and ours.hop_length == 2048 and ours.tail == 0
    z = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    ref = vae.decode(z).sample
    assert ours(z).shape == ref.shape == (2, 2, 5 * 2048)
    assert rel_err(ours(z), ref) <= REL


@pytest.mark.parametrize("layout", ["sat_bundle", "df_bundle"])
@torch.no_grad()
def test_converted_components_equal_diffusers(folders, parts, layout):
    bundle = folders[layout]
    cfg = load_config(bundle)
    sao = cfg.sao_config
    assert cfg.family == "sao" and sao.objective == "v" and (sao.sigma_min, sao.sigma_max) == (0.3, 500.0)
    assert sao.sampler == "dpmpp-2m-sde" and sao.sigma_schedule == "exponential"
    assert (cfg.sampler.steps, cfg.sampler.cfg_scale) == (100, 7.0)
    assert sao.latent_frames == (8 if layout == "sat_bundle" else 16) == cfg.sampler.max_frames
    assert cfg.audio.hop_length == 2048 and cfg.text["max_tokens"] == 12 and cfg.text_dim == 24
    dit, cond, vae = (load_component(bundle, n) for n in ("dit", "cond", "vae"))
    x, t, cross, glob = _dit_inputs()
    rot = get_1d_rotary_pos_embed(32, x.shape[-1] + 1, use_real=True, repeat_interleave_real=False)
    ref = parts["dit"](x, t, encoder_hidden_states=cross, global_hidden_states=glob[:, None], rotary_embedding=rot,
                       return_dict=False)[0]
    assert rel_err(dit(x, t, cross, glob), ref) <= REL
    text, mask = torch.randn(2, 12, 24), torch.ones(2, 12)
    mask[1, 5:] = 0
    out = parts["projection"](text_hidden_states=text, start_seconds=torch.tensor([0.0, 2.0]),
                              end_seconds=torch.tensor([10.0, 30.0]))
    want = torch.cat([out.text_hidden_states * mask[:, :, None], out.seconds_start_hidden_states,
                      out.seconds_end_hidden_states], 1)
    got, glob_got = cond(text, mask, torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
    assert rel_err(got, want) <= REL
    assert rel_err(glob_got, torch.cat([out.seconds_start_hidden_states, out.seconds_end_hidden_states], 2)[:, 0]) <= REL
    z = torch.randn(1, 4, 3)
    assert rel_err(vae(z), parts["vae"].decode(z).sample) <= REL
    # The text side: tokenizer + T5 from the bundle against transformers' T5 on the same ids.
    enc = load_text_encoder(bundle, cfg.text, cfg.text_dim)
    emb, m = enc.encode("warm synth pop with soft drums")
    ids, mk = enc.tokenizer(["warm synth pop with soft drums"])
    want = parts["t5"](input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mk)).last_hidden_state[0]
    assert emb.shape == (12, 24) and m.sum() == mk.sum() > 3
    assert rel_err(torch.from_numpy(emb), want * torch.from_numpy(mk[0])[:, None]) <= REL


@torch.no_grad()
def test_diffusers_bundle_carries_the_vae_encoder(folders, parts):
    from v2m.models.vae_encoder import load_vae_encoder

    enc = load_vae_encoder(folders["df_bundle"])
    audio = 0.3 * torch.randn(1, 2, 2048 * 3, generator=torch.Generator().manual_seed(0))
    want = parts["vae"].encode(audio).latent_dist.mean
    assert rel_err(enc.encode(audio), want) <= REL


@torch.no_grad()
def test_both_layouts_give_the_same_bundle_weights(folders):
    for name in ("dit", "cond", "vae", "text"):
        a, b = (load_component(folders[k], name).state_dict() for k in ("sat_bundle", "df_bundle"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@torch.no_grad()
def test_add_curve_channel_keeps_outputs_bit_identical(folders):
    out = convert(folders["df"], folders["root"] / "curve-bundle", add_curve_channel=True)
    assert load_config(out).dit["input_concat_dim"] == 1
    plain, curved = load_component(folders["df_bundle"], "dit"), load_component(out, "dit")
    x, t, cross, glob = _dit_inputs()
    curve = torch.rand(2, 1, x.shape[-1])
    assert torch.equal(curved(x, t, cross, glob, curve), plain(x, t, cross, glob))


@torch.no_grad()
def test_a_curve_trained_checkpoint_loads_as_is(parts, folders):
    """input_concat_dim = 1 in stable-audio-tools' config: the widened weights load unchanged."""
    wide = diffusers_dit(seed=6, in_channels=5)
    src = make_sat_folder(folders["root"] / "sat-curve", wide, parts["projection"], parts["vae"])
    out = convert(src, folders["root"] / "sat-curve-bundle", t5_dir=folders["t5"])
    dit = load_component(out, "dit")
    assert dit.cfg.input_concat_dim == 1
    x, t, cross, glob = _dit_inputs()
    curve = torch.rand(2, 1, x.shape[-1])
    rot = get_1d_rotary_pos_embed(32, x.shape[-1] + 1, use_real=True, repeat_interleave_real=False)
    ref = wide(torch.cat([x, curve], 1), t, encoder_hidden_states=cross, global_hidden_states=glob[:, None],
               rotary_embedding=rot, return_dict=False)[0]
    assert rel_err(dit(x, t, cross, glob, curve), ref) <= REL
    with pytest.raises(BundleError, match="already has 1 input-concat"):
        convert(src, folders["root"] / "twice", t5_dir=folders["t5"], add_curve_channel=True)
    assert not (folders["root"] / "twice").exists()


def test_objective_and_its_defaults_come_from_the_config(parts, folders):
    src = make_sat_folder(folders["root"] / "sat-rf", parts["dit"], parts["projection"], parts["vae"],
                          objective="rf_denoiser")
    cfg = load_config(convert(src, folders["root"] / "sat-rf-bundle", t5_dir=folders["t5"]))
    sao = cfg.sao_config
    assert (sao.objective, sao.sampler, sao.sigma_schedule, sao.sigma_min, sao.sigma_max) == \
        ("rf_denoiser", "pingpong", "logsnr", 0.0, 1.0)
    assert (cfg.sampler.steps, cfg.sampler.cfg_scale) == (8, 1.0)


def test_errors_are_one_line_and_leave_nothing(folders, tmp_path, capsys):
    root = folders["root"]
    with pytest.raises(InputError, match="pass --t5"):
        convert(folders["sat"], tmp_path / "a")
    with pytest.raises(InputError, match="not a Stable Audio Open folder"):
        convert(folders["t5"], tmp_path / "a")
    with pytest.raises(OutputError, match="not empty"):
        convert(folders["df"], folders["sat_bundle"])
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(folders["sat"] / "model_config.json", ckpt)
    (ckpt / "model.ckpt").write_bytes(b"pickle")
    with pytest.raises(BundleError, match="model.ckpt is pickled"):
        convert(ckpt, tmp_path / "a", t5_dir=folders["t5"])
    # Wrong weights fail after loading but before anything is written; no temp folder is left.
    bad = tmp_path / "bad"
    shutil.copytree(folders["df"], bad)
    (bad / "transformer" / "config.json").write_text(json.dumps(
        {**json.loads((bad / "transformer" / "config.json").read_text()), "num_layers": 3}))
    with pytest.raises(BundleError, match="missing .* keys: blocks.2"):
        convert(bad, tmp_path / "a")
    assert not (tmp_path / "a").exists() and not any(p.name.startswith(".a-") for p in tmp_path.iterdir())
    # The CLI: one line on stderr, exit code 2.
    assert main(["convert", str(folders["sat"]), "-o", str(tmp_path / "cli")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("v2m: error:") and "--t5" in err[0]
    assert main(["convert", str(folders["sat"]), "-o", str(tmp_path / "cli"), "--t5", str(folders["t5"])]) == 0
    assert "Stable Audio Open (v objective, 8 latent frames" in capsys.readouterr().out
    assert load_config(tmp_path / "cli").family == "sao"
    del root


def test_sao_bundle_config_round_trip_and_old_bundles(tiny_bundle, tmp_path):
    cfg = load_config(init_bundle("sao-small-tiny", tmp_path / "s", seed=1))
    assert BundleConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.sao_config.objective == "rf_denoiser" and cfg.sao_config.seconds_names == ["seconds_total"]
    old = json.loads((tiny_bundle / "config.json").read_text())
    assert "family" not in old and load_config(tiny_bundle).family == "v2m"  # V2M-Zero bundles unchanged
    with pytest.raises(BundleError, match="not a Stable Audio Open"):
        _ = load_config(tiny_bundle).sao_config
    for bad, msg in (({"family": "musicgen"}, "unknown model family"), ({"family": "v2m"}, "goes with family"),
                     ({"sao": {**cfg.sao, "objective": "eps"}}, "objective must be one of")):
        with pytest.raises(BundleError, match=msg):
            BundleConfig.from_dict({**cfg.to_dict(), **bad})
    assert set(SAO_PRESET_NAMES) == set(SAO_PRESETS) and set(SAO_PRESETS) <= set(PRESET_NAMES)


@torch.no_grad()
def test_init_model_sao_tiny_runs_every_component(tmp_path, short_video, capsys):
    assert main(["init-model", "--preset", "sao-tiny", "-o", str(tmp_path / "b")]) == 0
    b = tmp_path / "b"
    cfg = load_config(b)
    enc = load_text_encoder(b, cfg.text, cfg.text_dim)
    emb, mask = enc.encode("Warm synth pop")
    assert emb.shape == (16, 32) and mask.sum() == 4  # three words and </s>
    cond, dit, vae = (load_component(b, n) for n in ("cond", "dit", "vae"))
    seconds = torch.from_numpy(sao_rt.seconds_values(cfg.sao_config.seconds_names, 5.0))[None]
    cross, glob = cond(torch.from_numpy(emb)[None], torch.from_numpy(mask)[None], seconds)
    frames = cfg.sao_config.latent_frames
    out = dit(torch.randn(1, 8, frames), torch.tensor([0.5]), cross, glob)
    assert out.shape == (1, 8, frames) and torch.isfinite(out).all()
    audio = vae(out)
    assert audio.shape == (1, 2, frames * 2048) and np.isfinite(audio.numpy()).all()
    assert load_component(b, "encoder") is not None
    # The CLI generates with it: its own sampler (DPM++ 2M SDE), its length, cropped to the video.
    capsys.readouterr()
    assert main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "--model", str(b), "--steps", "3",
                 "--seed", "1", "-q"]) == 0, capsys.readouterr().err
    audio, rate = __import__("soundfile").read(tmp_path / "o.wav")
    assert rate == 44100 and abs(audio.shape[0] - short_video.duration_s * rate) <= 2048
