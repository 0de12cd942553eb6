"""Checkpoint loading shared by every model: safetensors only, strict, one-line errors.

A wrong or partial checkpoint fails with the names and shapes of the keys that
are missing, unexpected or mismatched, never with a torch traceback. Pickled
checkpoints (.pt, .ckpt, .bin) are refused: loading them can run arbitrary code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from v2m.core.errors import BundleError

__all__ = ["load_safetensors", "save_safetensors", "apply_state_dict", "describe_mismatch", "config_from_dict"]

_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin", ".pkl"}


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (or of the shards listed by its index.json)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix in _PICKLE_SUFFIXES:
        raise BundleError(
            f"{path}: pickled checkpoints are not loaded (they can run code); convert it to "
            "safetensors first (safetensors.torch.save_file(state_dict, 'model.safetensors'))"
        )
    if path.name.endswith(".safetensors.index.json"):
        import json

        index = json.loads(path.read_text())
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            out.update(load_safetensors(path.parent / shard, device))
        return out
    if not path.is_file():
        raise BundleError(f"{path}: checkpoint file is missing")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BundleError(f"{path}: not a readable safetensors file ({first})") from None


def save_safetensors(state: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> Path:
    """Write a state dict atomically (see `v2m.core.tempfiles`: no file is left on failure,
    a signal, or, once the next write in that folder runs, a SIGKILL)."""
    from safetensors.torch import save_file

    from v2m.core.tempfiles import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)
    return path


def _fmt(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def describe_mismatch(
    expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]]
) -> str | None:
    """One line naming missing, unexpected and wrong-shape keys; None if they agree."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(
        f"{k} {tuple(got[k])} != expected {tuple(expected[k])}"
        for k in set(expected) & set(got)
        if tuple(expected[k]) != tuple(got[k])
    )
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} keys: {_fmt(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} keys: {_fmt(unexpected)}")
    if shapes:
        parts.append(f"{len(shapes)} wrong shapes: {_fmt(shapes, 3)}")
    return "; ".join(parts) or None


def apply_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    """Strictly load `state` into `module`, raising BundleError with a precise one-line reason."""
    own = module.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problem = describe_mismatch(expected, got)
    if problem:
        raise BundleError(f"{where}: checkpoint does not fit this model config: {problem}")
    not_float = sorted(k for k, v in state.items() if own[k].is_floating_point() and not v.is_floating_point())
    if not_float:
        k = not_float[0]
        raise BundleError(f"{where}: {len(not_float)} weights are not floating point ({k} is "
                          f"{str(state[k].dtype).removeprefix('torch.')}); save fp32, fp16 or bf16 weights")
    module.load_state_dict(state, strict=True)
    return module


def config_from_dict(cls, d: Mapping, what: str):
    """A config dataclass from a dict, refusing keys it does not know (a wrong or newer config)."""
    from dataclasses import fields

    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise BundleError(f"{what} config: unknown keys {unknown}; expected some of {sorted(known)}")
    return cls(**d)
