"""TensorRT: the content-keyed engine cache (pure Python, always run) and real engine builds
(skipped without TensorRT and a CUDA GPU)."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from v2m.runtime.backends.trt_build import (
    BUILDER_REVISION,
    EngineCache,
    EngineMeta,
    engine_key,
    stale_reasons,
)

PROFILE = {"x": [[1, 16, 1], [1, 16, 394], [4, 16, 788]], "k": [[1], [1], [1]]}


def _meta(**kw) -> EngineMeta:
    base = dict(name="dit", onnx_sha256="a" * 64, precision="fp16", profile=PROFILE, tensorrt="10.3.0",
                compute_capability="9.0")
    return EngineMeta(**{**base, **kw})


# --- the key ---------------------------------------------------------------------------------
def test_key_depends_on_every_field():
    m = _meta()
    assert m.key() == engine_key("a" * 64, "fp16", PROFILE, "10.3.0", "9.0", BUILDER_REVISION)
    variants = [
        _meta(onnx_sha256="b" * 64),
        _meta(precision="fp32"),
        _meta(tensorrt="10.4.0"),
        _meta(compute_capability="8.0"),
        _meta(profile={**PROFILE, "x": [[1, 16, 1], [1, 16, 200], [4, 16, 788]]}),
        _meta(builder_revision=BUILDER_REVISION + 1),
    ]
    keys = {v.key() for v in variants}
    assert m.key() not in keys and len(keys) == len(variants)
    # Profile order does not matter; values do.
    assert _meta(profile=dict(reversed(list(PROFILE.items())))).key() == m.key()


# --- stale detection ------------------------------------------------------------------------------
def _sidecar(meta: EngineMeta, **changes) -> dict:
    d = {"format": "v2m-engine/1", **meta.as_dict(), "key": meta.key(), "gpu": "NVIDIA H100"}
    d.update(changes)
    return d


@pytest.mark.parametrize("field,value,reason", [
    ("compute_capability", "8.6", "compute capability 8.6"),
    ("tensorrt", "10.0.1", "TensorRT 10.0.1"),
    ("onnx_sha256", "f" * 64, "another ONNX graph"),
    ("precision", "fp32", "built for fp32"),
    ("profile", {"x": [[1, 16, 1], [1, 16, 1], [1, 16, 1]], "k": [[1], [1], [1]]}, "profile"),
])
def test_stale_reasons(field, value, reason):
    meta = _meta()
    assert stale_reasons(_sidecar(meta), meta) == []
    why = stale_reasons(_sidecar(meta, **{field: value}), meta)
    assert len(why) == 1 and reason in why[0]


def test_edited_sidecar_key_is_stale():
    meta = _meta()
    assert "key" in stale_reasons(_sidecar(meta, key="0" * 64), meta)[0]
    assert "format" in stale_reasons({"format": "other"}, meta)[0]


# --- the cache directory ---------------------------------------------------------------------------
def test_cache_store_lookup(tmp_path):
    cache = EngineCache(tmp_path)
    meta = _meta()
    assert cache.lookup(meta) is None
    path = cache.store(meta, b"engine bytes", gpu="NVIDIA H100")
    assert path.name == f"dit-{meta.key()[:16]}.engine"
    assert cache.lookup(meta) == path
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["compute_capability"] == "9.0" and side["engine_bytes"] == len(b"engine bytes")


def test_engine_from_another_gpu_is_rebuilt_not_loaded(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    here = _meta(compute_capability="9.0")
    other = cache.store(_meta(compute_capability="8.0"), b"ampere engine", gpu="NVIDIA A100")
    # Someone copies the A100 engine under the name this GPU's key would have.
    want, side = cache.paths(here)
    other.rename(want)
    other.with_suffix(".json").rename(side)
    with caplog.at_level(logging.INFO, logger="v2m.tensorrt"):
        assert cache.lookup(here) is None
    assert "stale" in caplog.text and "compute capability 8.0" in caplog.text


def test_other_keys_are_logged_and_ignored(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    old = cache.store(_meta(tensorrt="10.0.1"), b"old", gpu="g")
    with caplog.at_level(logging.INFO, logger="v2m.tensorrt"):
        assert cache.lookup(_meta()) is None
    assert str(old) in caplog.text and "TensorRT 10.0.1" in caplog.text


def test_truncated_engine_is_stale(tmp_path, caplog):
    cache = EngineCache(tmp_path)
    meta = _meta()
    path = cache.store(meta, b"0123456789" * 100)
    path.write_bytes(path.read_bytes()[:10])
    with caplog.at_level(logging.WARNING, logger="v2m.tensorrt"):
        assert cache.lookup(meta) is None
    assert "sha256" in caplog.text


def test_engine_precision_is_the_graph_sets():
    from v2m.core.manifest import GraphInfo
    from v2m.runtime.backends.trt_build import engine_meta

    g = GraphInfo("step", "onnx/fp16/step.onnx", "c" * 64, "fp16", [], [],
                  {"x": {"min": [1, 2, 1], "opt": [1, 2, 3], "max": [4, 2, 8]}})
    assert engine_meta(g, "11.4.0", "9.0").precision == "fp16"
    assert engine_meta(dataclasses.replace(g, precision="fp32"), "11.4.0", "9.0").precision == "fp32"


@pytest.mark.parametrize("version,ok", [("10.3.0", True), ("11.4.0", True), ("9.2.0", False), ("12.0.0", False),
                                        ("x", False)])
def test_supported_tensorrt_versions(version, ok):
    from v2m.core.errors import BackendUnavailable
    from v2m.runtime.backends.trt_build import check_tensorrt_version

    if ok:
        assert check_tensorrt_version(version) == int(version[:2])
    else:
        with pytest.raises(BackendUnavailable, match="10.x or 11.x|cannot read"):
            check_tensorrt_version(version)


class _Flags:
    """A namespace of enum-like members (int-able)."""

    def __init__(self, **members):
        for i, (k, v) in enumerate(members.items()):
            setattr(self, k, v if v is not None else i)


def _fake_trt(major: int):
    """The slice of the TensorRT Python API `build_engine` uses, as 10.x or 11.x has it: 11 has
    no FP16/BF16/OBEY_PRECISION_CONSTRAINTS flags (touching them raises AttributeError)."""
    import types

    calls = {"network_flags": None, "set": [], "cleared": [], "layer_precision": 0}

    class Network:
        num_inputs = 1

        def get_input(self, i):
            return types.SimpleNamespace(name="x")

    class Config:
        def set_flag(self, f):
            calls["set"].append(f)

        def clear_flag(self, f):
            calls["cleared"].append(f)

        def set_memory_pool_limit(self, *a):
            pass

        def add_optimization_profile(self, p):
            pass

        def create_timing_cache(self, b):
            return object()

        def set_timing_cache(self, c, ignore):
            return True

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"cache")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls["network_flags"] = flags
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return types.SimpleNamespace(set_shape=lambda *a: None)

        def build_serialized_network(self, network, config):
            return b"engine"

    flags = {"TF32": 7} if major == 11 else {"TF32": 7, "FP16": 1, "BF16": 2, "OBEY_PRECISION_CONSTRAINTS": 3}
    trt = types.SimpleNamespace(
        __version__=f"{major}.4.0",
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Builder=Builder,
        OnnxParser=lambda network, logger: types.SimpleNamespace(parse_from_file=lambda p: True, num_errors=0),
        BuilderFlag=_Flags(**flags),
        NetworkDefinitionCreationFlag=_Flags(STRONGLY_TYPED=1),
        MemoryPoolType=_Flags(WORKSPACE=0),
    )
    return trt, calls


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_is_strongly_typed_with_no_precision_flags(monkeypatch, tmp_path, major, precision):
    """Both majors get a strongly typed network and no weak-typing flag; precision comes from
    the graph. fp32 turns TF32 off."""
    from v2m.runtime.backends import trt_build as tb

    trt, calls = _fake_trt(major)
    monkeypatch.setattr(tb, "import_tensorrt", lambda: trt)
    out = tb.build_engine(tmp_path / "g.onnx", {"x": ((1,), (1,), (2,))}, precision, tmp_path / "timing.cache")
    assert out == b"engine"
    assert calls["network_flags"] == 1 << 1  # STRONGLY_TYPED
    assert calls["set"] == []  # no FP16 / BF16 / OBEY_PRECISION_CONSTRAINTS, on 10 or 11
    assert calls["cleared"] == ([7] if precision == "fp32" else [])
    assert (tmp_path / "timing.cache").read_bytes() == b"cache"


# --- real TensorRT (GPU machines) -----------------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_and_run_tiny_engines(tmp_path, short_video):
    pytest.importorskip("tensorrt")
    pytest.importorskip("cuda")
    from v2m.core.errors import BackendUnavailable
    from v2m.export.exporter import export_bundle
    from v2m.models.bundle import init_bundle
    from v2m.runtime import Pipeline
    from v2m.runtime.backends.trt_backend import TensorRTBackend

    src = init_bundle("tiny", tmp_path / "bundle")
    out = tmp_path / "exported"
    export_bundle(src, out, with_weights=True, precisions=("fp32", "fp16"))
    try:
        trt = Pipeline.from_pretrained(out, backend="tensorrt", device="cuda", precision="fp32")
    except BackendUnavailable as e:
        pytest.skip(f"no usable GPU: {e}")
    assert isinstance(trt.backend, TensorRTBackend)
    engines = sorted(p.name for p in (out / "engines").glob("*.engine"))
    assert len(engines) == 5
    ref = Pipeline.from_pretrained(out, backend="onnxruntime", device="cpu")
    a = ref.generate(short_video.path, seed=3, steps=24)
    b = trt.generate(short_video.path, seed=3, steps=24)
    # fp32 engines without TF32: the same math in another order.
    np.testing.assert_allclose(b.latents, a.latents, atol=1e-2)
    # A second load reuses every engine (same keys, nothing rebuilt).
    Pipeline.from_pretrained(out, backend="tensorrt", device="cuda", precision="fp32")
    assert sorted(p.name for p in (out / "engines").glob("*.engine")) == engines
    # fp16: strongly typed engines from the fp16 graph set, Heun with curve guidance
    h = Pipeline.from_pretrained(out, backend="tensorrt", device="cuda", precision="fp16")
    c = h.generate(short_video.path, seed=3, steps=24, solver="heun", curve_guidance=1.0)
    d = ref.generate(short_video.path, seed=3, steps=24, solver="heun", curve_guidance=1.0)
    cos = float(np.dot(c.latents.ravel(), d.latents.ravel()) / np.linalg.norm(c.latents) / np.linalg.norm(d.latents))
    assert cos > 0.99, cos
