"""Training: the synthetic corpus, a few steps that lower the loss, exact resumption, the bundle it writes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from v2m.cli.main import main  # noqa: E402
from v2m.core import curves  # noqa: E402
from v2m.runtime.music import music_curve  # noqa: E402
from v2m.train import autoencoder as ae  # noqa: E402
from v2m.train import dit, synth_music  # noqa: E402
from v2m.train.data import FolderSource, SynthSource  # noqa: E402

RATE = 44100 / 3584


# --- the corpus --------------------------------------------------------------------------------
def test_clips_are_deterministic_and_distinct():
    a, b = synth_music.make_clip(3, 5, 4.0), synth_music.make_clip(3, 5, 4.0)
    assert np.array_equal(a.audio, b.audio) and a.caption == b.caption and a.events == b.events
    c = synth_music.make_clip(3, 6, 4.0)
    assert not np.array_equal(a.audio, c.audio)
    assert a.audio.shape == (2, 4 * 44100) and a.audio.dtype == np.float32
    assert np.abs(a.audio).max() == pytest.approx(0.9, abs=1e-6)


def test_events_follow_the_spec():
    for i in range(30):
        p = synth_music.clip_params(0, i, 6.0)
        times = [t for t, _ in p.events]
        assert 1 <= len(times) <= 4 and times == sorted(times)
        assert all(0.6 <= t <= 5.4 for t in times) and all(b - a >= 0.9 for a, b in zip(times, times[1:]))
        assert 80 <= p.bpm <= 160
        sections = [t for t, k in p.events if k in ("section", "chord")]
        # each section / chord event starts a section (event times are reported to 0.1 ms)
        np.testing.assert_allclose([s.start for s in p.sections[1:]], sections, atol=1e-4)
        cap = synth_music.caption(p)
        assert f"{round(p.bpm)} bpm" in cap and ("minor" in cap) == p.minor


def test_music_curve_finds_the_events():
    """The corpus is built so that its music curve peaks on its events (measured on 40 clips:
    79%-91% within 0.25 s depending on settings); here 10 clips, at least 70%."""
    hits = total = 0
    for i in range(10):
        clip = synth_music.make_clip(1, i, 12.0)
        c = music_curve(clip.audio, 44100, kernel=11)
        events = [t for t, _ in clip.events]
        peaks = curves.curve_peaks(c, len(events)) / RATE
        hits += sum(any(abs(p - t) <= 0.25 for p in peaks) for t in events)
        total += len(events)
    assert hits / total >= 0.7


def test_folder_source(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "a.wav", np.zeros((22050 * 5, 2), np.float32), 22050)  # resampled to 44.1 kHz stereo
    sf.write(tmp_path / "b.flac", np.zeros(44100 * 2, np.float32), 44100)
    (tmp_path / "captions.jsonl").write_text('{"file": "a.wav", "caption": "quiet"}\n{"file": "b.flac", "caption": "x"}\n')
    src = FolderSource(tmp_path, duration_s=2.0)
    assert len(src) == 3  # a: two 2 s clips (the last 1 s dropped); b: one
    audio, caption, events = src.clip(1)
    assert audio.shape == (2, 88200) and caption == "quiet" and events is None
    (tmp_path / "captions.jsonl").write_text('{"file": "a.wav", "caption": "quiet"}\n')
    with pytest.raises(Exception, match="no caption for b.flac"):
        FolderSource(tmp_path)


# --- training ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ae_run(tmp_path_factory):
    """A tiny autoencoder trained for 6 steps (about a second a step on 2 cores)."""
    out = tmp_path_factory.mktemp("ae") / "run"
    ae.train_autoencoder(out, SynthSource(0, 4, 2.0), ae.AE_PRESETS["tiny"], ae.AE_TRAIN_PRESETS["tiny"], seed=0,
                         threads=2, progress=False)
    return out


def test_autoencoder_run_files(ae_run):
    for name in ("ckpt.pt", "decoder.safetensors", "encoder.safetensors", "losses.json", "run.json", "timing.json"):
        assert (ae_run / name).is_file(), name
    if pytest.importorskip("matplotlib"):
        assert (ae_run / "losses.png").stat().st_size > 1000
    losses = json.loads((ae_run / "losses.json").read_text())
    assert len(losses["train"]["loss"]) == 6 and "stft" in losses["eval"]
    model = ae.load_autoencoder(ae_run)
    z, _ = model.encoder(torch.zeros(1, 2, 3 * 3584))
    assert z.shape == (1, 4, 3) and model.decoder(z).shape == (1, 2, 3 * 3584)


def test_mrstft_loss_oracle():
    """Identical signals: 0; a signal against silence: spectral convergence 1 plus the log gap."""
    x = torch.randn(1, 2, 8192)
    assert ae.mrstft_loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    assert ae.mrstft_loss(torch.zeros_like(x), x).item() > 1.0


def test_a_few_steps_lower_the_loss(tmp_path):
    """The demo-size autoencoder and DiT on real batches: 15 steps at a fixed batch lower the loss."""
    torch.manual_seed(0)
    model = ae.Autoencoder(ae.AE_PRESETS["demo"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.from_numpy(synth_music.make_clip(0, 0, 2.0).audio[None, :, : 4 * 3584].copy())
    first = last = None
    for _ in range(15):
        recon, mean, logvar = model(x, torch.Generator().manual_seed(0))
        loss = ae.mrstft_loss(recon, x) + 0.1 * (recon - x).abs().mean() + 1e-3 * ae.kl_loss(mean, logvar)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
        last = loss.item()
    assert last < 0.8 * first

    net = dit.Conditioned(dit.DIT_PRESETS["demo"], 256)
    net.dit.init_weights(torch.Generator().manual_seed(0), zero_init=True)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    x1 = torch.randn(4, 16, 24)
    curve, ids, drop = torch.randn(4, 1, 24), torch.randint(1, 256, (4, 8)), torch.zeros(4)
    losses = []
    for _ in range(15):
        loss = dit._flow_loss(net, x1, curve, ids, drop, torch.Generator().manual_seed(1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def _dit_run(out, ae_run, steps=6, stop_at=None):
    tc = replace(dit.DIT_TRAIN_PRESETS["tiny"], steps=steps)
    return dit.train_dit(out, SynthSource(0, 6, 2.0), ae_run, tc, seed=0, threads=2, progress=False, workers=1,
                         stop_at=stop_at)


def test_dit_resumes_exactly(ae_run, tmp_path):
    """6 steps straight equal 4 steps, stop, and 2 more from the checkpoint: weights bit for bit."""
    _dit_run(tmp_path / "straight", ae_run)
    _dit_run(tmp_path / "resumed", ae_run, stop_at=4)  # stops after step 4 (a checkpoint is saved there)
    assert torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)["step"] == 4
    _dit_run(tmp_path / "resumed", ae_run)
    a = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert a["losses"]["train"] == b["losses"]["train"]


def test_dit_bundle_generates_and_exports(ae_run, tmp_path, short_video):
    from v2m.runtime import Pipeline

    bundle = _dit_run(tmp_path / "run", ae_run)
    cfg = json.loads((bundle / "config.json").read_text())
    assert cfg["encoder"]["kind"] == "cut" and cfg["curve"]["kernel"] == 5 and cfg["dit"]["width"] == 32
    assert not (bundle / "encoder.safetensors").exists()
    res = Pipeline.from_pretrained(bundle).generate(short_video.path, seed=0, steps=2)
    assert res.audio.shape == (2, int(round(2.0 * 44100))) and np.isfinite(res.audio).all()
    pytest.importorskip("onnxruntime")
    assert main(["export", str(bundle), "-o", str(tmp_path / "onnx")]) == 0


def test_latent_scale_is_folded_into_the_decoder(ae_run, tmp_path):
    """decoder'(z / s) == decoder(z): the bundle's VAE takes the DiT's unit-variance latents."""
    from v2m.models.bundle import load_component

    bundle = _dit_run(tmp_path / "run", ae_run)
    model, scale = dit.load_trained(tmp_path / "run")
    vae = load_component(bundle, "vae")
    z = torch.randn(1, 4, 5)
    ref = ae.load_autoencoder(ae_run).decoder(z)
    got = vae(z / torch.from_numpy(scale)[None, :, None])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)


def test_spike_curve_shape():
    rng = np.random.default_rng(0)
    c = dit.spike_curve(np.array([20, 61]), 100, 5, rng)
    assert c.shape == (100,) and abs(c.mean()) < 0.05
    top = sorted(curves.curve_peaks(c, 2))
    assert top == [20, 61]


def test_train_cli(tmp_path, capsys):
    rc = main(["train", "autoencoder", "--preset", "tiny", "--clips", "4", "--clip-seconds", "2", "-o",
               str(tmp_path / "ae"), "--quiet"])
    assert rc == 0 and "decoder.safetensors" in capsys.readouterr().out
    rc = main(["train", "dit", "--preset", "tiny", "--autoencoder", str(tmp_path / "ae"), "--clips", "6",
               "--clip-seconds", "2", "-o", str(tmp_path / "dit"), "--quiet", "--encoder", "motion"])
    assert rc == 0 and json.loads((tmp_path / "dit" / "bundle" / "config.json").read_text())["encoder"]["kind"] == "motion"
    # a run directory of the other kind, bad values: one line, exit 2
    rc = main(["train", "dit", "--preset", "tiny", "--autoencoder", str(tmp_path / "ae"), "-o", str(tmp_path / "ae"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds a 'autoencoder' run" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "autoencoder", "-o", str(tmp_path / "x"), "--steps", "0"]) == 2
    assert main(["train", "dit", "--autoencoder", str(tmp_path / "nope"), "-o", str(tmp_path / "y"), "-q",
                 "--preset", "tiny", "--clips", "2", "--clip-seconds", "2"]) == 2


def test_resume_refuses_other_settings_and_times_add_up(ae_run, tmp_path):
    """Rerunning a finished run with other settings is one clear error; timing.json adds up invocations."""
    from v2m.core.errors import InputError

    with pytest.raises(InputError, match="other settings"):
        ae.train_autoencoder(ae_run, SynthSource(0, 4, 2.0), ae.AE_PRESETS["tiny"],
                             replace(ae.AE_TRAIN_PRESETS["tiny"], lr=5e-4), seed=0, threads=2, progress=False)
    timing = json.loads((ae_run / "timing.json").read_text())
    assert len(timing["runs"]) == 1 and timing["runs"][0]["steps"] == [0, 6]
    ae.train_autoencoder(ae_run, SynthSource(0, 4, 2.0), ae.AE_PRESETS["tiny"], ae.AE_TRAIN_PRESETS["tiny"], seed=0,
                         threads=2, progress=False)  # finished: nothing to train, one more invocation recorded
    timing = json.loads((ae_run / "timing.json").read_text())
    assert [r["steps"] for r in timing["runs"]] == [[0, 6], [6, 6]]
    assert timing["wall_s"] == pytest.approx(sum(r["wall_s"] for r in timing["runs"]), abs=0.11)


def test_oobleck_autoencoder_bundle_carries_its_encoder(tmp_path, short_video):
    """An "oobleck" autoencoder run writes the bundle's `vae_encoder`: the bundle's encoder gives the
    DiT's latents (the run's posterior mean over the latent scale, computed here from the run's own
    modules), and `v2m train finetune` takes the bundle as its base."""
    from v2m.models.vae_encoder import load_vae_encoder

    ae_dir = tmp_path / "ae"
    ae.train_autoencoder(ae_dir, SynthSource(0, 4, 2.0), ae.AE_PRESETS["tiny-oobleck"], ae.AE_TRAIN_PRESETS["tiny"],
                         seed=0, threads=2, progress=False)
    bundle = _dit_run(tmp_path / "run", ae_dir, steps=2)
    _, scale = dit.load_trained(tmp_path / "run")
    assert (bundle / "vae_encoder.safetensors").is_file()
    audio = torch.from_numpy(SynthSource(5, 1, 2.0).clip(0)[0][:, : 7 * 3584].copy())[None]
    with torch.no_grad():
        mean, _ = ae.load_autoencoder(ae_dir).encoder(audio)  # (1, 4, 7)
        got = load_vae_encoder(bundle, 44100).encode(audio)
    assert got.shape == (1, 4, 7)
    torch.testing.assert_close(got, mean / torch.from_numpy(scale)[None, :, None], atol=1e-5, rtol=1e-4)

    music = tmp_path / "music"
    music.mkdir()
    import soundfile as sf

    sf.write(music / "a.wav", SynthSource(9, 1, 3.0).clip(0)[0].T, 44100)
    rc = main(["train", "finetune", "--base", str(bundle), "--audio", str(music), "-o", str(tmp_path / "ft"),
               "--steps", "2", "--batch-size", "2", "--clip-seconds", "1", "--clips-per-file", "2", "--workers", "1",
               "--eval-interval", "2", "-q"])
    assert rc == 0 and (tmp_path / "ft" / "bundle" / "dit.safetensors").is_file()


def test_mid_side_loss_sees_the_phase_between_channels():
    """Per-channel STFT magnitudes cannot tell a right channel from its negative; the sum-and-difference
    loss can: identical stereo 0; flipping one channel's sign costs the mid's whole energy (spectral
    convergence 1 plus the log gap), while the per-channel loss stays 0."""
    t = torch.arange(8192) / 44100.0
    x = torch.stack([torch.sin(2 * torch.pi * 440 * t), 0.8 * torch.sin(2 * torch.pi * 440 * t)])[None]
    flipped = x * torch.tensor([1.0, -1.0])[None, :, None]
    assert float(ae.mid_side_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    assert float(ae.mrstft_loss(flipped, x)) == pytest.approx(0.0, abs=1e-5)
    assert float(ae.mid_side_loss(flipped, x)) > 1.0


def test_distilled_oobleck_encoder_follows_the_stft_encoder(ae_run, tmp_path):
    """`distill_oobleck_encoder` regresses an Oobleck encoder onto the run's STFT-encoder means: on
    held-out crops its error falls well below that of the untrained encoder, and the bundle's
    `vae_encoder` is it, scale folded (`bundle_vae_encoder`)."""
    import shutil

    from v2m.models.vae import OobleckConfig
    from v2m.models.vae_encoder import OobleckEncoder

    run = tmp_path / "ae"
    shutil.copytree(ae_run, run)
    x = torch.from_numpy(np.stack([SynthSource(77, 2, 2.0).clip(i)[0][:, : 4 * 3584] for i in range(2)]))
    with torch.no_grad():
        target, _ = ae.load_autoencoder(run).encoder(x)
        torch.manual_seed(0)
        before = float(((OobleckEncoder(OobleckConfig(latent_channels=4, channels=2))(x)[:, :4] - target) ** 2).mean())
    ae.distill_oobleck_encoder(run, SynthSource(0, 4, 2.0), steps=60, batch=4, crop_frames=4, lr=3e-3, channels=2,
                               pool_clips=4, threads=2)
    scale = np.array([2.0, 1.0, 0.5, 4.0], np.float32)
    sd = ae.bundle_vae_encoder(run, scale)
    enc = OobleckEncoder(OobleckConfig(latent_channels=4, channels=2))
    enc.load_state_dict(sd)
    with torch.no_grad():
        got = enc.encode(x) * torch.from_numpy(scale)[None, :, None]
    after = float(((got - target) ** 2).mean())
    assert after < 0.5 * before, (before, after)
