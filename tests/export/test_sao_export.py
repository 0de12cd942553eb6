"""SAO graphs through the generic exporter (checked against PyTorch in ONNX Runtime at two shapes),
the curve input, and prompts encoded by the lean runtime (torch unimportable) with onnx/t5.onnx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from v2m.export.sao import export_sao_graphs, sao_contracts
from v2m.models.bundle import init_bundle, load_component
from v2m.models.checkpoint import save_safetensors
from v2m.models.sao_dit import SAODiTConfig, add_curve_channel
from v2m.runtime.bundle import load_config
from v2m.runtime.text import load_text_encoder

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")

PROMPTS = ["warm synth pop with soft drums", "", "an epic orchestral trailer " * 6]


@pytest.fixture(scope="module")
def sao_bundle(tmp_path_factory) -> Path:
    return init_bundle("sao-tiny", tmp_path_factory.mktemp("sao") / "bundle", seed=0)


@pytest.fixture(scope="module")
def exported(sao_bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("sao-onnx") / "exported"
    return out, export_sao_graphs(sao_bundle, out)


def test_every_graph_matches_pytorch(exported):
    out, result = exported
    assert set(result) == {"t5", "sao_cond", "sao_dit"}
    for name, r in result.items():
        assert r["path"] == out / "onnx" / f"{name}.onnx" and len(r["checks"]) >= 2
        assert all(c.ok for c in r["checks"]), [c.line() for c in r["checks"]]
    shapes = {tuple(c.shape) for c in result["sao_dit"]["checks"]}
    assert shapes == {(2, 8, 31), (3, 8, 17)}  # another B and L than the export's: both stayed dynamic


def test_curve_input_is_exported(sao_bundle, tmp_path):
    b = Path(__import__("shutil").copytree(sao_bundle, tmp_path / "curve"))
    cfg = load_config(b)
    sd, dit_cfg = add_curve_channel(load_component(b, "dit").state_dict(), SAODiTConfig.from_dict(cfg.dit))
    sd["concat_proj_in.weight"].normal_()  # a "trained" channel, so the check sees the curve's effect
    save_safetensors(sd, b / "dit.safetensors")
    raw = json.loads((b / "config.json").read_text())
    raw["dit"] = dit_cfg.to_dict()
    (b / "config.json").write_text(json.dumps(raw))
    cfg = load_config(b)
    assert [s.name for s in sao_contracts(cfg)["sao_dit"].inputs][-1] == "curve"
    r = export_sao_graphs(b, tmp_path / "out", names=("sao_dit",))
    assert all(c.ok for c in r["sao_dit"]["checks"])


SITECUSTOMIZE = """
import sys


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "onnx", "tensorrt", "triton", "transformers"}:
            raise ImportError(f"{name} is blocked (lean runtime test)")
        return None


sys.meta_path.insert(0, _Blocker())
"""


def test_lean_runtime_encodes_prompts_like_torch(sao_bundle, exported, tmp_path):
    out, _ = exported
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from v2m.runtime.bundle import load_config
        from v2m.runtime.text import load_text_encoder
        cfg = load_config({str(out)!r})
        enc = load_text_encoder({str(out)!r}, cfg.text, cfg.text_dim)
        assert type(enc).__name__ == "OnnxT5TextEncoder", type(enc)
        assert "torch" not in sys.modules
        res = [enc.encode(p) for p in {PROMPTS!r}]
        np.save({str(tmp_path / "emb.npy")!r}, np.stack([e for e, _ in res]))
        np.save({str(tmp_path / "mask.npy")!r}, np.stack([m for _, m in res]))
    """)
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "blocker"))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = load_config(sao_bundle)
    ref = load_text_encoder(sao_bundle, cfg.text, cfg.text_dim)  # torch weights
    assert type(ref).__name__ == "T5TextEncoder"
    emb, mask = np.load(tmp_path / "emb.npy"), np.load(tmp_path / "mask.npy")
    for i, prompt in enumerate(PROMPTS):
        e, m = ref.encode(prompt)
        np.testing.assert_array_equal(mask[i], m)
        assert np.abs(emb[i] - e).max() <= 1e-4 * np.abs(e).max()
    assert mask[1].sum() == 1 and mask[2].all()  # "" is just </s>; the long prompt fills all 16 tokens
    assert torch.from_numpy(emb[1, 1:]).abs().max() == 0
