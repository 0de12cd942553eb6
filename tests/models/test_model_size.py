"""The size estimate from config.json (`v2m.core.model_size`) against modules PyTorch
builds on its meta device (no memory), for every preset of both families; and the
loader's refusals: a config bigger than the machine, a config that is not its weights'."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from v2m.core import model_size
from v2m.core.bundle import load_config
from v2m.core.errors import BundleError
from v2m.models import bundle as bundle_mod


def _meta_params(cfg, name: str) -> int:
    with torch.device("meta"):
        module = bundle_mod.build_component(cfg, name)
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("preset", bundle_mod.PRESET_NAMES)
def test_estimate_matches_the_built_modules(preset):
    cfg = bundle_mod.bundle_config(preset)
    est = model_size.component_params(cfg)
    assert {"dit", "vae", "text"} <= set(est)
    for name, n in est.items():
        if name == "text" and cfg.text.get("kind") != "t5":
            continue  # the built-in table is not a module: [vocab, text_dim]
        built = _meta_params(cfg, name)
        # biases and weights counted; norms' vectors left out: within 1% at tiny sizes, less above
        assert n == pytest.approx(built, rel=0.01), (preset, name, n, built)


def _copy(src, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    return dst


def _edit(bundle, **changes):
    path = bundle / "config.json"
    cfg = json.loads(path.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        d = cfg
        for p in parents:
            d = d[p]
        d[key] = value
    path.write_text(json.dumps(cfg))


def test_bigger_than_the_machine_refused_before_building(tiny_bundle, tmp_path, monkeypatch):
    """Sizes each within range that add up to ~13 trillion parameters: one line, nothing built."""
    monkeypatch.setattr(bundle_mod, "build_component", lambda *a, **k: pytest.fail("built"))
    b = _copy(tiny_bundle, tmp_path)
    (b / "dit.safetensors").unlink()  # no weights to compare: the memory check alone
    _edit(b, dit__width=32768, dit__depth=1024, dit__heads=256)
    with pytest.raises(BundleError, match=r"dit\.width 32768, dit\.depth 1024.*more than this machine's"):
        load_config(b)


def test_memory_bound_uses_the_machine(tiny_bundle):
    cfg = load_config(tiny_bundle)
    model_size.check_model_size(cfg, None, "x", memory=2**40)
    with pytest.raises(BundleError, match="more than this machine's"):
        model_size.check_model_size(cfg, None, "x", memory=1024)


def test_config_that_is_not_its_weights(tiny_bundle, tmp_path):
    """Twice the DiT's depth in config.json beside the tiny weights: a wrong checkpoint."""
    b = _copy(tiny_bundle, tmp_path)
    _edit(b, dit__depth=8)
    with pytest.raises(BundleError, match=r"dit section \(.*dit\.depth 8.*dit\.safetensors holds.*not one model"):
        load_config(b)


def test_stored_params_reads_the_header_only(tiny_bundle):
    from safetensors import safe_open

    with safe_open(str(tiny_bundle / "vae.safetensors"), "pt") as f:
        want = sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel")
                   else int(torch.Size(f.get_slice(k).get_shape()).numel()) for k in f.keys())
    assert model_size.stored_params(tiny_bundle / "vae.safetensors") == want
    assert model_size.stored_params(tiny_bundle / "nothing.safetensors") is None
