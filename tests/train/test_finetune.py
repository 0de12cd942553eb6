"""`v2m train finetune` on tiny bundles: data, the loop, exact resume, LoRA, SAO families, the CLI's checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from v2m.cli.main import main
from v2m.runtime.media import write_audio

pytest.importorskip("torch")
SR = 44100


@pytest.fixture(scope="module")
def music(tmp_path_factory) -> Path:
    """Three readable files (stereo wav, mono flac at 22.05 kHz, an m4a (AAC) with tags) and a broken mp3."""
    import av

    d = tmp_path_factory.mktemp("music")
    t = np.arange(int(3.0 * SR)) / SR
    a = (0.2 * np.sin(2 * np.pi * 220 * t) * (1 + (t > 1.5))).astype(np.float32)
    write_audio(d / "tone_a.wav", np.stack([a, a]), SR)
    t2 = np.arange(int(2.5 * 22050)) / 22050
    b = (0.1 * np.sign(np.sin(2 * np.pi * 3 * t2)) * np.sin(2 * np.pi * 440 * t2)).astype(np.float32)
    write_audio(d / "pulse_b.flac", b[None], 22050)
    with av.open(str(d / "tagged.m4a"), "w") as c:  # a file whose caption comes from its tags
        c.metadata.update({"title": "Night Drive", "artist": "Nobody", "genre": "synthwave"})
        s = c.add_stream("aac", rate=SR, layout="stereo")
        x = np.tile(0.1 * np.sin(2 * np.pi * 330 * t[: SR * 2]).astype(np.float32), (2, 1))
        for i in range(0, x.shape[1], 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[:, i : i + 1024]), format="fltp", layout="stereo")
            fr.sample_rate = SR
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    (d / "broken.mp3").write_bytes(b"not an mp3 at all" * 10)
    (d / "captions.tsv").write_text("tone_a.wav\ta low drone that swells\n")
    return d


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from v2m.models.bundle import init_bundle

    return init_bundle("tiny", tmp_path_factory.mktemp("b") / "tiny", seed=0, encoder="cut")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One prepared-data cache for the tests of the tiny base (content-keyed: each run reuses it)."""
    return tmp_path_factory.mktemp("cache")


def _tc(**over):
    from v2m.train.finetune import FinetuneConfig

    d = dict(steps=4, batch_size=2, warmup=1, clip_seconds=1.0, clips_per_file=2, eval_interval=2,
             checkpoint_interval=2, eval_clips=1)
    return FinetuneConfig(**{**d, **over})


def test_cli_end_to_end_then_generate(music, base, cache, tmp_path, short_video):
    run = tmp_path / "run"
    rc = main(["train", "finetune", "--base", str(base), "--audio", str(music), "-o", str(run), "--steps", "3",
               "--batch-size", "2", "--clip-seconds", "1", "--clips-per-file", "2", "--eval-interval", "2",
               "--workers", "2", "--cache", str(cache), "-q"])
    assert rc == 0
    report = json.loads((run / "report.json").read_text())
    assert list(report["data"]["skipped"]) == ["broken.mp3"] and report["data"]["files"] == 3
    assert (run / "losses.png").is_file() and (run / "bundle" / "dit.safetensors").is_file()
    assert {"loss", "loss_no_curve", "curve_corr", "curve_corr_no_curve"} <= set(report["final_eval"])
    from safetensors import safe_open

    with safe_open(str(run / "bundle" / "dit.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())
    out = tmp_path / "out.wav"
    assert main(["generate", str(short_video.path), "-o", str(out), "-m", str(run / "bundle"), "--steps", "2"]) == 0
    assert out.is_file()


def test_prepare_captions_curves_and_cache(music, base, cache, tmp_path):
    from v2m.runtime import music as music_mod
    from v2m.train.finetune import finetune

    finetune(tmp_path / "run", base, music, _tc(steps=1), workers=1, cache=cache, progress=False)
    from v2m.core.bundle import load_config
    from v2m.train.finetune_data import tag_caption

    assert tag_caption(music / "tagged.m4a") == "Night Drive by Nobody, synthwave"
    assert tag_caption(music / "pulse_b.flac") == "pulse b"  # no tags: the file name
    cfg = load_config(base)
    entries = sorted((cache / "clips").glob("*.npz"))
    assert len(entries) == 3  # one per readable file
    frames = round(1.0 * cfg.latent_rate)
    audio, _ = music_mod.load_audio(music / "tone_a.wav", SR)
    hit = 0
    for e in entries:  # the cached curve is `v2m curve`'s music curve of the clip's audio
        d = np.load(e)
        if d["latents"].shape[0] != 2 or audio.shape[1] < 3 * SR - 10:
            continue
        for k, off in enumerate(d["offsets"]):
            clip = audio[:, off : off + frames * cfg.audio.hop_length]
            want = music_mod.music_curve(clip, SR, frames, cfg.latent_rate, cfg.curve.kernel)
            if np.allclose(d["curves"][k], want, atol=1e-6):
                hit += 1
    assert hit == 2
    texts = list((cache / "text").glob("*.npz"))
    assert len(texts) == 3  # one per distinct caption


def test_resume_is_exact(music, base, cache, tmp_path):
    from v2m.train.common import load_checkpoint
    from v2m.train.finetune import finetune

    finetune(tmp_path / "a", base, music, _tc(), workers=1, cache=cache, progress=False)
    finetune(tmp_path / "b", base, music, _tc(), workers=1, cache=cache, progress=False, stop_at=2)
    assert not (tmp_path / "b" / "bundle").exists()
    finetune(tmp_path / "b", base, music, _tc(), workers=1, cache=cache, progress=False)
    a, b = (load_checkpoint(tmp_path / r / "ckpt.pt") for r in "ab")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["losses"] == b["losses"]


def test_lora_merges_into_a_plain_bundle(music, base, cache, tmp_path):
    from v2m.models.bundle import load_component
    from v2m.train.finetune import finetune
    from v2m.train.finetune_model import LoRALinear

    lin = torch.nn.Linear(5, 3)
    lora = LoRALinear(lin, 2, 4.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        lora.lora_b.normal_()
    x = torch.randn(4, 5)
    want = x @ (lin.weight + 2.0 * lora.lora_b @ lora.lora_a).T + lin.bias  # the merge written out
    torch.testing.assert_close(lora(x), want)
    torch.testing.assert_close(lora.merged()(x), want)

    bundle = finetune(tmp_path / "run", base, music, _tc(lora_rank=2, lr=1e-2, dtype="fp32"), workers=1,
                      cache=cache, progress=False)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["model"]["trainable_parameters"] < 0.5 * sum(
        p.numel() for p in load_component(base, "dit").parameters())
    tuned, orig = load_component(bundle, "dit").state_dict(), load_component(base, "dit").state_dict()
    assert tuned.keys() == orig.keys()
    changed = [k for k in orig if not torch.equal(tuned[k], orig[k])]
    assert changed and all(k.startswith("blocks.") for k in changed)


@pytest.mark.parametrize("preset", ["sao-small-tiny", "sao-tiny"])
def test_stable_audio_open_gets_a_curve_channel(preset, music, tmp_path, short_video):
    from v2m.core.bundle import load_config
    from v2m.models.bundle import init_bundle, load_component
    from v2m.train.finetune import finetune

    b = init_bundle(preset, tmp_path / "base", seed=0, encoder="cut")
    bundle = finetune(tmp_path / "run", b, music, _tc(steps=2, clips_per_file=1), workers=1, progress=False)
    cfg = load_config(bundle)
    assert cfg.dit["input_concat_dim"] == 1 and cfg.family == "sao"
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["model"]["curve_channel_added"]
    assert report["model"]["objective"] == ("rf_denoiser" if preset == "sao-small-tiny" else "v")
    assert cfg.sampler.empty_prompt == "null"  # text dropout trained no prompt as the null branch
    load_component(bundle, "dit")  # strict load of the widened DiT
    out = tmp_path / "out.wav"
    assert main(["generate", str(short_video.path), "-o", str(out), "-m", str(bundle), "--steps", "2"]) == 0
    assert out.is_file()


def test_short_clips_are_windows_of_their_clips_with_the_clips_curve_scale():
    """`short_clip_share`: every row becomes a window of its own clip (found by search), all of one
    length in [min, L], its curve the window's re-centred to mean 0 and scaled to the clip's std."""
    from v2m.train.finetune import _short_clips

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 40)).astype(np.float32)
    curves = (rng.standard_normal((5, 40)) * 0.7).astype(np.float32)
    lengths = set()
    for trial in range(20):
        xs, cs = _short_clips(x, curves, np.random.default_rng(trial), 7)
        n = xs.shape[-1]
        lengths.add(n)
        assert 7 <= n <= 40 and cs.shape == (5, n)
        for i in range(5):
            offs = [s for s in range(40 - n + 1) if np.array_equal(x[i, :, s : s + n], xs[i])]
            assert offs, "not a window of its clip"
            w = curves[i, offs[0] : offs[0] + n].astype(np.float64)
            want = (w - w.mean()) / w.std() * curves[i].std()
            np.testing.assert_allclose(cs[i], want, rtol=1e-4, atol=1e-5)
    assert len(lengths) > 5  # lengths vary from step to step


def test_a_dropped_prompt_is_the_samplers_null_branch(tmp_path):
    """Stable Audio Open: training's dropped text (zero T5 rows) must be what CFG's unconditional
    branch feeds the DiT: zero cross tokens (seconds' included), the global conditioning kept."""
    from v2m.models.bundle import init_bundle
    from v2m.train.finetune_model import Base

    base = Base(init_bundle("sao-tiny", tmp_path / "base", seed=0, encoder="cut"))
    g = torch.Generator().manual_seed(0)
    c, length = base.cfg.latent_channels, 8
    x, t = torch.randn(2, c, length, generator=g), torch.tensor([0.3, 0.7])
    text = torch.randn(2, 5, base.cfg.text_dim, generator=g)
    text[1] = 0.0  # row 1 dropped
    mask, curve = torch.ones(2, 5), torch.randn(2, 1, length, generator=g)
    seconds = torch.tensor([[0.0, 3.0], [0.0, 3.0]])[:, : len(base.seconds_names)]
    with torch.no_grad():
        out = base(x, t, text, mask, curve, seconds)
        cross, glob = base.cond(text, mask, seconds)
        kept = base.dit(x[:1], t[:1], cross[:1], glob[:1], curve[:1])
        null = base.dit(x[1:], t[1:], torch.zeros_like(cross[1:]), glob[1:], curve[1:])
        unzeroed = base.dit(x[1:], t[1:], cross[1:], glob[1:], curve[1:])
    torch.testing.assert_close(out[:1], kept)
    torch.testing.assert_close(out[1:], null)
    assert not torch.allclose(null, unzeroed)  # the conditioner of zero text is not the null branch


def test_bad_options_and_bases_are_one_line(music, base, tmp_path, capsys):
    no_encoder = Path(shutil.copytree(base, tmp_path / "no-encoder"))  # a bundle that cannot encode music
    (no_encoder / "vae_encoder.safetensors").unlink()
    cases = [(["--lr", "0"], "--lr"), (["--lora-rank", "-1"], "--lora-rank"), (["--steps", "0"], "--steps"),
             (["--batch-size", "0"], "--batch-size"), (["--seed", "-1"], "--seed"), (["--threads", "0"], "--threads")]
    for extra, flag in cases:
        assert main(["train", "finetune", "--base", str(base), "--audio", str(music), "-o", str(tmp_path / "x"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0]
    assert main(["train", "finetune", "--base", str(no_encoder), "--audio", str(music), "-o", str(tmp_path / "x")]) == 2
    assert "vae_encoder" in capsys.readouterr().err
    assert main(["train", "finetune", "--base", str(base), "--audio", str(tmp_path / "nope"), "-o", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    shutil.rmtree(tmp_path / "x", ignore_errors=True)


def _torchrun(n: int, args: list[str], env: dict, cwd) -> None:
    """`torchrun --standalone --nproc-per-node n ARGS`, in its own process group (a hang is killed whole)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n), *args]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                         start_new_session=True)
    try:
        _, err = p.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.communicate()
        raise
    assert p.returncode == 0, err[-2000:]


def test_two_processes_follow_one(music, base, cache, tmp_path):
    """torchrun with 2 CPU processes (gloo; DDP, and FSDP2 with --fsdp) and 1 process, same global batch:
    the same loss curve."""
    args = ["--base", str(base), "--audio", str(music), "--steps", "3", "--batch-size", "4", "--clip-seconds", "1",
            "--clips-per-file", "2", "--eval-interval", "3", "--workers", "1", "--cache", str(cache), "--threads", "1",
            "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n, run, extra in ((2, "ddp", []), (2, "fsdp", ["--fsdp"]), (1, "one", [])):
        _torchrun(n, ["-m", "v2m.train.finetune", "-o", str(tmp_path / run), *args, *extra], env, tmp_path)
    ddp, fsdp, one = (json.loads((tmp_path / r / "losses.json").read_text()) for r in ("ddp", "fsdp", "one"))
    for got in (ddp, fsdp):
        np.testing.assert_allclose([v for _, v in got["train"]["loss"]], [v for _, v in one["train"]["loss"]], rtol=1e-5)
        np.testing.assert_allclose([v for _, v in got["eval"]["loss"]], [v for _, v in one["eval"]["loss"]], rtol=1e-5)
    assert json.loads((tmp_path / "fsdp" / "report.json").read_text())["timing"]["runs"][0]["fsdp"]
    assert json.loads((tmp_path / "ddp" / "report.json").read_text())["timing"]["runs"][0]["processes"] == 2
    assert (tmp_path / "ddp" / "bundle" / "dit.safetensors").is_file()


def test_short_clip_steps_train(music, base, cache, tmp_path):
    from v2m.train.finetune import finetune

    bundle = finetune(tmp_path / "run", base, music, _tc(short_clip_share=1.0, min_clip_seconds=0.3), cache=cache,
                      workers=1, progress=False)
    losses = json.loads((tmp_path / "run" / "losses.json").read_text())["train"]["loss"]
    assert len(losses) == 4 and all(np.isfinite(v) for _, v in losses) and (bundle / "dit.safetensors").is_file()


def test_activation_checkpointing_keeps_the_run(music, base, cache, tmp_path):
    """Recomputing the blocks' activations in backward changes memory, not the weights."""
    from v2m.train.common import load_checkpoint
    from v2m.train.finetune import finetune

    for name, ac in (("plain", False), ("ckpt", True)):
        finetune(tmp_path / name, base, music, _tc(steps=2, activation_checkpointing=ac), workers=1, cache=cache,
                 progress=False)
    a, b = (load_checkpoint(tmp_path / r / "ckpt.pt")["model"] for r in ("plain", "ckpt"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


RESUME_SCRIPT = """
import sys
from pathlib import Path
from v2m.train.finetune import FinetuneConfig, finetune
out, base, music, cache, fsdp, stop = sys.argv[1:7]
tc = FinetuneConfig(steps=4, batch_size=4, warmup=1, clip_seconds=1.0, clips_per_file=2, eval_interval=2,
                    checkpoint_interval=2, eval_clips=1, eval_generate=0, fsdp=fsdp == "1")
finetune(out, Path(base), Path(music), tc, workers=1, cache=cache, progress=False, threads=1,
         stop_at=int(stop) if stop != "-" else None)
"""


def test_a_sharded_run_resumes_in_one_process(music, base, cache, tmp_path):
    """FSDP2 over 2 processes for 2 steps, then 1 process without sharding for the rest: the weights of
    a 1-process run throughout (float tolerance), since checkpoints hold full state dicts."""
    from v2m.train.common import load_checkpoint

    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n, out, fsdp, stop in ((2, "split", "1", "2"), (1, "split", "0", "-"), (1, "whole", "0", "-")):
        _torchrun(n, [str(script), str(tmp_path / out), str(base), str(music), str(cache), fsdp, stop], env, tmp_path)
    a, b = (load_checkpoint(tmp_path / r / "ckpt.pt") for r in ("split", "whole"))
    assert a["step"] == b["step"] == 4
    np.testing.assert_allclose([v for _, v in a["losses"]["train"]["loss"]],
                               [v for _, v in b["losses"]["train"]["loss"]], rtol=1e-5)
    # Adam turns float-rounding differences of near-zero gradients into updates of up to lr (1e-4) on a
    # few elements; an optimizer state lost in the hand-over would move nearly every element.
    for key in ("model", "ema"):
        diff = torch.cat([(a[key][k] - b[key][k]).abs().reshape(-1) for k in a[key]])
        assert diff.max() < 4e-4 and (diff > 1e-6).float().mean() < 0.01, key
