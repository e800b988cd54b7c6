"""Localisation of an attribution map against a ground-truth region (a box list or a mask per photo).

`pointing_game` (Zhang et al. 2018): does the map's maximum fall inside the region? `relevance_mass_accuracy`
(Arras et al. 2022): the share of the map's relevance inside the region. `relevance_rank_accuracy` (Arras et al.
2022): the share of the K highest-ranked pixels inside the region, K = the region's size. All three judge maps
against `batch.masks`; a seeded random map scores the region's share of the image on average (their chance level).

`region_mask(s)` turn what a user has (boxes in the photo's own pixels, or a mask image the photo's size) into
masks on the network input, through the same resize and centre crop that turned the photo into the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from ..errors import BadInput
from .catalogue import EvalBatch, metric

if TYPE_CHECKING:
    from ..backbone import Backbone

# one photo's ground truth: boxes (x0, y0, x1, y1) in the photo's pixels, or a mask image / array of its size
Region = Sequence[Sequence[float]] | Image.Image | np.ndarray


def _box_image(boxes: Sequence[Sequence[float]], size: tuple[int, int]) -> Image.Image:
    """The boxes drawn white on black at the photo's size; BadInput for malformed boxes."""
    w, h = size
    if len(boxes) == 0:
        raise BadInput("the box list is empty: give at least one box (x0, y0, x1, y1) per photo")
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for i, b in enumerate(boxes):
        try:
            x0, y0, x1, y1 = (float(v) for v in b)
        except (TypeError, ValueError):
            raise BadInput(f"box {i} must be four numbers (x0, y0, x1, y1), got {b!r}") from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
            raise BadInput(
                f"box {i} must have finite corners with x1 > x0 and y1 > y0, got {(x0, y0, x1, y1)}"
            )
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise BadInput(f"box {i} {(x0, y0, x1, y1)} lies outside the {w}x{h} photo")
        # pixel (c, r) is inside when its centre (c + 0.5, r + 0.5) is: columns ceil(x0 - 0.5) .. ceil(x1 - 0.5) - 1
        c0, r0 = max(0, math.ceil(x0 - 0.5)), max(0, math.ceil(y0 - 0.5))
        c1, r1 = min(w, math.ceil(x1 - 0.5)), min(h, math.ceil(y1 - 0.5))
        if c1 > c0 and r1 > r0:
            draw.rectangle((c0, r0, c1 - 1, r1 - 1), fill=255)
    return img


def _mask_image(mask: Image.Image | np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A user's mask (PIL image or 2-D array, nonzero = inside) as a white-on-black image of the photo's size."""
    if isinstance(mask, Image.Image):
        a = np.asarray(mask.convert("L"))
    else:
        a = np.asarray(mask)
        if a.ndim == 3 and a.shape[2] in (1, 3, 4):
            a = a[..., :3].max(axis=2)
        if a.ndim != 2:
            raise BadInput(f"a mask array must be 2-D (H, W), got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
            raise BadInput(f"a mask array must be boolean or numeric, got dtype {a.dtype}")
    if (a.shape[1], a.shape[0]) != tuple(size):
        raise BadInput(
            f"the mask is {a.shape[1]}x{a.shape[0]} but the photo is {size[0]}x{size[1]}: give one mask per photo at its size"
        )
    inside = np.asarray(a != 0)
    return Image.fromarray((inside * 255).astype(np.uint8), mode="L")


def region_mask(net: Backbone, region: Region, size: tuple[int, int]) -> np.ndarray:
    """One photo's region as a (H, W) bool mask on `net`'s input.

    `region` is a list (or (K, 4) array) of boxes (x0, y0, x1, y1) in the photo's own pixels (x right, y down,
    corners on pixel edges, so (0, 0, w, h) is the whole photo), or a mask image / 2-D array of the photo's size
    (nonzero = inside). `size` is the photo's (width, height). The region goes through `net`'s own resize and
    centre crop (the path the photo took), then is thresholded at half coverage; a region wholly outside the crop
    is refused.
    """
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise BadInput(f"size must be the photo's (width, height), got {size!r}") from None
    if w < 1 or h < 1:
        raise BadInput(f"size must be positive, got {(w, h)}")
    if (
        isinstance(region, np.ndarray)
        and region.ndim == 2
        and region.shape[1] == 4
        and region.shape != (h, w)
    ):
        region = region.tolist()  # a (K, 4) array of boxes, not a mask
    if isinstance(region, (Image.Image, np.ndarray)):
        drawn = _mask_image(region, (w, h))
    elif isinstance(region, Sequence) and not isinstance(region, str):
        drawn = _box_image(region, (w, h))
    else:
        raise BadInput(f"a region is a list of boxes or a mask image, got {type(region).__name__}")
    if not np.asarray(drawn).any():
        raise BadInput("the region is empty (no pixel inside the boxes or the mask)")
    mask = net.to_tensor01(drawn.convert("RGB"))[0, 0].numpy() >= 0.5
    if not mask.any():
        raise BadInput("the region lies outside the part of the photo the network sees (its centre crop)")
    return mask


def region_masks(net: Backbone, regions: Sequence[Region], sizes: Sequence[tuple[int, int]]) -> np.ndarray:
    """`region_mask` for every photo: (N, H, W) bool, ready for `EvalBatch(masks=...)`."""
    if len(regions) != len(sizes):
        raise BadInput(f"need one region per photo ({len(sizes)}), got {len(regions)}")
    if not regions:
        raise BadInput("no regions given")
    return np.stack([region_mask(net, r, s) for r, s in zip(regions, sizes)])


def _flat(batch: EvalBatch, abs_: bool) -> tuple[np.ndarray, np.ndarray]:
    """Maps (N, H*W) float64 (|a| when `abs_`) and masks (N, H*W) bool."""
    a = np.asarray(batch.maps, np.float64).reshape(len(batch.maps), -1)
    assert batch.masks is not None  # Metric.__call__ refuses a batch without masks
    return (np.abs(a) if abs_ else a), batch.masks.reshape(len(a), -1)


def _disk_dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Masks (N,H,W) grown by `radius` pixels (a disk), Zhang et al.'s tolerance for the pointing game."""
    from scipy.ndimage import binary_dilation

    r = np.arange(-radius, radius + 1)
    disk = (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2
    return np.stack([binary_dilation(m, structure=disk) for m in masks])


@metric(
    "pointing_game", "localisation", higher_is_better=True, paper="Zhang et al. 2018 (IJCV)", needs_masks=True
)
def pointing_game(batch: EvalBatch, *, tolerance: int = 0, absolute: bool = False) -> np.ndarray:
    """Hit (1) when the map's maximum lies in the region (within `tolerance` pixels), else 0; higher is better.

    Ties: a hit when any pixel sharing the maximum is inside. Zhang et al. allow 15 pixels of tolerance at
    224 px; the default 0 is Quantus's. An empty region scores NaN.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, np.integer)) or tolerance < 0:
        raise BadInput(f"tolerance must be a whole number of pixels >= 0, got {tolerance!r}")
    assert batch.masks is not None
    masks = _disk_dilate(batch.masks, int(tolerance)) if tolerance else batch.masks
    a, _ = _flat(batch, bool(absolute))
    s = masks.reshape(len(a), -1)
    hit = (s & (a == a.max(axis=1, keepdims=True))).any(axis=1).astype(np.float64)
    hit[~batch.masks.reshape(len(a), -1).any(axis=1)] = np.nan
    return hit


@metric(
    "relevance_mass_accuracy",
    "localisation",
    higher_is_better=True,
    paper="Arras et al. 2022 (Information Fusion)",
    needs_masks=True,
)
def relevance_mass_accuracy(batch: EvalBatch, *, absolute: bool = False) -> np.ndarray:
    """Share of the map's relevance inside the region, sum(a * mask) / sum(a); higher is better.

    On signed maps negative relevance counts against (Quantus's default); `absolute=True` scores |a| instead. An empty
    region, or a map summing to 0, scores NaN.
    """
    a, s = _flat(batch, bool(absolute))
    total = a.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (a * s).sum(axis=1) / total
    out[(total == 0) | ~s.any(axis=1)] = np.nan
    return out


@metric(
    "relevance_rank_accuracy",
    "localisation",
    higher_is_better=True,
    paper="Arras et al. 2022 (Information Fusion)",
    needs_masks=True,
)
def relevance_rank_accuracy(batch: EvalBatch, *, absolute: bool = False) -> np.ndarray:
    """Share of the K most relevant pixels that lie in the region, K = the region's pixel count; higher is better.

    Ties at the K-th value are broken by NumPy's argsort of -a (as Quantus does). An empty region scores NaN.
    """
    a, s = _flat(batch, bool(absolute))
    k = s.sum(axis=1)
    order = np.argsort(-a, axis=-1)
    ranked = np.take_along_axis(s, order, axis=1)
    top = np.arange(a.shape[1])[None, :] < k[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (ranked & top).sum(axis=1) / k
    out[k == 0] = np.nan
    return out.astype(np.float64)
