"""Perturbation sweeps: many perturbed copies of one image, generated lazily batch by batch.

Occlusion, RISE-style random masks and deletion/insertion curves are all "the same image, perturbed N ways,
forwarded in batches"; they share `Runner.sweep`, which never holds more than one batch of copies in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInput


def baseline_image(x0: np.ndarray, baseline: float | np.ndarray) -> np.ndarray:
    """The baseline as a full (C,H,W) image: a scalar, per-channel or whole-image baseline broadcast to x0."""
    b = np.asarray(baseline, dtype=np.float32)
    if b.ndim == 0:
        return np.full_like(x0, float(b))
    if b.shape == x0.shape[:1]:
        return np.broadcast_to(b[:, None, None], x0.shape).astype(np.float32)
    if b.shape != x0.shape:
        raise BadInput(f"baseline must be a scalar, per-channel or of shape {x0.shape}, got {b.shape}")
    return b


class Perturbation:
    """N perturbed copies of an image; `make(x0, start, stop)` builds copies [start, stop) only."""

    n: int = 0

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Occlusion(Perturbation):
    """A window slid over the image with a stride (Zeiler & Fergus); positions as in Captum (no edge padding)."""

    height: int
    width: int
    window: tuple[int, int]
    stride: tuple[int, int]
    baseline: float | np.ndarray = 0.0
    positions: list[tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        wh, ww = self.window
        sh, sw = self.stride
        if min(wh, ww) < 1:
            raise BadInput(f"occlusion window must be >= 1 pixel, got {self.window}")
        if min(sh, sw) < 1:
            raise BadInput(f"occlusion stride must be >= 1 pixel, got {self.stride}")
        if wh > self.height or ww > self.width:
            raise BadInput(
                f"occlusion window {self.window} is larger than the image ({self.height}x{self.width})"
            )
        rows = range(0, self.height - wh + 1, sh)
        cols = range(0, self.width - ww + 1, sw)
        self.grid = (len(rows), len(cols))
        self.positions = [(r, c) for r in rows for c in cols]
        self.n = len(self.positions)

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:
        b = baseline_image(x0, self.baseline)
        out = np.repeat(x0[None], stop - start, axis=0)
        wh, ww = self.window
        for k, (r, c) in enumerate(self.positions[start:stop]):
            out[k, :, r : r + wh, c : c + ww] = b[:, r : r + wh, c : c + ww]
        return out

    def coverage(self) -> np.ndarray:
        """How many windows cover each pixel (H, W)."""
        cov = np.zeros((self.height, self.width), np.float32)
        wh, ww = self.window
        for r, c in self.positions:
            cov[r : r + wh, c : c + ww] += 1
        return cov


@dataclass
class Masks(Perturbation):
    """Soft masks in [0,1] of shape (N,H,W): copy k = x * m_k + baseline * (1 - m_k) (RISE-style)."""

    masks: np.ndarray
    baseline: float | np.ndarray = 0.0

    def __post_init__(self) -> None:
        if self.masks.ndim != 3:
            raise BadInput(f"masks must have shape (N,H,W), got {self.masks.shape}")
        self.n = len(self.masks)

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:
        b = baseline_image(x0, self.baseline)
        m = self.masks[start:stop, None].astype(np.float32)
        return x0[None] * m + b[None] * (1.0 - m)


@dataclass
class Reveal(Perturbation):
    """Deletion/insertion steps (Petsiuk et al.): pixels in `order` are removed from (or revealed on) a baseline."""

    order: np.ndarray  # flat pixel indices, most important first
    steps: int
    mode: str = "deletion"
    baseline: float | np.ndarray = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("deletion", "insertion"):
            raise BadInput(f"mode must be 'deletion' or 'insertion', got {self.mode!r}")
        if self.steps < 1:
            raise BadInput(f"steps must be >= 1, got {self.steps}")
        self.n = self.steps + 1
        hw = len(self.order)
        self.counts = [math.ceil(k * hw / self.steps) for k in range(self.n)]

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:
        b = baseline_image(x0, self.baseline)
        c, h, w = x0.shape
        out = np.empty((stop - start, c, h, w), np.float32)
        src, dst = (x0, b) if self.mode == "deletion" else (b, x0)
        for k in range(start, stop):
            img = src.reshape(c, -1).copy()
            idx = self.order[: self.counts[k]]
            img[:, idx] = dst.reshape(c, -1)[:, idx]
            out[k - start] = img.reshape(c, h, w)
        return out
