"""Image conversions of the synthesis kit and the Results it returns.

Techniques optimise (1,3,H,W) tensors in 0..1 RGB; these helpers read PIL images into that space, write it back
as uint8 arrays (refusing NaN, so a diverged run never shows a broken picture) and package a kind-"image" Result
with the loss curve in `Result.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ....errors import BadInput
from ....result import LossRecord, Result


@dataclass
class OptResult:
    """What `optimize` returns: the final image (1,3,H,W in 0..1), losses per step, and why it stopped."""

    image: torch.Tensor
    loss_history: list[float]
    steps: int
    stopped: str | None
    terms: dict[str, float]
    terms_history: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0

    def records(self) -> list[LossRecord]:
        """The loss curve as typed records (what Result.losses holds): total and named terms per step."""
        return [
            LossRecord(i + 1, float(v), {k: float(h[i]) for k, h in self.terms_history.items() if i < len(h)})
            for i, v in enumerate(self.loss_history)
        ]

    def meta(self) -> dict[str, Any]:
        """The summary every technique puts in Result.meta."""
        h = self.loss_history
        return {
            "loss_history": [float(v) for v in h],
            "loss_start": float(h[0]) if h else None,
            "loss_final": float(h[-1]) if h else None,
            "steps_run": self.steps,
            "stopped": self.stopped,
            "terms": dict(self.terms),
            "terms_history": {k: [float(x) for x in v] for k, v in self.terms_history.items()},
            "optimize_s": round(self.wall_s, 3),
        }


def pil_to01(img: Image.Image, size: int | None = None, square: bool = False) -> torch.Tensor:
    """PIL image -> (1,3,H,W) float tensor in 0..1; `size` is the longer side (or the square crop's side)."""
    if not isinstance(img, Image.Image):
        raise BadInput(f"expected a PIL image (use accel.open_image), got {type(img).__name__}")
    img = img.convert("RGB")
    if size is not None:
        size = int(size)
        if size < 8:
            raise BadInput(f"image size must be at least 8 pixels, got {size}")
        if square:
            from ....images import resize_center_crop

            if img.size != (size, size):
                img = resize_center_crop(img, size, max(size, round(size * 256 / 224)))
        else:
            w, h = img.size
            s = size / max(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.Resampling.BICUBIC if s > 1 else Image.Resampling.LANCZOS)
    a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].contiguous()


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """(1,3,H,W) or (3,H,W) 0..1 tensor -> HxWx3 uint8; refuses NaN/inf (never shows a NaN image)."""
    t = x01.detach().float().cpu()
    if t.ndim == 4:
        t = t[0]
    if not torch.isfinite(t).all():
        raise BadInput(
            "the synthesized image contains NaN or inf values; the optimisation diverged (lower lr)"
        )
    a = t.clamp(0, 1).permute(1, 2, 0).numpy()
    return (a * 255.0 + 0.5).astype(np.uint8)


def to_pil(x01: torch.Tensor) -> Image.Image:
    """(1,3,H,W) 0..1 tensor -> PIL RGB image."""
    return Image.fromarray(to_uint8(x01))


def quantize(x01: torch.Tensor) -> torch.Tensor:
    """Round a 0..1 image to the 8-bit grid (what saving it as PNG does)."""
    return (x01.clamp(0, 1) * 255.0).round() / 255.0


def resize01(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of an (N,3,H,W) batch."""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def amplified_difference(a: torch.Tensor, b: torch.Tensor, gain: float = 0.0) -> np.ndarray:
    """(b - a) shown around mid grey, scaled by `gain` (0: so the largest change fills the range), as uint8."""
    d = (b - a).detach().float()
    if gain <= 0:
        m = float(d.abs().max())
        gain = 0.5 / m if m > 0 else 1.0
    return to_uint8((0.5 + gain * d).clamp(0, 1))


def image_result(
    x01: torch.Tensor,
    meta: dict[str, Any],
    *,
    image: Image.Image | None = None,
    extras: dict[str, Any] | None = None,
    opt: OptResult | None = None,
    losses: Sequence[LossRecord] | None = None,
) -> Result:
    """A kind-"image" Result: uint8 HxWx3 data (never NaN), the optimisation summary merged into meta and the loss
    curve in Result.losses (`losses`, else the records of `opt`)."""
    m = dict(meta)
    if opt is not None:
        m.update(opt.meta())
    curve = list(losses) if losses is not None else (opt.records() if opt is not None else [])
    return Result("image", to_uint8(x01), m, image, dict(extras or {}), curve)


def records(history: Sequence[float]) -> list[LossRecord]:
    """Loss records numbered 1.. from a plain list of per-step losses (loops that keep only the total)."""
    return [LossRecord(i + 1, float(v)) for i, v in enumerate(history)]
