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
