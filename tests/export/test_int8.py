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
    difference to ~15 dB of audio SNR, under the 25 dB gate."""
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


def _fp32_step(tiny_bundle, tmp_path):
    out = tmp_path / "fp32"
    export_bundle(tiny_bundle, out, check=False, names=("step",))
    return out / "onnx" / "fp32" / "step.onnx"


def test_recipe_keeps_the_sensitive_linears_fp32_and_ort_fuses_the_rest(tiny_bundle, tmp_path):
    """The recipe leaves in_proj, out_proj and every self-attention output projection in fp32 (oracle:
    the DiT's module names; the cross-attention's `cross/out` is quantized), and ONNX Runtime fuses
    each quantized linear into DynamicQuantizeMatMul."""
    import onnxruntime as ort

    src, dst = _fp32_step(tiny_bundle, tmp_path), tmp_path / "q.onnx"
    assert quantize.quantize_graph(src, dst).startswith(quantize.RECIPE)
    model = onnx.load(str(src))
    lin = quantize.linear_nodes(model)
    depth = json.loads((tiny_bundle / "config.json").read_text())["dit"]["depth"]
    kept = {"/in_proj/MatMul", "/out_proj/MatMul"} | {f"/blocks.{i}/attn/out/MatMul" for i in range(depth)}
    assert {lin[0], lin[-1], *quantize.attention_outputs(model, lin)} == kept
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(dst), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert ops.count("DynamicQuantizeMatMul") == len(lin) - len(kept)
    q_names = {n.name for n in onnx.load(str(dst)).graph.node if n.op_type == "MatMul"}
    assert kept <= q_names  # still float MatMuls in the quantized graph


def test_int8_step_tracks_the_fp32_graph(tiny_bundle, tmp_path, monkeypatch):
    """Against the fp32 ORT graph from one seed (8 steps, CFG): every update within ~2.6 degrees
    (cosine >= 0.999) and the final latents 30 dB above their difference (tiny, random weights:
    measured 0.9998 / 40.7 dB); the VAE's own amplification is recorded beside the audio SNR."""
    monkeypatch.setitem(quantize.GATE, "min_audio_snr_db", -100.0)  # random VAE: see the first test
    out = tmp_path / "q"
    export_bundle(tiny_bundle, out, precisions=("int8",), check=False, with_weights=True)
    figures = json.loads((out / "manifest.json").read_text())["quantization"]["int8"]
    assert figures["min_step_cosine"] >= 0.999 and figures["latent_snr_db"] >= 30.0, figures
    assert figures["vae_snr_at_latent_snr_db"] < figures["latent_snr_db"]


def test_gate_refuses_a_broken_quantization(tiny_bundle, tmp_path, monkeypatch, capsys):
    """A quantizer that flips the sign of the last linear's weights (the velocity's sign) is refused on
    the step cosine alone (the audio threshold is disabled), in one line, leaving nothing behind."""
    real = quantize.quantize_graph

    def broken(src, dst):
        desc = real(src, dst)
        model = onnx.load(str(dst))
        last = quantize.linear_nodes(model)[-1]
        weight = next(n for n in model.graph.node if n.name == last).input[1]
        init = next(i for i in model.graph.initializer if i.name == weight)
        init.CopyFrom(onnx.numpy_helper.from_array(-onnx.numpy_helper.to_array(init), weight))
        onnx.save(model, str(dst))
        return desc

    monkeypatch.setattr(quantize, "quantize_graph", broken)
    monkeypatch.setitem(quantize.GATE, "min_audio_snr_db", -100.0)
    out = tmp_path / "q"
    rc = main(["export", str(tiny_bundle), "-o", str(out), "--precision", "int8", "--no-check"])
    err = _lines(capsys.readouterr().err)
    assert rc == 2 and len(err) == 1 and "step cosine" in err[0], err
    assert not (out / "manifest.json").exists() and not (out / "onnx" / "int8").exists()


@pytest.mark.parametrize("flags,saturates", [("fpu avx2 fma", True), ("avx2 avx512f avx512bw", True),
                                             ("avx2 avx512f avx512_vnni", False), ("avx2 avx_vnni", False)])
def test_reduce_range_where_int8_saturates(tmp_path, flags, saturates):
    """u8 x s8 without VNNI (vpmaddubsw) saturates int16 pair sums: 7-bit weights there."""
    import platform

    from v2m.core.devices import cpu_int8_saturates

    f = tmp_path / "cpuinfo"
    f.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    want = saturates and platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    assert cpu_int8_saturates(str(f)) == want
    assert cpu_int8_saturates(str(tmp_path / "missing")) is False

