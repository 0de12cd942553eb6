"""TensorRT: the content-keyed engine cache (pure Python, always run) and real engine builds
(skipped without TensorRT and a CUDA GPU)."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import pytest

from v2m.export.tensorrt_build import (
    BUILDER_REVISION,
    EngineCache,
    EngineMeta,
    engine_key,
    stale_reasons,
)

PROFILE = {"x": [[2, 16, 1], [2, 16, 394], [8, 16, 788]], "t": [[2], [2], [8]]}


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
        _meta(profile={**PROFILE, "x": [[2, 16, 1], [2, 16, 200], [8, 16, 788]]}),
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
    ("profile", {"x": [[2, 16, 1], [2, 16, 1], [2, 16, 1]], "t": [[2], [2], [2]]}, "profile"),
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


def test_step_engine_is_always_fp32():
    from v2m.export.tensorrt_build import engine_meta
    from v2m.runtime.manifest import GraphInfo

    g = GraphInfo("step", "onnx/step.onnx", "c" * 64, [], [], {"x": {"min": [1, 2, 1], "opt": [1, 2, 3], "max": [4, 2, 8]}})
    assert engine_meta(g, "fp16", "10.3.0", "9.0").precision == "fp32"
    assert engine_meta(dataclasses.replace(g, name="dit"), "fp16", "10.3.0", "9.0").precision == "fp16"


# --- real TensorRT (GPU machines) -----------------------------------------------------------------
@pytest.mark.tensorrt
@pytest.mark.gpu
def test_build_and_run_tiny_engines(tmp_path, short_video):
    pytest.importorskip("tensorrt")
    pytest.importorskip("cuda")
    from v2m.export.exporter import export_bundle
    from v2m.models.bundle import init_bundle
    from v2m.runtime import Pipeline
    from v2m.runtime.backends.trt_backend import TensorRTBackend
    from v2m.runtime.errors import BackendUnavailable

    src = init_bundle("tiny", tmp_path / "bundle")
    out = tmp_path / "exported"
    export_bundle(src, out, with_weights=True)
    try:
        trt = Pipeline.from_pretrained(out, backend="tensorrt", device="cuda", precision="fp32")
    except BackendUnavailable as e:
        pytest.skip(f"no usable GPU: {e}")
    assert isinstance(trt.backend, TensorRTBackend)
    engines = sorted(p.name for p in (out / "engines").glob("*.engine"))
    assert len(engines) == 4
    ref = Pipeline.from_pretrained(out, backend="onnxruntime", device="cpu")
    a = ref.generate(short_video.path, seed=3, steps=24)
    b = trt.generate(short_video.path, seed=3, steps=24)
    # fp32 engines without TF32: the same math in another order.
    np.testing.assert_allclose(b.latents, a.latents, atol=1e-2)
    # A second load reuses every engine (same keys, nothing rebuilt).
    Pipeline.from_pretrained(out, backend="tensorrt", device="cuda", precision="fp32")
    assert sorted(p.name for p in (out / "engines").glob("*.engine")) == engines
