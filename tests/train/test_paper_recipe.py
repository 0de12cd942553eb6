"""`v2m train demo --recipe paper`: the paper's two stages, end to end at the tiny size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")

from v2m.cli.main import main  # noqa: E402


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
    from test_sentence_text import make_tiny_bert

    d = tmp_path_factory.mktemp("paper")
    bert = make_tiny_bert(d / "bert", hidden=32)
    rc = main(["train", "demo", "--recipe", "paper-tiny", "--text-encoder", str(bert), "--work", str(d / "work"),
               "-o", str(d / "out"), "-q"])
    assert rc == 0
    return d


def _curve_column(bundle: Path) -> torch.Tensor:
    from v2m.models.checkpoint import load_safetensors

    w = load_safetensors(bundle / "dit.safetensors")["in_proj.weight"].float()
    c = json.loads((bundle / "config.json").read_text())["dit"]["latent_channels"]
    return w[:, c]


def test_stage_one_has_no_curve_input_and_stage_two_learns_one(paper_run, short_video):
    """Stage 1 drops the curve on every step, so its curve column gets no gradient and stays exactly
    zero (a text-to-music model: the curve changes nothing); stage 2 trains it."""
    from v2m.runtime import Pipeline

    stage1, out = paper_run / "work" / "stage1" / "bundle", paper_run / "out"
    assert torch.count_nonzero(_curve_column(stage1)) == 0
    assert torch.count_nonzero(_curve_column(out)) > 0
    pipe = Pipeline.from_pretrained(stage1, backend="torch")
    a = pipe.generate(short_video.path, seed=0, steps=2).audio
    b = pipe.generate(short_video.path, seed=0, steps=2, use_curve=False).audio
    np.testing.assert_array_equal(a, b)


def test_the_bundle_carries_its_encoder_and_text_encoder(paper_run, short_video, tmp_path):
    out = paper_run / "out"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["text"]["kind"] == "sentence" and (out / cfg["text"]["dir"] / "encoder.onnx").is_file()
    assert (out / "vae_encoder.safetensors").is_file() and cfg["preset"] == "demo"
    report = json.loads((paper_run / "work" / "report.json").read_text())
    assert {"corpus", "autoencoder", "base", "stage1", "stage2", "bundle"} <= set(report["stages"])
    assert main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "-m", str(out), "--steps", "2",
                 "--prompt", "a slow calm piano piece"]) == 0


@pytest.fixture(scope="module")
def sao_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("paper-sao")
    cmd = ["train", "demo", "--recipe", "paper-sao-tiny", "--work", str(d / "work"), "-o", str(d / "out"), "-q"]
    assert main([*cmd, "--stop-after", "stage1"]) == 0  # in two invocations, as a long recipe runs
    assert (d / "work" / "stage1-sao" / "bundle").is_dir() and not (d / "out").exists()
    assert main(cmd) == 0
    return d


def _sao_curve_weights(bundle: Path) -> list[torch.Tensor]:
    from v2m.models.checkpoint import load_safetensors

    sd = load_safetensors(bundle / "dit.safetensors")
    return [sd[k].float() for k in ("concat_pre_in.weight", "concat_pre_out.weight", "concat_proj_in.weight")]


def test_the_sao_backbone_gets_its_curve_channel_in_stage_two(sao_run, short_video):
    """paper-sao: a Stable Audio Open-architecture base with no curve channel; stage 1 adds the
    zero channel and, with every curve dropped, leaves it exactly zero (the curve changes nothing);
    stage 2 trains it. The bundle is an ordinary SAO-family bundle that generates for a video."""
    from v2m.core.bundle import load_config
    from v2m.runtime import Pipeline

    work = sao_run / "work"
    base = load_config(work / "base-sao")
    assert base.family == "sao" and base.dit["input_concat_dim"] == 0 and base.text["kind"] == "t5"
    stage1, out = work / "stage1-sao" / "bundle", sao_run / "out"
    assert all(torch.count_nonzero(w) == 0 for w in _sao_curve_weights(stage1))
    assert any(torch.count_nonzero(w) > 0 for w in _sao_curve_weights(out))
    pipe = Pipeline.from_pretrained(stage1, backend="torch")
    a = pipe.generate(short_video.path, seed=0, steps=2, prompt="drums").audio
    b = pipe.generate(short_video.path, seed=0, steps=2, prompt="drums", use_curve=False).audio
    np.testing.assert_array_equal(a, b)
    cfg = load_config(out)
    assert cfg.family == "sao" and cfg.preset == "paper-sao" and cfg.sampler.empty_prompt == "null"
    assert cfg.sampler.max_frames == cfg.sao_config.latent_frames
    report = json.loads((work / "report.json").read_text())
    assert {"corpus", "autoencoder", "base-sao", "stage1-sao", "stage2-sao", "bundle-sao"} <= set(report["stages"])
