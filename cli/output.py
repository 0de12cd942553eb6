"""What the `v2m` command line prints and checks for a person, beside the commands themselves:
`v2m info`'s readable values and a bundle's description (`info --model`), the command line
that replays a `generate --json` run, and which `v2m eval` measures the installed extras allow.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from v2m.core.errors import V2MError, install_hint, require

__all__ = ["REPLAY_OPTIONS", "replay_command", "readable", "bundle_info", "eval_extras"]

log = logging.getLogger("v2m.cli")

# `generate --json` key -> the option that sets it: the `replay` command line passes each
REPLAY_OPTIONS = (("model", "--model"), ("seed", "--seed"), ("steps", "--steps"), ("cfg_scale", "--cfg-scale"),
                  ("solver", "--solver"), ("shift", "--shift"), ("curve_guidance", "--curve-guidance"),
                  ("negative_prompt", "--negative-prompt"), ("text_embeddings", "--text-embeddings"),
                  ("encoder", "--encoder"), ("video_stream", "--video-stream"), ("keep_audio_db", "--keep-audio"),
                  ("backend", "--backend"), ("device", "--device"), ("precision", "--precision"))


def replay_command(run: dict[str, Any]) -> str:
    """The command line that regenerates `run` (a `generate --json` object): every setting explicit,
    so a later change of the bundle's defaults does not change the result."""
    argv = ["v2m", "generate", run["video"], "-o", run["output"], "--prompt", run["prompt"]]
    for key, opt in REPLAY_OPTIONS:
        if run.get(key) is not None:
            argv += [opt, str(run[key])]
    if not run["use_curve"]:
        argv.append("--no-curve")
    return shlex.join(argv)


def readable(v: Any) -> str:
    """A value of `v2m info` as a person reads it: lists comma-separated, {name: available} as the
    available names, None as -."""
    if v is None:
        return "-"
    if isinstance(v, dict) and all(isinstance(x, bool) for x in v.values()):
        return ", ".join(k for k, ok in v.items() if ok) or "none"
    if isinstance(v, dict):
        return ", ".join(f"{k} {readable(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v) or "none"
    return str(v)


def bundle_info(model: str | Path) -> dict[str, Any]:
    """`v2m info --model BUNDLE`: what the bundle is and the sampler defaults `generate` uses."""
    from v2m.core.bundle import load_config
    from v2m.runtime.demo import resolve_model

    path = resolve_model(model)
    cfg = load_config(path)
    s = cfg.sampler
    exported = None
    if (path / "manifest.json").is_file():
        from v2m.core.manifest import load_manifest

        exported = load_manifest(path).precisions
    return {
        "path": str(path), "preset": cfg.preset, "family": cfg.family,
        "encoder": cfg.encoder.get("kind", "dinov2"), "text": cfg.text.get("kind", "builtin"),
        "weights": (path / "dit.safetensors").is_file(), "onnx_graphs": exported,
        "steps": s.steps, "cfg_scale": s.cfg_scale, "solver": s.solver, "shift": s.shift,
        "curve_guidance": s.curve_guidance, "max_seconds": round(cfg.max_seconds, 2),
        "latent_rate": round(cfg.latent_rate, 4), "sample_rate": cfg.audio.sample_rate,
    }


def eval_extras(sch_only: bool) -> tuple[bool, bool]:
    """What `v2m eval` can measure here, checked before any work: (Scene Cut Hit, cuts). SCH needs
    librosa (beats) and scenedetect (cuts); cut hits need scenedetect; curve correlation and
    flatness need no extra. SCH alone (`--no-curves`) without them is an error; otherwise one
    warning names what is n/a."""
    if sch_only:
        require("librosa", "scenedetect", what="`v2m eval --no-curves` (Scene Cut Hit)", extra="eval")
        return True, True
    missing = []
    for module in ("librosa", "scenedetect"):
        try:
            require(module, what="`v2m eval`")
        except V2MError:
            missing.append(module)
    if missing:
        na = "Scene Cut Hit" + (" and cut hits" if "scenedetect" in missing else "")
        log.warning("`v2m eval`: %s not installed, so %s %s n/a (%s); curve correlation and flatness need no extra",
                    " and ".join(missing), na, "are" if "and" in na else "is", install_hint(missing[0], "eval"))
    return not missing, "scenedetect" not in missing
