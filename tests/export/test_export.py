"""ONNX export: contracts, graph parity with PyTorch (tiny and small), whole-pipeline parity
torch vs onnxruntime, and one-line errors for every broken exported bundle.

Tolerances (fp32, CPU):
- graphs: each contract's (atol, rtol), an output fails past atol + rtol * max|torch|.
  step (the DiT inside the guided stage) and encoder 1e-4 (observed ~1e-6: only op
  reordering differs), VAE 1e-3 (observed ~1e-4: Snake's sin(alpha x)^2 over ~20 conv
  layers amplifies rounding).
- the ONNX Runtime sampler against the independent plain-loop oracle: rel err <= 1e-4.
- pipeline: the curve comes from encoder features through a numpy reference, so it
  inherits the encoder's ~1e-7 error: atol 1e-5. Latents after 96 Euler steps:
  per-step DiT differences of ~1e-6 (relative) accumulate over 96 steps of size
  1/96 with CFG weight 4, observed ~1e-6 (tiny) and ~5e-6 (small) on latents of
  magnitude ~7 and ~11: atol 1e-3.
  Audio: the VAE's own 1e-4 on top: atol 2e-3.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sampler_oracle import CASE_IDS, CASES, case_inputs, oracle_sample, rel_err

from v2m.cli.main import main
from v2m.core import contracts
from v2m.core.bundle import load_config
from v2m.core.contracts import CONTRACTS, GRAPH_NAMES
from v2m.core.manifest import load_manifest, sha256_file
from v2m.export.exporter import build_module, check_graph, export_bundle, export_graph
from v2m.models.bundle import bundle_config, init_bundle

ort = pytest.importorskip("onnxruntime")


# --- fixtures: one export per preset per session ----------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(PyTorch bundle, exported bundle with weights)."""
    d = tmp_path_factory.mktemp("tiny")
    src = init_bundle("tiny", d / "bundle", seed=0)
    res = export_bundle(src, d / "exported", with_weights=True)
    return src, d / "exported", res


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("small")
    src = init_bundle("small", d / "bundle", seed=0)
    res = export_bundle(src, d / "exported", with_weights=True)
    return src, d / "exported", res


@pytest.fixture
def lean_copy(tiny, tmp_path):
    """A writable copy of the exported tiny bundle, without weights."""
    out = tmp_path / "lean"
    weights = {"dit.safetensors", "vae.safetensors", "encoder.safetensors"}
    shutil.copytree(tiny[1], out, ignore=lambda d, names: [n for n in names if n in weights])
    return out


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str) -> str:
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("v2m: error:"), err
    assert "Traceback" not in err
    return lines[0]


# --- contracts ------------------------------------------------------------------------------
def test_contract_profiles_and_dynamic_axes():
    cfg = bundle_config("tiny")
    step = CONTRACTS["step"]
    prof = step.profile(cfg)
    c, s, f = cfg.latent_channels, cfg.text["max_tokens"], cfg.sampler.max_frames
    depth, d = cfg.dit["depth"], cfg.dit["width"]
    assert prof["x"] == ((1, c, 1), (1, c, f), (contracts.MAX_VIDEOS, c, 2 * f))
    assert prof["curve"] == ((1, 1, 1), (2, 1, f), (contracts.MAX_BRANCHES * contracts.MAX_VIDEOS, 1, 2 * f))
    assert prof["k"] == ((1,), (1,), (1,))
    assert prof["mods"][2] == (depth, contracts.MAX_STAGES, 6, d)
    assert step.dynamic_axes(cfg)["x"] == {0: "B", 2: "L"}
    assert step.dynamic_axes(cfg)["noise"] == {0: "N", 1: "B", 3: "L"}
    assert CONTRACTS["encoder"].dynamic_axes(cfg) == {"pixels": {0: "B"}, "features": {0: "B"}}  # H baked
    for contract in CONTRACTS.values():  # every dynamic dim of the export sample changes in a check
        first, *rest = contract.samples(cfg)
        assert rest
        for other in rest:
            assert all(first[k] != other[k] for k in first if isinstance(contract.dims(cfg).get(k), tuple))
    feeds = step.sample_inputs(cfg, {"B": 2, "G": 3, "GB": 6, "K": 4, "N": 1, "L": 5, "S": 6}, model_dtype="float16")
    assert feeds["k"].dtype == np.int64 and 0 <= feeds["k"][0] < 4
    assert feeds["mods"].dtype == np.float16 and feeds["x"].dtype == np.float32
    assert list(feeds) == step.input_names
    assert contracts.max_tokens(cfg) == s


# --- export: files, manifest --------------------------------------------------------------
def test_export_writes_graphs_and_manifest(tiny):
    src, out, res = tiny
    man = json.loads((out / "manifest.json").read_text())
    assert man["format"] == "v2m-onnx/2" and man["opset"] == 17
    assert set(man["graphs"]) == {"fp32"} and set(man["graphs"]["fp32"]) == set(GRAPH_NAMES)
    for name, g in man["graphs"]["fp32"].items():
        assert g["file"] == f"onnx/fp32/{name}.onnx" and sha256_file(out / g["file"]) == g["sha256"]
        assert g["data_file"] is None  # tiny graphs are far below 2 GB
        assert g["check"] and all(c["ok"] for c in g["check"])
        assert [i["name"] for i in g["inputs"]] == CONTRACTS[name].input_names
    assert man["config"] == load_config(src).to_dict()
    assert {"torch", "onnx", "onnxruntime", "v2m", "exporter"} <= set(man["versions"])
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert (out / "text.safetensors").is_file() and (out / "dit.safetensors").is_file()
    load_manifest(out).verify(load_config(out))


def test_cli_export_prints_checks_and_lean_bundle_has_no_weights(tiny, tmp_path, capsys):
    rc, out, err = _run(capsys, "export", str(tiny[0]), "-o", str(tmp_path / "lean"))
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if "max abs" in ln]
    assert {ln.split()[0] for ln in lines} == set(GRAPH_NAMES) and {ln.split()[1] for ln in lines} == {"fp32"}
    assert len(lines) >= 2 * len(GRAPH_NAMES)  # two shapes or more per graph
    assert all(ln.endswith("ok") for ln in lines)
    assert sorted(p.name for p in (tmp_path / "lean").iterdir()) == ["config.json", "manifest.json", "onnx", "text.safetensors"]


def test_external_data_round_trip(tiny, tmp_path):
    src, _, _ = tiny
    cfg = load_config(src)
    module, contract = build_module(src, "vae", cfg), CONTRACTS["vae"]
    path, data = export_graph(module, contract, cfg, tmp_path, external_data=True)
    assert data is not None and data.stat().st_size > path.stat().st_size
    assert all(r.ok for r in check_graph(module, contract, cfg, path))


def test_fp16_export_is_strongly_typed_with_fp32_islands(tiny, tmp_path):
    """A reduced-precision graph carries its own precision: fp16 weights, the solver state in
    fp32, LayerNorm statistics in fp32 (what TensorRT 11's strongly typed networks build)."""
    import onnx

    src, _, _ = tiny
    res = export_bundle(src, tmp_path / "h", names=("step", "schedule"), precisions=("fp16",))
    assert all(r.ok and r.precision == "fp16" for r in res.checks)
    m = onnx.load(str(tmp_path / "h" / "onnx" / "fp16" / "step.onnx"))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    io = {v.name: v.type.tensor_type.elem_type for v in (*m.graph.input, *m.graph.output)}
    assert io["x"] == io["x_out"] == io["d"] == io["coef"] == io["weights"] == f32
    assert io["mods"] == io["text_kv"] == f16
    weights = [t for t in m.graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == f16 for t in weights)
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.input)}
    norms = [n for n in m.graph.node if n.op_type == "LayerNormalization"]
    assert norms and all(types.get(n.input[0]) == f32 for n in norms)
    sched = onnx.load(str(tmp_path / "h" / "onnx" / "fp16" / "schedule.onnx"))
    assert {v.name: v.type.tensor_type.elem_type for v in sched.graph.output}["mods"] == f16


# --- graph parity -------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny", pytest.param("small", marks=pytest.mark.slow)])
def test_graph_parity(preset, request):
    src, out, res = request.getfixturevalue(preset)
    assert {r.graph for r in res.checks} == set(GRAPH_NAMES)
    assert all(r.ok for r in res.checks), [r.line() for r in res.checks if not r.ok]
    # The step again at shapes the export never saw: one frame and one branch with a one-token
    # prompt, and the training length with the curve-guidance batch of four videos.
    cfg = load_config(src)
    contract = CONTRACTS["step"]
    big = cfg.sampler.max_frames if preset == "tiny" else 100
    shapes = [{"B": 1, "G": 1, "GB": 1, "K": 1, "N": 1, "L": 1, "S": 1},
              {"B": 4, "G": 3, "GB": 12, "K": 3, "N": 3, "L": big, "S": 3}]
    results = check_graph(build_module(src, "step", cfg), contract, cfg, out / "onnx" / "fp32" / "step.onnx", shapes)
    assert [r.shape[-1] for r in results if r.output == "x_out"] == [s["L"] for s in shapes]
    assert all(r.ok for r in results), [r.line() for r in results]


# --- the sampler: ONNX Runtime against the oracle; whole pipeline, torch vs onnxruntime --------------
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ort_sampler_matches_oracle(tiny, case):
    from v2m.models.bundle import load_component
    from v2m.runtime import sampler
    from v2m.runtime.backends.ort_backend import OrtBackend

    src, out, _ = tiny
    cfg = load_config(out)
    be = _ort_backend(out, cfg)
    noise, cond, oracle_kw, opts = case_inputs(cfg, case, b=2)
    plan = sampler.Plan.make(sampler.SamplerOptions(**opts), True, cond.has_negative)
    steps = []
    got = be.sample(noise, cond, plan, steps.append)
    ref = oracle_sample(load_component(src, "dit"), noise, cond.curve, cond.text, cond.text_mask, **oracle_kw)
    assert rel_err(got, ref) <= 1e-4, rel_err(got, ref)
    assert steps == list(range(opts["steps"]))
    assert isinstance(be, OrtBackend)


_ORT = {}


def _ort_backend(out, cfg):
    from v2m.runtime.backends.ort_backend import OrtBackend

    if out not in _ORT:
        _ORT.clear()
        _ORT[out] = OrtBackend(out, cfg)
    return _ORT[out]


def test_ort_ring_bindings_never_alias():
    """Every stage call of the ORT loop writes buffers it does not read, and the pattern
    repeats every 2 x stages calls (so each binding can be captured once as a CUDA graph)."""
    from v2m.runtime.backends.ort_backend import StageRing

    for stages in (1, 2):
        ring = StageRing(stages)
        for n in range(4 * ring.period):
            b = ring.binding(n)
            assert not {b["x"], b["x_eval"], b["d_prev"], b["k"]} & {b["x_out"], b["d"], b["k_next"]}
            assert b == ring.binding(n % ring.period)
            nxt = ring.binding(n + 1)
            assert nxt["d_prev"] == b["d"] and nxt["k"] == b["k_next"]
            if (n + 1) % stages:  # within a step: the next stage evaluates at this stage's output
                assert nxt["x_eval"] == b["x_out"] and nxt["x"] == b["x"]
            else:  # a new step starts from this step's result
                assert nxt["x"] == nxt["x_eval"] == b["x_out"]


def test_ort_max_batch_respects_the_profile(tiny):
    cfg = load_config(tiny[1])
    be = _ort_backend(tiny[1], cfg)
    assert be.max_batch(1) == contracts.MAX_VIDEOS
    assert be.max_batch(3) == contracts.MAX_VIDEOS  # 3 x 4 = 12 = the curve profile's max
    from v2m.runtime import sampler

    noise, cond, _, opts = case_inputs(cfg, CASES[0], b=contracts.MAX_VIDEOS + 1)
    with pytest.raises(Exception, match="exceed the exported profile"):
        be.sample(noise, cond, sampler.Plan.make(sampler.SamplerOptions(**opts)))


# tiny: the whole 96-step run (error growth over a full schedule); small: the same wiring at its real
# sizes, where 8 steps check all of it
@pytest.mark.parametrize("preset,steps", [("tiny", 96), pytest.param("small", 8, marks=pytest.mark.slow)])
def test_pipeline_parity_torch_vs_onnxruntime(preset, steps, request, short_video):
    from v2m.runtime import Pipeline

    _, out, _ = request.getfixturevalue(preset)
    runs = {}
    for backend in ("torch", "onnxruntime"):
        pipe = Pipeline.from_pretrained(out, backend=backend, device="cpu", precision="fp32")
        runs[backend] = pipe.generate(short_video.path, prompt="warm synth pop", seed=11, steps=steps)
        assert runs[backend].info["backend"] == backend
    a, b = runs["torch"], runs["onnxruntime"]
    assert a.latents.shape == b.latents.shape and a.audio.shape == b.audio.shape
    np.testing.assert_allclose(b.curve, a.curve, atol=1e-5, rtol=0)
    np.testing.assert_allclose(b.latents, a.latents, atol=1e-3, rtol=0)
    np.testing.assert_allclose(b.audio, a.audio, atol=2e-3, rtol=0)
    assert len(b.step_ms) == steps and b.info["step_timer"] == "perf_counter"


# --- bad input: one line, non-zero exit ---------------------------------------------------------
def _generate(capsys, bundle, video, backend="onnxruntime", tmp=None):
    return _run(capsys, "generate", str(video), "-o", str(Path(tmp) / "o.wav"), "--model", str(bundle),
                "--backend", backend, "--device", "cpu", "--steps", "2", "--seed", "0", "-q")


def test_lean_copy_generates(lean_copy, short_video, tmp_path, capsys):
    rc, out, err = _generate(capsys, lean_copy, short_video.path, tmp=tmp_path)
    assert rc == 0, err
    assert "backend onnxruntime" in out


def test_truncated_graph_is_a_hash_mismatch(lean_copy, short_video, tmp_path, capsys):
    g = lean_copy / "onnx" / "fp32" / "step.onnx"
    g.write_bytes(g.read_bytes()[: g.stat().st_size // 2])
    line = _one_line_error(*_generate(capsys, lean_copy, short_video.path, tmp=tmp_path)[::2])
    assert "step.onnx" in line and "does not match manifest.json" in line


def test_corrupted_graph_with_matching_hash(lean_copy, short_video, tmp_path, capsys):
    g = lean_copy / "onnx" / "fp32" / "vae.onnx"
    g.write_bytes(b"\x08\x07garbage" + bytes(range(256)) * 4)
    man = json.loads((lean_copy / "manifest.json").read_text())
    man["graphs"]["fp32"]["vae"]["sha256"] = sha256_file(g)  # a broken export, consistently hashed
    (lean_copy / "manifest.json").write_text(json.dumps(man))
    line = _one_line_error(*_generate(capsys, lean_copy, short_video.path, tmp=tmp_path)[::2])
    assert "vae.onnx" in line and "ONNX Runtime cannot load it" in line


def test_manifest_hash_mismatch(lean_copy, short_video, tmp_path, capsys):
    man = json.loads((lean_copy / "manifest.json").read_text())
    man["graphs"]["fp32"]["encoder"]["sha256"] = "0" * 64
    (lean_copy / "manifest.json").write_text(json.dumps(man))
    line = _one_line_error(*_generate(capsys, lean_copy, short_video.path, tmp=tmp_path)[::2])
    assert "encoder.onnx" in line and "does not match manifest.json" in line


def test_config_changed_after_export(lean_copy, short_video, tmp_path, capsys):
    cfg = json.loads((lean_copy / "config.json").read_text())
    cfg["dit"]["rope_theta"] = 500.0
    (lean_copy / "config.json").write_text(json.dumps(cfg))
    line = _one_line_error(*_generate(capsys, lean_copy, short_video.path, tmp=tmp_path)[::2])
    assert "does not match the config the graphs were exported from" in line and "dit" in line


def test_runtime_settings_may_change_after_export(lean_copy, short_video, tmp_path, capsys):
    cfg = json.loads((lean_copy / "config.json").read_text())
    cfg["sampler"]["cfg_scale"] = 2.5  # not baked into any graph
    (lean_copy / "config.json").write_text(json.dumps(cfg))
    rc, _, err = _generate(capsys, lean_copy, short_video.path, tmp=tmp_path)
    assert rc == 0, err


def test_not_exported_bundle_is_exported_into_the_cache(tiny, short_video, tmp_path, capsys, monkeypatch):
    """--backend onnxruntime on a PyTorch bundle exports it on first use into the ONNX cache
    (tests/runtime/test_onnx_cache.py covers the cache; a lean install refuses in one line there)."""
    monkeypatch.setenv("V2M_CACHE_DIR", str(tmp_path / "cache"))
    rc, out, err = _generate(capsys, tiny[0], short_video.path, tmp=tmp_path)
    assert rc == 0 and "backend onnxruntime" in out, err
    assert (tmp_path / "cache").is_dir()


def test_malformed_manifest(lean_copy, short_video, tmp_path, capsys):
    (lean_copy / "manifest.json").write_text("{not json")
    line = _one_line_error(*_generate(capsys, lean_copy, short_video.path, tmp=tmp_path)[::2])
    assert "manifest.json" in line and "not valid JSON" in line


def test_tensorrt_missing(lean_copy, short_video, tmp_path, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    line = _one_line_error(*_generate(capsys, lean_copy, short_video.path, backend="tensorrt", tmp=tmp_path)[::2])
    assert "TensorRT" in line
    line = _one_line_error(*_run(capsys, "build", str(lean_copy), "--precision", "fp16")[::2])
    assert "TensorRT" in line


def test_export_check_failure_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    strict = dataclasses.replace(CONTRACTS["step"], tolerance=(0.0, 0.0))  # the step differs by ~1e-6
    monkeypatch.setitem(contracts.CONTRACTS, "step", strict)
    line = _one_line_error(*_run(capsys, "export", str(tiny[0]), "-o", str(tmp_path / "x"))[::2])
    assert "fp32 step graph differs from PyTorch" in line
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_export_refuses_foreign_directory(tiny, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    line = _one_line_error(*_run(capsys, "export", str(tiny[0]), "-o", str(tmp_path / "x"))[::2])
    assert "not a v2m bundle" in line
