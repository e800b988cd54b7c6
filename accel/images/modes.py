"""Pixel modes: any PIL mode as 8-bit RGB (transparency composited, high bit depths scaled rather than clipped)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import BadInput
from .guard import why

__all__ = ["scale_to_uint8", "to_rgb"]


def to_rgb(im: Image.Image, bg: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: transparency composited on `bg`, high-bit-depth data scaled, not clipped."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _gray_to_rgb(scale_to_uint8(np.asarray(im), mode))
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if mode == "P" and im.palette is not None and im.palette.mode == "RGBA":
        has_alpha = True
    if has_alpha:
        try:
            rgba = im.convert("RGBA")
        except ValueError as e:
            raise BadInput(f"unsupported image mode {mode!r} with transparency ({why(e)})") from None
        out = Image.new("RGB", rgba.size, bg)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise BadInput(f"unsupported image mode {mode!r}; cannot convert it to RGB ({why(e)})") from None


def scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer or float pixel data to 0..255 (16-bit as value/257, others by their range)."""
    if mode.startswith("I;16") and a.dtype.kind == "u":
        return np.rint(a.astype(np.float32) / 257.0).astype(np.uint8)
    with np.errstate(all="ignore"):  # NaN/inf samples and ranges near the float limits are handled below
        x = a.astype(np.float64)
        finite = np.isfinite(x)
        if not finite.all():
            x = np.where(finite, x, 0.0)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            y = x * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            y = x
        elif lo >= 0.0 and hi <= 65535.0:
            y = x / 257.0
        else:
            y = (x / 2 - lo / 2) * (255.0 / (hi / 2 - lo / 2)) if hi > lo else np.zeros_like(x)
        y = np.nan_to_num(np.rint(y), nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(y, 0, 255).astype(np.uint8)


def _gray_to_rgb(g: np.ndarray) -> Image.Image:
    """An HxW uint8 array as an RGB image with three equal channels."""
    return Image.fromarray(np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2)))
