"""Frame encoders a bundle can name (`encoder.kind` in config.json; CLI `--encoder`).

An encoder turns a signal into features [T, D] at `fps` rows a second; the event
curve (`v2m.core.curves.event_curve`) is what every encoder feeds. Three
frame encoders, and the music encoder of `v2m.runtime.music` behind the same
`encode(x) -> [T, D]` interface:

- `dinov2`: DINOv2's mean-pooled patch tokens (the paper's choice). Has weights,
  so it runs in the backend (torch, ONNX Runtime, TensorRT) as the bundle's
  `encoder` component.
- `cut`: weight-free. Per frame, the square roots of the normalized hue, saturation
  and value histograms (each a unit vector: the cosine of two is their
  Bhattacharyya coefficient) and a low-resolution luma thumbnail, mean-removed,
  unit-normalized and weighted by `thumb_weight` (the layout, for cuts between
  shots of one palette). A hard cut changes both; motion inside a shot changes
  the histograms little. The thumbnail's weight is low (0.3) because a small
  object moving across its cells changes it a lot: on synthetic cut videos with a
  moving square, the curve correlates 0.78 with an ideal spike train at the cuts
  at weight 1 and 0.96 at 0.3 (the smoothing adds up steady in-shot motion into
  bumps as high as a cut's). It measures what PySceneDetect's `ContentDetector`
  thresholds (HSV change between frames) and is tested against it.
- `motion`: weight-free. Block matching over a grid: for each block of the frame,
  the displacement (within +-radius pixels) of the previous frame's best-matching
  block, by sum of absolute differences, ties going to the smallest motion. The
  features are the displacements (divided by the radius) and a constant 1, so
  the curve rises where the motion field changes: a dancer's move changing
  direction, a start, a stop (the role CoTracker's point tracks play in the paper).

Weight-free encoders run here, in numpy, on the sampled uint8 frames: no backend
call, no ONNX graph, no weights in the bundle.
"""

from __future__ import annotations

import abc
import logging
from typing import Any

import numpy as np

from v2m.core import curves
from v2m.core.bundle import (
    ENCODER_KINDS,
    WEIGHT_FREE,
    BundleConfig,
    encoder_config,
    has_encoder_weights,
    is_weight_free,
)
from v2m.core.errors import BundleError, InputError

__all__ = [
    "ENCODER_KINDS",
    "WEIGHT_FREE",
    "frame_encoder_config",
    "curve_std_floor",
    "FrameEncoder",
    "CutEncoder",
    "MotionEncoder",
    "encoder_config",
    "is_weight_free",
    "has_encoder_weights",
    "make_frame_encoder",
    "rgb_to_hsv",
    "block_motion",
    "cell_sums",
]

log = logging.getLogger("v2m.encoders")


class FrameEncoder(abc.ABC):
    """uint8 frames [N, H, W, 3] -> float32 features [N, D], streamed batch by batch.

    `reset()` starts a new video (encoders with state, like `motion`, forget the
    previous frame); batches then arrive in time order.
    """

    kind: str = "abstract"

    def reset(self) -> None:
        """Start a new video."""

    @abc.abstractmethod
    def encode(self, frames: np.ndarray) -> np.ndarray: ...


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [N, H, W, 3], got shape {frames.shape}")
    return frames


def rgb_to_hsv(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 RGB [..., 3] -> hue in [0, 1), saturation and value in [0, 1] (the hexcone model, float64:
    a hue on a histogram bin's edge lands where Python's colorsys puts it)."""
    x = frames.astype(np.float64) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    c = v - x.min(axis=-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    safe = np.maximum(c, 1e-12)
    h = np.where(v == r, ((g - b) / safe) % 6.0, np.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    h = np.where(c > 0, h / 6.0, 0.0) % 1.0
    return h, s, v


def _cell_starts(size: int, cells: int) -> np.ndarray:
    """First index of each of `cells` equal-as-possible runs over `size` (run of index i: i * cells // size)."""
    if size < cells:
        raise InputError(f"frames of {size} pixels are too small for a grid of {cells}; raise input_size")
    return np.searchsorted((np.arange(size) * cells) // size, np.arange(cells))


def cell_sums(x: np.ndarray, cells: int) -> np.ndarray:
    """Sums of x [..., H, W] over a cells x cells grid of blocks: [..., cells, cells]."""
    rows = np.add.reduceat(x, _cell_starts(x.shape[-2], cells), axis=-2)
    return np.add.reduceat(rows, _cell_starts(x.shape[-1], cells), axis=-1)


class CutEncoder(FrameEncoder):
    """HSV histograms (square roots) and a weighted, mean-removed luma thumbnail: [N, 3 * bins + thumb^2]."""

    kind = "cut"

    def __init__(self, bins: int = 16, thumb: int = 8, thumb_weight: float = 0.3, **_: Any):
        if bins < 2 or thumb < 1 or not thumb_weight >= 0:
            raise BundleError(f"cut encoder: bins >= 2, thumb >= 1 and thumb_weight >= 0 needed, "
                              f"got {bins}, {thumb}, {thumb_weight}")
        self.bins, self.thumb, self.thumb_weight = int(bins), int(thumb), float(thumb_weight)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = _check_frames(frames)
        n, height, width, _ = frames.shape
        h, s, v = rgb_to_hsv(frames)
        parts = []
        offset = (np.arange(n) * self.bins)[:, None]
        for ch in (h, s, v):
            idx = np.minimum((ch.reshape(n, -1) * self.bins).astype(np.int64), self.bins - 1)  # (N, HW)
            counts = np.bincount((idx + offset).ravel(), minlength=n * self.bins).reshape(n, self.bins)
            parts.append(np.sqrt(counts / counts.sum(axis=1, keepdims=True)))  # unit L2 norm
        luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (N, H, W)
        area = np.outer(np.diff(_cell_starts(height, self.thumb), append=height),
                        np.diff(_cell_starts(width, self.thumb), append=width))
        thumb = (cell_sums(luma.astype(np.float64), self.thumb) / area).reshape(n, -1)  # block means
        thumb = thumb - thumb.mean(axis=1, keepdims=True)
        norm = np.linalg.norm(thumb, axis=1, keepdims=True)
        thumb = np.where(norm > 1e-6, thumb / np.maximum(norm, 1e-12), 0.0)  # a flat frame: no layout term
        thumb *= self.thumb_weight
        return np.concatenate([*parts, thumb], axis=1).astype(np.float32)


def block_motion(prev: np.ndarray, cur: np.ndarray, grid: int, radius: int) -> np.ndarray:
    """Per-block displacement (dy, dx) of `cur` relative to `prev` ([..., H, W] float arrays):
    [..., grid, grid, 2] in pixels.

    Block (i, j) covers rows [i H / grid, (i + 1) H / grid) (rounded up) and likewise
    columns. For each candidate (dy, dx) in [-radius, radius]^2 the previous frame is
    shifted so that cur[y, x] is compared with prev[y - dy, x - dx] (edge-replicated);
    a block's displacement minimizes the sum of absolute differences plus
    1e-6 * (|dy| + |dx|) per pixel, so ties (flat areas, no motion) go to the smallest.
    """
    height, width = cur.shape[-2:]
    r = radius
    pad = [(0, 0)] * (prev.ndim - 2) + [(r, r), (r, r)]
    pp = np.pad(prev, pad, mode="edge")
    lead = cur.shape[:-2]
    best = np.full((*lead, grid, grid), np.inf)
    disp = np.zeros((*lead, grid, grid, 2))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            shifted = pp[..., r - dy : r - dy + height, r - dx : r - dx + width]
            sad = cell_sums(np.abs(cur - shifted), grid) + 1e-6 * (abs(dy) + abs(dx)) * height * width
            better = sad < best
            best = np.where(better, sad, best)
            disp[better] = (dy, dx)
    return disp


class MotionEncoder(FrameEncoder):
    """Block-matching motion field over a grid: [N, 2 * grid^2 + 1] (displacement / radius, then 1).

    The first frame of a video has no motion (zeros); each later frame is matched
    against the one before it, across batch boundaries.
    """

    kind = "motion"

    def __init__(self, grid: int = 8, radius: int = 4, **_: Any):
        if grid < 1 or radius < 1:
            raise BundleError(f"motion encoder: grid >= 1 and radius >= 1 needed, got {grid}, {radius}")
        self.grid, self.radius = int(grid), int(radius)
        self._prev: np.ndarray | None = None

    def reset(self) -> None:
        self._prev = None

    def encode(self, frames: np.ndarray) -> np.ndarray:
        frames = _check_frames(frames)
        n = frames.shape[0]
        out = np.zeros((n, 2 * self.grid**2 + 1), dtype=np.float32)
        out[:, -1] = 1.0
        if n == 0:
            return out
        luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)  # (N, H, W)
        first = 0 if self._prev is not None else 1  # the video's first frame has no predecessor
        prev = luma[:-1] if self._prev is None else np.concatenate([self._prev[None], luma[:-1]])
        if n > first:
            disp = block_motion(prev, luma[first:], self.grid, self.radius)  # (N', grid, grid, 2)
            out[first:, :-1] = disp.reshape(n - first, -1) / self.radius
        self._prev = luma[-1]
        return out


def make_frame_encoder(cfg: dict[str, Any]) -> FrameEncoder:
    """The weight-free frame encoder a bundle's `encoder` section describes."""
    kind = cfg.get("kind", "dinov2")
    settings = {k: v for k, v in cfg.items() if k not in ("kind", "input_size")}
    if kind == "cut":
        return CutEncoder(**settings)
    if kind == "motion":
        return MotionEncoder(**settings)
    raise BundleError(f"frame encoder {kind!r} has weights and runs in the backend; weight-free ones: "
                      f"{', '.join(WEIGHT_FREE)}")


def curve_std_floor(cfg: BundleConfig, encoder_cfg: dict[str, Any]) -> float:
    """The std floor of the video curve's standardization (`v2m.core.curves`, convention 2): the
    bundle's `curve.std_floor` for its own frame encoder. Another encoder (`--encoder`, or the cut
    encoder of a bundle without one) gets its measured `curves.STD_FLOORS` value, but only in a
    bundle that uses floors at all (std_floor > 0); older bundles keep the unfloored convention."""
    floor = float(cfg.curve.std_floor)
    if floor <= 0.0 or encoder_cfg.get("kind") == cfg.encoder.get("kind"):
        return floor
    return float(curves.STD_FLOORS.get(encoder_cfg.get("kind"), 0.0))


def frame_encoder_config(cfg: BundleConfig, kind: str | None) -> dict[str, Any]:
    """The bundle's encoder section, or the default one of a weight-free `kind` asked for instead.
    A bundle without a frame encoder (a converted text-to-music checkpoint) gets the weight-free
    cut encoder when a curve is asked of it."""
    own = cfg.encoder.get("kind", "dinov2")
    if own == "none" and kind is None:
        kind = "cut"
        if cfg.has_curve_channel:
            log.warning("this bundle has no frame encoder; its event curves use the weight-free cut encoder "
                        "(convert with --encoder DIR for DINOv2)")
    if kind is None or kind == own:
        return cfg.encoder
    if kind not in ENCODER_KINDS:
        raise InputError(f"--encoder {kind!r}: choose one of {', '.join(ENCODER_KINDS)}")
    if kind not in WEIGHT_FREE:
        raise InputError(f"--encoder {kind}: this bundle has no {kind} weights (its encoder is {own}); "
                         f"use {' or '.join(WEIGHT_FREE)}")
    return encoder_config(kind)
