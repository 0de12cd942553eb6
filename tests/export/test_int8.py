"""int8 graphs on CPU (`v2m.export.quantize`): quantized step and encoder, the accuracy gate, the
refusal below it (one line, exit 2, nothing left), and `--precision int8` at run time.

Oracles: the fp32 graphs of the same bundle (the gate's figures and the run's latents), and
the graph itself (its MatMuls became MatMulInteger)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from v2m.cli.main import main  # noqa: E402
from v2m.export import quantize  # noqa: E402
from v2m.export.exporter import export_bundle  # noqa: E402
from v2m.runtime import Pipeline  # noqa: E402


def _lines(err: str) -> list[str]:
    return [ln for ln in err.strip().splitlines() if ln.strip()]


def test_gate_refuses_random_weights_in_one_line(tiny_bundle, tmp_path, capsys):
    """Random weights: the steps agree (cosine > 0.99) but the random VAE amplifies the latents'
    difference to ~13 dB of audio SNR, under the 25 dB gate."""
    out = tmp_path / "q"
    rc = main(["export", str(tiny_bundle), "-o", str(out), "--precision", "int8", "--no-check"])
    err = _lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1, err
    assert "accuracy gate" in err[0] and "audio SNR" in err[0] and "dB" in err[0], err
    assert not (out / "manifest.json").exists() and not (out / "onnx" / "int8").exists()


def test_int8_export_records_its_gate_and_runs(tiny_bundle, tmp_path, monkeypatch, short_video):
    monkeypatch.setitem(quantize.GATE, "min_audio_snr_db", 5.0)  # random weights: see the test above
    out = tmp_path / "q"
    export_bundle(tiny_bundle, out, precisions=("int8",), check=False, with_weights=True)
    man = json.loads((out / "manifest.json").read_text())
    assert set(man["graphs"]) == {"fp32", "int8"}
    figures = man["quantization"]["int8"]
    assert len(figures["step_cosine"]) == quantize.GATE_STEPS and figures["min_step_cosine"] > 0.98
    assert figures["min_encoder_cosine"] > 0.99
    step = onnx.load(str(out / man["graphs"]["int8"]["step"]["file"]))
    ops = {n.op_type for n in step.graph.node}
    assert "MatMulInteger" in ops
    assert man["graphs"]["int8"]["vae"]["file"] == man["graphs"]["fp32"]["vae"]["file"]  # the VAE stays fp32

    runs = {p: Pipeline.from_pretrained(out, backend="onnxruntime", device="cpu", precision=p).generate(
        short_video.path, prompt="warm synth pop", seed=3, steps=4) for p in ("fp32", "int8")}
    assert runs["int8"].info["precision"] == "int8"
    a, b = runs["fp32"].latents.ravel(), runs["int8"].latents.ravel()
    assert not np.array_equal(a, b)  # the quantized graph ran
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99


def test_run_time_int8_refused_with_the_figure(tiny_bundle, short_video, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("V2M_CACHE_DIR", str(tmp_path / "cache"))
    rc = main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "--model", str(tiny_bundle),
               "--precision", "int8", "--device", "cpu", "--steps", "2"])
    err = _lines(capsys.readouterr().err)
    assert rc == 2 and "audio SNR" in err[-1] and "--precision fp32" in err[-1], err
    assert not (tmp_path / "o.wav").exists()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name != "hashes"]


def test_int8_needs_onnxruntime_on_cpu(tiny_bundle, tmp_path, short_video, capsys):
    rc = main(["generate", str(short_video.path), "-o", str(tmp_path / "o.wav"), "--model", str(tiny_bundle),
               "--precision", "int8", "--backend", "torch", "--device", "cpu"])
    err = _lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and "int8 runs on ONNX Runtime on a CPU" in err[0], err
