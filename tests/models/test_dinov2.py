"""DINOv2 parity with transformers' Dinov2Model on random small configs, in every key layout."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

from v2m.models.checkpoint import save_safetensors  # noqa: E402
from v2m.models.dinov2 import PRESETS, DINOv2, DINOv2Config, config_from_hf, convert_state_dict  # noqa: E402
from v2m.runtime.errors import BundleError  # noqa: E402

# Same math in the same fp32 op order as transformers: differences are at most a few ulps.
ATOL, RTOL = 1e-5, 1e-5


def _reference(registers=0, swiglu=False, image_size=518):
    torch.manual_seed(0)
    kw = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=image_size,
              patch_size=14, layerscale_value=0.5, use_swiglu_ffn=swiglu)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw)
        ref = transformers.Dinov2WithRegistersModel(cfg)
    else:
        cfg = transformers.Dinov2Config(**kw)
        ref = transformers.Dinov2Model(cfg)
    with torch.no_grad():  # non-trivial weights everywhere (HF inits some tensors to 0)
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref.eval(), cfg


def _check(model, ref, size=224, registers=0):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(pixel_values=x).last_hidden_state
        torch.testing.assert_close(model(x), want, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(model.pooled(x), want[:, 1 + registers:].mean(1), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(model.cls(x), want[:, 0], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("registers,swiglu", [(0, False), (0, True), (4, False)])
def test_parity_in_memory_state_dict(registers, swiglu):
    # transformers 5 names (attention.q_proj, mlp.gate_proj) as a live model's state_dict() has them
    ref, cfg = _reference(registers, swiglu)
    model = DINOv2.from_state_dict(ref.state_dict(), config_from_hf(cfg.to_dict()))
    _check(model, ref, 224, registers)  # also interpolates the 37x37 grid (518 px) to 16x16 (224 px)


def test_parity_from_pretrained_directory(tmp_path):
    ref, _ = _reference()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    _check(DINOv2.from_pretrained(tmp_path), ref)


def test_published_hf_layout():
    # As published on the Hub / written by transformers 4: attention.attention.query, mlp.weights_in
    ref, cfg = _reference(swiglu=True)
    legacy = {}
    for k, v in ref.state_dict().items():
        k = k.replace("attention.q_proj", "attention.attention.query").replace("attention.k_proj", "attention.attention.key")
        k = k.replace("attention.v_proj", "attention.attention.value").replace("attention.o_proj", "attention.output.dense")
        k = k.replace("mlp.down_proj", "mlp.weights_out")
        legacy["dinov2." + k] = v
    for i in range(cfg.num_hidden_layers):
        for p in ("weight", "bias"):
            g = legacy.pop(f"dinov2.encoder.layer.{i}.mlp.gate_proj.{p}")
            u = legacy.pop(f"dinov2.encoder.layer.{i}.mlp.up_proj.{p}")
            legacy[f"dinov2.encoder.layer.{i}.mlp.weights_in.{p}"] = torch.cat([g, u])
    _check(DINOv2.from_state_dict(legacy, config_from_hf(cfg.to_dict())), ref)


def test_torch_hub_layout_roundtrip():
    # The official hub layout is v2m's native one; chunked blocks (blocks.0.N.*) are flattened.
    ref, cfg = _reference()
    native = convert_state_dict(ref.state_dict())
    chunked = {k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k: v for k, v in native.items()}
    chunked["mask_token"] = chunked["mask_token"].reshape(1, 1, -1)
    _check(DINOv2.from_state_dict(chunked, config_from_hf(cfg.to_dict())), ref)


def test_native_grid_needs_no_interpolation():
    ref, cfg = _reference(image_size=224)
    model = DINOv2.from_state_dict(ref.state_dict(), config_from_hf(cfg.to_dict()))
    _check(model, ref, 224)


def test_bake_position_embeddings():
    ref, cfg = _reference()
    model = DINOv2.from_state_dict(ref.state_dict(), config_from_hf(cfg.to_dict()))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        model.bake_position_embeddings(224)
        torch.testing.assert_close(model(x), before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="baked"):
        model(torch.randn(1, 3, 112, 112))


def test_wrong_checkpoint_names_the_key(tmp_path):
    model = DINOv2(PRESETS["tiny"])
    sd = convert_state_dict(model.state_dict())
    bad = dict(sd)
    del bad["blocks.1.attn.qkv.weight"]
    with pytest.raises(BundleError, match=r"blocks\.1\.attn\.qkv\.weight"):
        DINOv2.from_state_dict(bad, PRESETS["tiny"])
    bad = dict(sd, **{"norm.weight": torch.zeros(7)})
    with pytest.raises(BundleError, match=r"norm\.weight \(7,\) != expected \(48,\)"):
        DINOv2.from_state_dict(bad, PRESETS["tiny"])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BundleError):
        DINOv2.from_pretrained(tmp_path)


def test_presets_and_config_roundtrip():
    assert PRESETS["vitl14"].hidden_size == 1024 and PRESETS["vitg14"].use_swiglu_ffn
    cfg = PRESETS["vitb14"]
    assert DINOv2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BundleError):
        DINOv2Config.from_dict({"bogus": 1})


def test_safetensors_loading(tmp_path):
    ref, cfg = _reference()
    path = save_safetensors(ref.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(cfg.to_json_string())
    _check(DINOv2.from_pretrained(tmp_path), ref)
    assert path.is_file()
