"""DINOv2 parity with transformers' Dinov2Model on random small configs, in every key layout."""

import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from v2m.core.errors import BundleError  # noqa: E402
from v2m.models.checkpoint import save_safetensors  # noqa: E402
from v2m.models.dinov2 import (  # noqa: E402
    PRESETS,
    DINOv2,
    DINOv2Config,
    config_from_hf,
    convert_state_dict,
)

# Same math in the same fp32 op order as transformers; on x86 CPU the outputs come out bit-identical.
# The margin (~100 ulps of the O(1)-O(4) activations) allows for the fused qkv matmul taking
# another BLAS blocking than three separate projections on other CPUs or thread counts.
ATOL, RTOL = 1e-5, 1e-5


def _reference(registers=0, swiglu=False, image_size=518, cls=None, **extra):
    torch.manual_seed(0)
    kw = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=image_size,
              patch_size=14, layerscale_value=0.5, use_swiglu_ffn=swiglu, **extra)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **kw)
        ref = (cls or transformers.Dinov2WithRegistersModel)(cfg)
    else:
        cfg = transformers.Dinov2Config(**kw)
        ref = (cls or transformers.Dinov2Model)(cfg)
    with torch.no_grad():  # non-trivial weights everywhere (HF inits biases to 0, LayerScale to const)
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return ref.eval(), cfg


def _check(model, ref, size=224, registers=0, width=None):
    x = torch.randn(2, 3, size, width or size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(pixel_values=x).last_hidden_state
        torch.testing.assert_close(model(x), want, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(model.pooled(x), want[:, 1 + registers:].mean(1), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(model.cls(x), want[:, 0], atol=ATOL, rtol=RTOL)


def _hf_to_hub(sd: dict) -> dict:
    """transformers 5 in-memory names -> the official torch-hub names, written out by hand."""
    top = {
        "embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
        "embeddings.register_tokens": "register_tokens", "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    }
    block = {
        "norm1": "norm1", "norm2": "norm2", "attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2", "mlp.down_proj": "mlp.w3",
    }
    hub = {top[k]: v for k, v in sd.items() if k in top}
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layer."))
    for i in range(n):
        pre = f"encoder.layer.{i}."
        hub[f"blocks.{i}.ls1.gamma"] = sd[pre + "layer_scale1.lambda1"]
        hub[f"blocks.{i}.ls2.gamma"] = sd[pre + "layer_scale2.lambda1"]
        for p in ("weight", "bias"):
            hub[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([sd[f"{pre}attention.{x}_proj.{p}"] for x in "qkv"])
            if pre + f"mlp.gate_proj.{p}" in sd:
                hub[f"blocks.{i}.mlp.w12.{p}"] = torch.cat([sd[f"{pre}mlp.gate_proj.{p}"], sd[f"{pre}mlp.up_proj.{p}"]])
            for hf, native in block.items():
                if f"{pre}{hf}.{p}" in sd:
                    hub[f"blocks.{i}.{native}.{p}"] = sd[f"{pre}{hf}.{p}"]
    return hub


@pytest.mark.parametrize("registers,swiglu", [(0, False), (0, True), (4, False), (2, True)])
def test_parity_in_memory_state_dict(registers, swiglu):
    # transformers 5 names (attention.q_proj, mlp.gate_proj) as a live model's state_dict() has them;
    # 224 px input interpolates the 37x37 grid (518 px) to 16x16, antialiased for register models.
    ref, cfg = _reference(registers, swiglu)
    model = DINOv2.from_state_dict(ref.state_dict(), config_from_hf(cfg.to_dict()))
    _check(model, ref, 224, registers)


def test_parity_non_square_input():
    ref, cfg = _reference(registers=1)
    model = DINOv2.from_state_dict(ref.state_dict(), config_from_hf(cfg.to_dict()))
    _check(model, ref, 168, registers=1, width=252)  # 12 x 18 patches
    _check(model, ref, 518, registers=1, width=524)  # the stored 37 x 37 grid, non-square pixels


def test_parity_from_pretrained_directory(tmp_path):
    # save_pretrained writes the published names (attention.attention.query, mlp.weights_in)
    ref, _ = _reference(swiglu=True)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    _check(DINOv2.from_pretrained(tmp_path), ref)


def test_classification_directory_with_prefix(tmp_path):
    # Dinov2ForImageClassification: `dinov2.`-prefixed backbone plus a classifier that is dropped
    ref, _ = _reference(cls=transformers.Dinov2ForImageClassification, num_labels=3)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    _check(DINOv2.from_pretrained(tmp_path), ref.dinov2)


def test_hf_default_image_size_and_no_mask_token(tmp_path):
    # image_size left at HF's default (224: a 16x16 grid, no interpolation at 224 px);
    # use_mask_token=False checkpoints have no mask token, which this port fills with zeros.
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(hidden_size=48, num_hidden_layers=1, num_attention_heads=3, use_mask_token=False)
    ref = transformers.Dinov2Model(cfg).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    model = DINOv2.from_pretrained(tmp_path)
    assert model.cfg.image_size == 224 and model.cfg.grid == 16
    _check(model, ref, 224)


def test_published_hf_layout_with_prefix():
    # As published on the Hub under a `dinov2.` prefix: attention.attention.query, mlp.weights_in
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


@pytest.mark.parametrize("registers,swiglu", [(0, True), (4, False)])
def test_torch_hub_layout(registers, swiglu):
    ref, cfg = _reference(registers, swiglu)
    hub = _hf_to_hub(ref.state_dict())
    model = DINOv2.from_state_dict(hub, config_from_hf(cfg.to_dict()))
    assert sorted(model.state_dict()) == sorted(hub)  # the hub layout is the native one
    _check(model, ref, 224, registers)
    # chunked-block checkpoints (block_chunks > 0) name blocks `blocks.<chunk>.<global index>.*`
    chunked = {k.replace("blocks.", "blocks.0.", 1) if k.startswith("blocks.") else k: v for k, v in hub.items()}
    _check(DINOv2.from_state_dict(chunked, config_from_hf(cfg.to_dict())), ref, 224, registers)


def test_torch_hub_interpolate_offset():
    # torch-hub's non-register models: scale_factor (n + 0.1) / M, not size=n. Reference lines
    # copied from facebookresearch/dinov2 DinoVisionTransformer.interpolate_pos_encoding.
    cfg = DINOv2Config(hidden_size=48, num_layers=1, num_heads=3, interpolate_offset=0.1)
    model = DINOv2(cfg)
    torch.nn.init.normal_(model.pos_embed)
    w, h = 224, 308
    N = model.pos_embed.shape[1] - 1
    w0, h0 = w // 14 + 0.1, h // 14 + 0.1
    patch_pos_embed = F.interpolate(
        model.pos_embed[:, 1:].reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), 48).permute(0, 3, 1, 2),
        scale_factor=(float(w0 / math.sqrt(N)), float(h0 / math.sqrt(N))),
        mode="bicubic",
    )
    want = torch.cat([model.pos_embed[:, :1], patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, 48)], dim=1)
    got = model.interpolate_pos_embed(w, h)
    torch.testing.assert_close(got, want, atol=0, rtol=0)  # the same single op: bit-identical
    hf_style = DINOv2(DINOv2Config(hidden_size=48, num_layers=1, num_heads=3))
    hf_style.pos_embed = model.pos_embed
    assert (hf_style.interpolate_pos_embed(w, h) - got).abs().max() > 1e-3  # the conventions do differ


def test_bake_position_embeddings():
    ref, cfg = _reference(registers=4)
    model = DINOv2.from_state_dict(ref.state_dict(), config_from_hf(cfg.to_dict()))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        model.bake_position_embeddings(224)
        torch.testing.assert_close(model(x), before, atol=0, rtol=0)  # same tensors, same ops
    assert model.pos_embed.shape == (1, 1 + 16 * 16, 48)
    with pytest.raises(ValueError, match="baked for 224x224 input, got 112x112"):
        model(torch.randn(1, 3, 112, 112))
    with pytest.raises(RuntimeError, match="already baked"):
        model.bake_position_embeddings(112)
    ops = {str(n.target) for n in torch.export.export(model, (x,)).graph.nodes}
    assert not any("upsample" in op or "interp" in op for op in ops), ops


def test_baked_onnx_export_has_no_resize(tmp_path):
    onnx = pytest.importorskip("onnx")
    model = DINOv2(PRESETS["tiny"]).eval().bake_position_embeddings(98)  # 7x7 from the 8x8 grid
    path = tmp_path / "dinov2.onnx"
    with pytest.warns(Warning):  # the tracer notes the baked-size check is constant-folded
        torch.onnx.export(model, (torch.randn(1, 3, 98, 98),), str(path), dynamo=False,
                          input_names=["pixels"], output_names=["tokens"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "Resize" not in ops and "Conv" in ops


def test_wrong_checkpoint_names_the_key(tmp_path):
    model = DINOv2(PRESETS["tiny"])
    sd = convert_state_dict(model.state_dict())
    bad = dict(sd)
    del bad["blocks.1.attn.qkv.weight"]
    with pytest.raises(BundleError, match=r"missing 1 keys: blocks\.1\.attn\.qkv\.weight"):
        DINOv2.from_state_dict(bad, PRESETS["tiny"])
    bad = dict(sd, **{"norm.weight": torch.zeros(7)})
    with pytest.raises(BundleError, match=r"norm\.weight \(7,\) != expected \(48,\)"):
        DINOv2.from_state_dict(bad, PRESETS["tiny"])
    with pytest.raises(BundleError, match="lacks one of query/key/value"):
        ref, cfg = _reference()
        sd = {k: v for k, v in ref.state_dict().items() if "layer.1.attention.k_proj" not in k}
        DINOv2.from_state_dict(sd, config_from_hf(cfg.to_dict()))
    (tmp_path / "config.json").write_text('{"model_type": "vit"}')
    with pytest.raises(BundleError, match="not a DINOv2 model"):
        DINOv2.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BundleError, match="no model.safetensors"):
        DINOv2.from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(BundleError, match="pickled"):
        DINOv2.from_pretrained(tmp_path)


def test_presets_and_config_roundtrip():
    assert PRESETS["vitl14"].hidden_size == 1024 and PRESETS["vits14"].num_heads == 6
    assert PRESETS["vitg14"].use_swiglu_ffn and PRESETS["vitg14"].mlp_hidden == 4096  # official
    assert PRESETS["tiny"].grid == 8
    for cfg in PRESETS.values():
        assert DINOv2Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BundleError, match="unknown keys"):
        DINOv2Config.from_dict({"bogus": 1})
    with pytest.raises(BundleError, match="multiple of num_heads"):
        DINOv2Config(hidden_size=50, num_layers=1, num_heads=3)


def test_safetensors_loading(tmp_path):
    # a state dict saved as is (transformers 5 names) next to the HF config.json
    ref, cfg = _reference(registers=4)
    save_safetensors(ref.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(cfg.to_json_string())
    _check(DINOv2.from_pretrained(tmp_path), ref, registers=4)
