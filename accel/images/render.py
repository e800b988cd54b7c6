"""Rendering: array conversions, the ImageNet-style resize and crop, colour maps, heat-map overlays and grids."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BadInput
from .modes import to_rgb

__all__ = ["colorize", "colormap", "from_array", "make_grid", "overlay", "resize_center_crop", "to_array"]


def to_array(img: Image.Image | np.ndarray) -> np.ndarray:
    """The image as an HxWx3 uint8 array (any PIL mode converted to RGB; transparency on white)."""
    if isinstance(img, np.ndarray):
        img = from_array(img)
    if not isinstance(img, Image.Image):
        raise BadInput(f"to_array expects a PIL image, got {type(img).__name__}")
    return np.array(to_rgb(img, (255, 255, 255)), dtype=np.uint8)


def from_array(a: Any) -> Image.Image:
    """An RGB PIL image from an HxW or HxWx3 array, uint8 (0..255) or float (0..1); NaN/inf are refused."""
    return Image.fromarray(_as_uint8_rgb(a, "from_array"))


def _as_uint8_rgb(a: Any, what: str) -> np.ndarray:
    """An HxW or HxWx3 array as contiguous HxWx3 uint8, refusing channel-first, empty and out-of-range arrays."""
    arr = np.asarray(a)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        raise BadInput(
            f"{what}: array of shape {arr.shape} looks channel-first; pass HxWx3 (e.g. a.transpose(1, 2, 0))"
        )
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise BadInput(f"{what}: expected an HxW or HxWx3 array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadInput(f"{what}: the array has a zero dimension (shape {arr.shape})")
    arr = _values_to_uint8(arr, what)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _values_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    """Pixel values as uint8: bool as 0/255, integers in 0..255 as they are, floats in 0..1 scaled."""
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        return arr.astype(np.uint8) * 255
    if kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise BadInput(f"{what}: integer pixel values must lie in 0..255, got {arr.min()}..{arr.max()}")
        return arr.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(arr).all():
            raise BadInput(f"{what}: the array contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise BadInput(
                f"{what}: float pixel values must lie in 0..1, got {lo:.4g}..{hi:.4g}; clip or rescale first "
                "(divide by 255 if they are 0..255)"
            )
        return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise BadInput(f"{what}: unsupported array dtype {arr.dtype}; use uint8 or float in 0..1")


# --------------------------------------------------------------------------------------------- preprocessing


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def center_crop_geometry(w: int, h: int, size: int, resize: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top) of a w x h image whose shorter side goes to `resize`
    and whose centre `size` square is kept (torchvision's Resize + CenterCrop rounding)."""
    if w <= h:
        new_w, new_h = int(resize), int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), int(resize)
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def crop_box(w: int, h: int, size: int, resize: int) -> tuple[float, float, float, float]:
    """The region (x0, y0, x1, y1), in the original w x h image's pixels, that the network input covers after
    the resize + centre crop; what full-resolution overlays and user-drawn boxes map through."""
    new_w, new_h, left, top = center_crop_geometry(w, h, size, resize)
    sx, sy = w / new_w, h / new_h
    return left * sx, top * sy, (left + size) * sx, (top + size) * sy


def resize_center_crop(
    img: Image.Image, size: int, resize: int | None = None, *, resample: str = "bilinear"
) -> Image.Image:
    """Shorter side to `resize` (default round(size*256/224)), then the centre `size`x`size` crop, as in ImageNet
    evaluation preprocessing (same rounding as torchvision's Resize + CenterCrop)."""
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise BadInput(f"size must be a positive integer, got {size!r}")
    if resize is None:
        resize = round(size * 256 / 224)
    if not isinstance(resize, (int, np.integer)) or resize < size:
        raise BadInput(f"resize must be an integer >= size ({size}), got {resize!r}")
    if resample not in _RESAMPLE:
        raise BadInput(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    if img.mode not in ("RGB", "L"):
        img = to_rgb(img, (255, 255, 255))
    w, h = img.size
    new_w, new_h, left, top = center_crop_geometry(w, h, size, resize)
    if max(new_w, new_h) <= 8 * resize:  # the usual case: resize, then crop
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), _RESAMPLE[resample])
        return img.crop((left, top, left + size, top + size))
    # Extreme aspect ratio (1x60000 would make a 256x15 M intermediate): resample only the crop box. Same filter
    # and scale (PIL reads the source around the box), so it matches resize-then-crop to +-1 level.
    sx, sy = new_w / w, new_h / h
    box = (left / sx, top / sy, (left + size) / sx, (top + size) / sy)
    return img.resize((size, size), _RESAMPLE[resample], box=box)


# --------------------------------------------------------------------------------------------- display


def colormap(name: str, what: str = "colormap") -> Callable[[np.ndarray], np.ndarray]:
    """The matplotlib colormap called `name` (values 0..1 -> RGBA), or BadInput naming the unknown map."""
    from matplotlib import colormaps

    try:
        return colormaps[name]
    except KeyError:
        raise BadInput(f"{what}: unknown colormap {name!r} (see matplotlib.colormaps)") from None


def colorize(
    m: np.ndarray, cmap: str = "jet", vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Map a 2-D float array to uint8 RGB with a matplotlib colormap (min-max scaled unless bounds are given)."""
    m = np.asarray(m, dtype=np.float64)
    lo = float(np.nanmin(m)) if vmin is None else vmin
    hi = float(np.nanmax(m)) if vmax is None else vmax
    span = hi - lo if hi > lo else 1.0
    u = np.clip((m - lo) / span, 0.0, 1.0)
    rgb = colormap(cmap, "colorize")(u)[..., :3]
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def overlay(
    img: Image.Image,
    heat: np.ndarray,
    alpha: float = 0.5,
    cmap: str | Callable[[np.ndarray], np.ndarray] = "jet",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """Blend a colourised HxW heat map (resized to the image) over the image, for attribution displays."""
    h = np.asarray(heat, dtype=np.float64)
    while h.ndim > 2 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2 or h.size == 0:
        raise BadInput(f"overlay: heat must be a non-empty HxW array, got shape {np.shape(heat)}")
    if not np.isfinite(h).all():
        raise BadInput("overlay: the heat map contains NaN or infinite values")
    if not 0.0 <= alpha <= 1.0:
        raise BadInput(f"overlay: alpha must lie in 0..1, got {alpha}")
    lo = float(h.min()) if vmin is None else float(vmin)
    hi = float(h.max()) if vmax is None else float(vmax)
    norm = np.clip((h - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(h)
    base = to_array(img).astype(np.float32) / 255.0
    height, width = base.shape[:2]
    if norm.shape != (height, width):
        small = Image.fromarray(norm.astype(np.float32))
        norm = np.clip(np.asarray(small.resize((width, height), Image.Resampling.BILINEAR)), 0.0, 1.0)
    lookup = colormap(cmap, "overlay") if isinstance(cmap, str) else cmap
    colour = np.asarray(lookup(norm), dtype=np.float32)[..., :3]
    return from_array(np.clip((1.0 - alpha) * base + alpha * colour, 0.0, 1.0))


def make_grid(
    tiles: Sequence[np.ndarray] | np.ndarray,
    ncols: int | None = None,
    pad: int = 1,
    pad_value: int | tuple[int, int, int] = 255,
) -> np.ndarray:
    """Row-major mosaic of equally sized tiles (HxW or HxWx3, uint8 or float 0..1), `pad` pixels around each.

    Returns uint8 HxW when every tile is grayscale and `pad_value` is one number, else HxWx3."""
    items = list(tiles)
    if not items:
        raise BadInput("make_grid: no tiles given")
    arrays = [_values_to_uint8(np.asarray(t), "make_grid") for t in items]
    arrays = [a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a for a in arrays]
    shape = arrays[0].shape[:2]
    for i, a in enumerate(arrays):
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            raise BadInput(f"make_grid: tile {i} has shape {a.shape}; expected HxW or HxWx3")
        if a.shape[:2] != shape:
            raise BadInput(
                f"make_grid: tile {i} is {a.shape[:2]}, tile 0 is {shape}; tiles must be equally sized"
            )
    if pad < 0:
        raise BadInput(f"make_grid: pad must be >= 0, got {pad}")
    n = len(arrays)
    if ncols is None:
        ncols = math.ceil(math.sqrt(n))
    if ncols <= 0:
        raise BadInput(f"make_grid: ncols must be positive, got {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    level = int(pad_value) if isinstance(pad_value, (int, np.integer)) else None  # one grey level
    colour = level is None or any(a.ndim == 3 for a in arrays)
    th, tw = shape
    out_shape = (nrows * (th + pad) + pad, ncols * (tw + pad) + pad)
    if level is not None and not colour:
        if not 0 <= level <= 255:
            raise BadInput(f"make_grid: pad_value must lie in 0..255, got {pad_value!r}")
        grid = np.full(out_shape, level, dtype=np.uint8)
    else:
        fill = np.broadcast_to(np.asarray(pad_value, dtype=np.int64), (3,))
        if (fill < 0).any() or (fill > 255).any():
            raise BadInput(f"make_grid: pad_value must lie in 0..255, got {pad_value!r}")
        grid = np.empty((*out_shape, 3), dtype=np.uint8)
        grid[...] = fill.astype(np.uint8)
    for i, a in enumerate(arrays):
        r, c = divmod(i, ncols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        grid[y : y + th, x : x + tw] = a[..., None] if colour and a.ndim == 2 else a
    return grid
