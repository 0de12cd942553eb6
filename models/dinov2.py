"""DINOv2 ViT/14 frame encoder (Oquab et al. 2023, "DINOv2: Learning Robust Visual Features").

Matches Hugging Face transformers' `Dinov2Model` / `Dinov2WithRegistersModel`
numerically (and hence the official facebookresearch/dinov2 torch-hub models,
which the HF port reproduces): CLS token, optional register tokens (Darcet et
al. 2024), learned position embeddings stored at the pretraining grid and
interpolated bicubically to the input grid, pre-norm blocks with LayerScale,
MLP or SwiGLU feed-forward, final LayerNorm.

V2M-Zero uses the mean of the final-normed patch tokens as the frame feature
(`pooled`). Native parameter names follow the torch-hub layout (fused qkv);
foreign layouts are converted once, at load time, by one small function each.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from v2m.runtime.errors import BundleError

from .checkpoint import apply_state_dict, load_safetensors

__all__ = [
    "DINOv2Config",
    "PRESETS",
    "DINOv2",
    "convert_state_dict",
    "config_from_hf",
]


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
    # Registers models interpolate position embeddings with antialiasing; the originals do not.
    interpolate_antialias: bool = False

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
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise BundleError(f"DINOv2 config: unknown keys {unknown}")
        return cls(**d)


PRESETS: dict[str, DINOv2Config] = {
    "tiny": DINOv2Config(hidden_size=48, num_layers=2, num_heads=3, image_size=112),
    "vits14": DINOv2Config(hidden_size=384, num_layers=12, num_heads=6),
    "vitb14": DINOv2Config(hidden_size=768, num_layers=12, num_heads=12),
    "vitl14": DINOv2Config(hidden_size=1024, num_layers=24, num_heads=16),
    "vitg14": DINOv2Config(hidden_size=1536, num_layers=40, num_heads=24, use_swiglu_ffn=True),
}


def config_from_hf(cfg: dict) -> DINOv2Config:
    """A Hugging Face `Dinov2Config` / `Dinov2WithRegistersConfig` dict -> DINOv2Config."""
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads") if k not in cfg]
    if missing:
        raise BundleError(f"DINOv2 config.json lacks {missing}; is this a Hugging Face Dinov2Model directory?")
    registers = int(cfg.get("num_register_tokens", 0))
    return DINOv2Config(
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"],
        num_heads=cfg["num_attention_heads"],
        mlp_ratio=cfg.get("mlp_ratio", 4.0),
        patch_size=cfg.get("patch_size", 14),
        image_size=cfg.get("image_size", 518),
        num_register_tokens=registers,
        layerscale_value=cfg.get("layerscale_value", 1.0),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-6),
        use_swiglu_ffn=cfg.get("use_swiglu_ffn", False),
        qkv_bias=cfg.get("qkv_bias", True),
        interpolate_antialias=cfg.get("model_type") == "dinov2_with_registers" or registers > 0,
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
        self._baked_size: int | None = None

    @classmethod
    def from_config(cls, cfg: DINOv2Config | dict) -> DINOv2:
        return cls(cfg if isinstance(cfg, DINOv2Config) else DINOv2Config.from_dict(cfg))

    # --- position embeddings --------------------------------------------------------------
    def interpolate_pos_embed(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for an input of height x width pixels, as HF transformers computes them:
        bicubic in fp32 to the target grid (size=, align_corners=False, antialias per config)."""
        p, g = self.cfg.patch_size, self.cfg.grid
        h, w = height // p, width // p
        if h == g and w == g:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = patch_pos.shape[-1]
        grid = patch_pos.reshape(1, g, g, d).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid = F.interpolate(
            grid.float(), size=(h, w), mode="bicubic", align_corners=False, antialias=self.cfg.interpolate_antialias
        ).to(patch_pos.dtype)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, h * w, d)  # (1, h*w, D)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def bake_position_embeddings(self, image_size: int) -> DINOv2:
        """Replace the stored embeddings by their interpolation to `image_size` (square) input,
        so an export at that size has no interpolation op. Other sizes then raise."""
        with torch.no_grad():
            baked = self.interpolate_pos_embed(image_size, image_size).detach().clone()
        self.pos_embed = nn.Parameter(baked, requires_grad=False)
        self._baked_size = image_size
        return self

    # --- forward ----------------------------------------------------------------------------
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        b, _, height, width = pixels.shape
        if self._baked_size is not None:
            if (height, width) != (self._baked_size, self._baked_size):
                raise ValueError(
                    f"position embeddings are baked for {self._baked_size}x{self._baked_size} input, got {height}x{width}"
                )
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
        out["mask_token"] = out["mask_token"].reshape(1, -1)
    return out


def convert_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any supported DINOv2 layout -> native names. Detected by key names, once, at load time."""
    for prefix in ("dinov2.", "dinov2_with_registers.", "backbone.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(("classifier.", "head."))}
    if any(k.startswith(("embeddings.", "encoder.layer.")) for k in sd):
        return _convert_hf(sd)
    return _convert_hub(sd)


def flops_per_frame(cfg: DINOv2Config, image_size: int) -> float:
    """Forward FLOPs of one frame (2 per MAC), for roofline figures."""
    n = 1 + cfg.num_register_tokens + (image_size // cfg.patch_size) ** 2
    d = cfg.hidden_size
    mlp = (3 if cfg.use_swiglu_ffn else 2) * d * cfg.mlp_hidden
    per_block = 2 * n * (4 * d * d + mlp) + 4 * n * n * d
    return float(cfg.num_layers * per_block + 2 * n * 3 * cfg.patch_size**2 * d)

