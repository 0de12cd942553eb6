"""DINOv2 ViT/14 frame encoder (Oquab et al. 2023, "DINOv2: Learning Robust Visual Features").

Matches Hugging Face transformers' `Dinov2Model` / `Dinov2WithRegistersModel`
numerically, and the official facebookresearch/dinov2 torch-hub models up to
the interpolation convention below: CLS token, optional register tokens (Darcet
et al. 2024), learned position embeddings stored at the pretraining grid and
interpolated bicubically to the input grid, pre-norm blocks with LayerScale,
MLP or SwiGLU feed-forward, final LayerNorm.

Position embeddings follow HF by default (`F.interpolate(size=(h, w))`). The
torch-hub non-register models pass `scale_factor=(h + 0.1) / grid` instead,
which moves the sampling points: `interpolate_offset=0.1` reproduces those.
(Register models interpolate the same way in both, with antialiasing.)

V2M-Zero uses the mean of the final-normed patch tokens as the frame feature
(`pooled`). Native parameter names follow the torch-hub layout (fused qkv);
foreign layouts are converted once, at load time, by one small function each.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from v2m.core.errors import BundleError

from .checkpoint import apply_state_dict, config_from_dict, load_safetensors

__all__ = [
    "DINOv2Config",
    "PRESETS",
    "DINOv2",
    "convert_state_dict",
    "config_from_hf",
    "flops_per_frame",
]

log = logging.getLogger("v2m.dinov2")


@dataclass
class DINOv2Config:
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 14
    image_size: int = 518  # the pretraining grid (37 x 37) the position embeddings are stored at
    num_register_tokens: int = 0
    layerscale_value: float = 1.0
    layer_norm_eps: float = 1e-6
    use_swiglu_ffn: bool = False
    qkv_bias: bool = True
    # None = as HF does: antialiased with registers (Dinov2WithRegisters), plain without.
    interpolate_antialias: bool | None = None
    # 0.0 = HF (`size=`); 0.1 = torch-hub's non-register models (`scale_factor=(n + 0.1) / grid`).
    interpolate_offset: float = 0.0

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise BundleError(f"DINOv2 config: hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.image_size < self.patch_size:
            raise BundleError(f"DINOv2 config: image_size {self.image_size} is smaller than patch_size {self.patch_size}")

    @property
    def antialias(self) -> bool:
        if self.interpolate_antialias is None:
            return self.num_register_tokens > 0
        return self.interpolate_antialias

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.hidden_size * self.mlp_ratio)
        if self.use_swiglu_ffn:  # two thirds of the MLP width, rounded up to a multiple of 8
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> DINOv2Config:
        return config_from_dict(cls, d, "DINOv2")


PRESETS: dict[str, DINOv2Config] = {
    "tiny": DINOv2Config(hidden_size=48, num_layers=2, num_heads=3, image_size=112),
    "vits14": DINOv2Config(hidden_size=384, num_layers=12, num_heads=6),
    "vitb14": DINOv2Config(hidden_size=768, num_layers=12, num_heads=12),
    "vitl14": DINOv2Config(hidden_size=1024, num_layers=24, num_heads=16),
    # SwiGLU hidden: int(1536 * 4 * 2 / 3) rounded up to 8 = 4096, as torch-hub's SwiGLUFFNFused.
    "vitg14": DINOv2Config(hidden_size=1536, num_layers=40, num_heads=24, use_swiglu_ffn=True),
}

# transformers' class defaults, for config.json files that leave a key out.
_HF_DEFAULTS = {
    "dinov2": {"image_size": 224, "patch_size": 14, "num_register_tokens": 0},
    "dinov2_with_registers": {"image_size": 224, "patch_size": 16, "num_register_tokens": 4},
}


def _square(v: int | list[int], name: str) -> int:
    """HF allows (h, w) pairs; the checkpoints and this port use square grids."""
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise BundleError(f"DINOv2 config.json: {name} {list(v)} is not square; only square grids are supported")
        v = v[0]
    return int(v)


def config_from_hf(cfg: dict) -> DINOv2Config:
    """A Hugging Face `Dinov2Config` / `Dinov2WithRegistersConfig` dict -> DINOv2Config.

    Keys left out take transformers' defaults for that model type (note HF's image_size
    default is 224, not the 518 the published checkpoints are stored at)."""
    model_type = cfg.get("model_type", "dinov2_with_registers" if "num_register_tokens" in cfg else "dinov2")
    if model_type not in _HF_DEFAULTS:
        raise BundleError(f"config.json model_type {model_type!r} is not a DINOv2 model ({sorted(_HF_DEFAULTS)})")
    if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("num_channels", 3) != 3:
        raise BundleError(
            f"DINOv2 config.json: only hidden_act 'gelu' and 3 channels are supported, got "
            f"{cfg.get('hidden_act')!r} and {cfg.get('num_channels')}"
        )
    hf = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, **_HF_DEFAULTS[model_type], **cfg}
    return DINOv2Config(
        hidden_size=int(hf["hidden_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=int(hf["num_attention_heads"]),
        mlp_ratio=float(hf.get("mlp_ratio", 4.0)),
        patch_size=_square(hf["patch_size"], "patch_size"),
        image_size=_square(hf["image_size"], "image_size"),
        num_register_tokens=int(hf["num_register_tokens"]),
        layerscale_value=float(hf.get("layerscale_value", 1.0)),
        layer_norm_eps=float(hf.get("layer_norm_eps", 1e-6)),
        use_swiglu_ffn=bool(hf.get("use_swiglu_ffn", False)),
        qkv_bias=bool(hf.get("qkv_bias", True)),
        interpolate_antialias=model_type == "dinov2_with_registers",
    )


# --- modules, leaves up ----------------------------------------------------------------------
class LayerScale(nn.Module):
    def __init__(self, dim: int, value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, cfg: DINOv2Config):
        super().__init__()
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads)  # (B, N, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, N, Dh)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class Mlp(nn.Module):
    def __init__(self, cfg: DINOv2Config):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.mlp_hidden)
        self.fc2 = nn.Linear(cfg.mlp_hidden, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """torch-hub's SwiGLUFFNFused: w12 holds the gate (first half) and the up projection."""

    def __init__(self, cfg: DINOv2Config):
        super().__init__()
        self.w12 = nn.Linear(cfg.hidden_size, 2 * cfg.mlp_hidden)
        self.w3 = nn.Linear(cfg.mlp_hidden, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: DINOv2Config):
        super().__init__()
        eps = cfg.layer_norm_eps
        self.norm1 = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.hidden_size, cfg.layerscale_value)
        self.norm2 = nn.LayerNorm(cfg.hidden_size, eps=eps)
        self.mlp = SwiGLU(cfg) if cfg.use_swiglu_ffn else Mlp(cfg)
        self.ls2 = LayerScale(cfg.hidden_size, cfg.layerscale_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: DINOv2Config):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


class DINOv2(nn.Module):
    """forward(pixels [B, 3, H, W]) -> final-normed tokens [B, 1 + R + N, D] (CLS, registers, patches)."""

    def __init__(self, cfg: DINOv2Config):
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d)) if cfg.num_register_tokens else None
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # unused at inference; kept so checkpoints load strictly
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid * cfg.grid, d))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self._baked_size: tuple[int, int] | None = None  # (H, W) once bake_position_embeddings ran

    @classmethod
    def from_config(cls, cfg: DINOv2Config | dict) -> DINOv2:
        return cls(cfg if isinstance(cfg, DINOv2Config) else DINOv2Config.from_dict(cfg))

    # --- position embeddings --------------------------------------------------------------
    def interpolate_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings [1, 1 + h*w, D] for an input of height x width pixels, as HF computes
        them: bicubic in fp32 from the stored grid to (height // patch, width // patch),
        align_corners=False, antialiased only for register models."""
        if self._baked_size is not None:
            raise RuntimeError("position embeddings are already baked; interpolate before baking")
        p, g = self.cfg.patch_size, self.cfg.grid
        h, w = height // p, width // p
        if h == g and w == g and (height == width or not self.cfg.interpolate_offset):
            return self.pos_embed  # the references' shortcut; bicubic to the same size is the identity
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = patch_pos.shape[-1]
        grid = patch_pos.reshape(1, g, g, d).permute(0, 3, 1, 2)  # (1, D, g, g)
        off = self.cfg.interpolate_offset
        size = {"scale_factor": ((h + off) / g, (w + off) / g)} if off else {"size": (h, w)}
        grid = F.interpolate(grid.float(), mode="bicubic", align_corners=False, antialias=self.cfg.antialias, **size)
        patch_pos = grid.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(1, h * w, d)  # (1, h*w, D)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def bake_position_embeddings(self, image_size: int | tuple[int, int]) -> DINOv2:
        """Store the position embeddings interpolated for `image_size` pixels (an int for a
        square input, or (height, width)), so a forward or ONNX export at that size contains
        no interpolation. Forward at any other size then raises. Returns self."""
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if self._baked_size is not None:
            if hw == self._baked_size:
                return self
            raise RuntimeError(f"position embeddings are already baked for {self._baked_size}; rebuild the model to bake {hw}")
        with torch.no_grad():
            baked = self.interpolate_pos_embed(*hw).detach().clone()
        self.pos_embed = nn.Parameter(baked, requires_grad=False)
        self._baked_size = hw
        log.info("DINOv2 position embeddings baked for %dx%d input (%d patches)", *hw, baked.shape[1] - 1)
        return self

    # --- forward ----------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, _, height, width = pixels.shape
        if self._baked_size is not None:
            if (height, width) != self._baked_size:
                bh, bw = self._baked_size
                raise ValueError(f"position embeddings are baked for {bh}x{bw} input, got {height}x{width}")
            pos = self.pos_embed
        else:
            pos = self.interpolate_pos_embed(height, width)
        x = self.patch_embed(pixels)  # (B, N, D)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1) + pos  # (B, 1 + N, D)
        if self.register_tokens is not None:  # registers go after CLS, without position embeddings
            x = torch.cat([x[:, :1], self.register_tokens.expand(b, -1, -1), x[:, 1:]], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """Mean of the final-normed patch tokens [B, D] (the paper's spatial pooling)."""
        return self.forward(pixels)[:, 1 + self.cfg.num_register_tokens :].mean(dim=1)

    def cls(self, pixels: torch.Tensor) -> torch.Tensor:
        """The final-normed CLS token [B, D]."""
        return self.forward(pixels)[:, 0]

    # --- loading ----------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], cfg: DINOv2Config, where: str = "state dict") -> DINOv2:
        """A model in eval mode from a state dict in any supported layout (see `convert_state_dict`)."""
        model = cls(cfg)
        apply_state_dict(model, convert_state_dict(state), where)
        return model.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DINOv2:
        """A Hugging Face `Dinov2Model` directory (config.json + model.safetensors), offline."""
        directory = Path(directory)
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise BundleError(f"{directory}: no config.json; expected a Hugging Face Dinov2Model directory")
        cfg = config_from_hf(json.loads(cfg_path.read_text()))
        for name in ("model.safetensors", "model.safetensors.index.json"):
            if (directory / name).is_file():
                return cls.from_state_dict(load_safetensors(directory / name), cfg, where=str(directory / name))
        raise BundleError(f"{directory}: no model.safetensors (pickled pytorch_model.bin is not loaded; convert it to safetensors)")


# --- foreign layouts -> native (torch-hub names) --------------------------------------------
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_BLOCK_NAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
}
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_QKV = {
    # HF as published / save_pretrained (transformers 4)        transformers 5 in memory
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
}


def _convert_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face names (either generation) -> native. q/k/v are fused; SwiGLU gate/up too."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    swiglu: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = t
            continue
        m = _HF_LAYER.match(key)
        if not m:
            out[key] = t  # left for the strict loader to name as unexpected
            continue
        i, rest = int(m.group(1)), m.group(2)
        module, _, param = rest.rpartition(".")
        if module in _QKV:
            qkv.setdefault((i, param), {})[_QKV[module]] = t
        elif module in ("mlp.gate_proj", "mlp.up_proj"):
            swiglu.setdefault((i, param), {})[module[4:-5]] = t
        elif module in _HF_BLOCK_NAMES:
            out[f"blocks.{i}.{_HF_BLOCK_NAMES[module]}.{param}"] = t
        elif rest in _HF_BLOCK_NAMES:  # the LayerScale parameters have no separate module name
            out[f"blocks.{i}.{_HF_BLOCK_NAMES[rest]}"] = t
        else:
            out[key] = t
    for (i, param), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise BundleError(f"DINOv2 checkpoint: layer {i} attention {param} lacks one of query/key/value")
        out[f"blocks.{i}.attn.qkv.{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    for (i, param), parts in swiglu.items():
        if set(parts) != {"gate", "up"}:
            raise BundleError(f"DINOv2 checkpoint: layer {i} SwiGLU {param} lacks gate_proj or up_proj")
        out[f"blocks.{i}.mlp.w12.{param}"] = torch.cat([parts["gate"], parts["up"]])
    return out


def _convert_hub(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch-hub names are native; chunked checkpoints (`blocks.0.5.*`) are flattened."""
    out = {}
    for key, t in sd.items():
        m = re.match(r"^blocks\.\d+\.(\d+)\.(.+)$", key)
        out[f"blocks.{m.group(1)}.{m.group(2)}" if m else key] = t
    if "mask_token" in out and out["mask_token"].ndim == 3:
        out["mask_token"] = out["mask_token"].reshape(1, -1)  # (1, 1, D) -> (1, D)
    return out


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported DINOv2 layout -> native names. Detected by key names, once, at load time."""
    sd = {k: v for k, v in sd.items() if not k.startswith(("classifier.", "head."))}  # task heads
    for prefix in ("dinov2.", "dinov2_with_registers.", "backbone.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd):
        log.debug("DINOv2 checkpoint: Hugging Face layout")
        out = _convert_hf(sd)
    else:
        log.debug("DINOv2 checkpoint: torch-hub layout")
        out = _convert_hub(sd)
    if "register_tokens" in out and out["register_tokens"].numel() == 0:  # HF registers model, R = 0
        del out["register_tokens"]
    if "mask_token" not in out and "cls_token" in out:  # HF `use_mask_token=False`; unused at inference
        out["mask_token"] = out["cls_token"].new_zeros(1, out["cls_token"].shape[-1])
    return out


def flops_per_frame(cfg: DINOv2Config, image_size: int) -> float:
    """Forward FLOPs of one frame (2 per MAC), for roofline figures."""
    n = 1 + cfg.num_register_tokens + (image_size // cfg.patch_size) ** 2
    d = cfg.hidden_size
    mlp = (3 if cfg.use_swiglu_ffn else 2) * d * cfg.mlp_hidden
    per_block = 2 * n * (4 * d * d + mlp) + 4 * n * n * d
    return float(cfg.num_layers * per_block + 2 * n * 3 * cfg.patch_size**2 * d)


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# bundle preset -> (DINOv2 preset, input px): the frame encoder of each V2M-Zero preset
ENCODER_PRESETS = {"tiny": ("tiny", 112), "small": ("vits14", 224), "full": ("vitl14", 224)}


def encoder_section(preset: str, input_size: int | None = None) -> dict:
    """The `encoder` section of a bundle config for a DINOv2 of bundle preset `preset`
    (or of DINOv2 preset `preset` at `input_size` px)."""
    name, px = ENCODER_PRESETS[preset] if input_size is None else (preset, input_size)
    return {
        "kind": "dinov2",
        "config": PRESETS[name].to_dict(),
        "input_size": px,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "pooling": "mean_patch",  # the paper's spatial pooling of the final-normed patch tokens
    }
