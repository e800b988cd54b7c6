"""Saliency to segmentation: an attribution map seeds OpenCV's GrabCut, which cuts the object out without labels.

High-saliency pixels become (probable or sure) foreground, low-saliency pixels (probable or sure) background;
GrabCut's colour models and graph cut then snap the rough map to the object's edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ...errors import BadInput
from ...registry import LAYER, TARGET, Observer, param, register
from ...result import Result
from ._base import GradCAMWeights, MapRun, Score, blur, class_gradient, reduce_channels, resolve_target

if TYPE_CHECKING:
    from ...zoo import Backbone


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape (1.0 when both are empty)."""
    a = np.asarray(a).astype(bool)
    b = np.asarray(b).astype(bool)
    if a.shape != b.shape:
        raise BadInput(f"iou: mask shapes differ: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _gt_mask(net: Any, gt: Any, size: int) -> np.ndarray:
    """A ground-truth mask at the input size: an HxW array at the input size, an array or image at the original
    photo's size (resized and centre-cropped like the photo), or a path to a mask image."""
    from ...images import open_image

    if isinstance(gt, (str, bytes)) or hasattr(gt, "__fspath__"):
        gt = open_image(gt)
    if isinstance(gt, Image.Image):
        gt = np.asarray(gt.convert("L")) > 127
    a = np.asarray(gt)
    if a.ndim == 3:
        a = a[..., 0] if a.shape[-1] in (1, 3, 4) else a[0]
    if a.ndim != 2:
        raise BadInput(f"gt_mask must be an HxW mask, got shape {a.shape}")
    if a.shape != (size, size):
        im = Image.fromarray((a.astype(bool) * 255).astype(np.uint8))
        a = np.asarray(net.to_tensor01(im)[0, 0].numpy()) > 0.5
    return a.astype(bool)


def scale_map(m: np.ndarray, how: str) -> np.ndarray:
    """Map -> [0,1]: minmax (fraction of the value range) or rank (fraction of pixels below, robust to peaks)."""
    m = np.asarray(m, np.float64)
    if how == "rank":
        flat = m.ravel()
        ranks = np.empty(flat.size)
        ranks[np.argsort(flat, kind="stable")] = np.arange(flat.size)
        # ties share their mean rank, so a flat map stays flat
        _, inv, counts = np.unique(flat, return_inverse=True, return_counts=True)
        sums = np.bincount(inv, weights=ranks)
        return (sums[inv] / counts[inv] / max(flat.size - 1, 1)).reshape(m.shape)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def seed_labels(m: np.ndarray, sure_fg: float, fg: float, bg: float) -> np.ndarray:
    """GrabCut labels from a map scaled to [0,1]: >= sure_fg sure FG, >= fg probable FG, <= bg sure BG, else
    probable BG."""
    import cv2

    lab = np.full(m.shape, cv2.GC_PR_BGD, np.uint8)
    lab[m >= fg] = cv2.GC_PR_FGD
    lab[m >= sure_fg] = cv2.GC_FGD
    lab[m <= bg] = cv2.GC_BGD
    return lab


@dataclass
class SaliencyGrabCutParams:
    target: int | None = TARGET(help="class whose evidence seeds the cut (default: the predicted class)")
    seed_map: str = param(
        "gradcam",
        "the map that seeds GrabCut: gradcam (smooth, object-level) or saliency (gradient, blurred)",
        choices=("gradcam", "saliency"),
    )
    layer: str | None = LAYER()
    scaling: str = param(
        "rank",
        "how the seed map is scaled to 0..1 before thresholding: minmax (fraction of its range) or rank "
        "(fraction of pixels, e.g. fg=0.7 makes the top 30% probable foreground)",
        choices=("minmax", "rank"),
    )
    sure_fg: float = param(0.95, "scaled map value above which a pixel is sure foreground", min=0.0, max=1.0)
    fg: float = param(0.7, "scaled map value above which a pixel is probable foreground", min=0.0, max=1.0)
    bg: float = param(0.3, "scaled map value below which a pixel is sure background", min=0.0, max=1.0)
    iterations: int = param(5, "GrabCut iterations", min=1, max=50)
    saliency_sigma: float = param(6.0, "Gaussian blur (pixels) of the saliency seed map", min=0.1, max=100.0)
    gt_mask: Any = param(
        None,
        "optional ground-truth mask (path or HxW array); its IoU with the cut goes in meta",
        kind="image",
    )


@register(
    "saliency_grabcut",
    "attribute",
    SaliencyGrabCutParams,
    paper="Simonyan et al. 2014 (sec. 3.2, saliency-seeded GraphCut); Rother et al. 2004, GrabCut",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: SaliencyGrabCutParams, obs: Observer) -> Result:
    """Mask (0/1 map) of the object GrabCut cuts out from the seeds; the cut-out image and seeds in extras."""
    import cv2

    run = MapRun(net, img, "saliency_grabcut", p.target)
    x = run.x
    if not p.bg < p.fg <= p.sure_fg:
        raise BadInput(
            f"saliency_grabcut: need bg < fg <= sure_fg, got bg={p.bg}, fg={p.fg}, sure_fg={p.sure_fg}"
        )
    size = x.shape[-1]
    if p.seed_map == "gradcam":
        cam = GradCAMWeights(net, p.layer)
        logits = cam.forward(x)
        t = resolve_target(net, p.target, logits, "saliency_grabcut")
        heat, _ = cam.compute(Score({t: 1.0}))
        passes = cam.passes
    else:
        grad, logits, t, _ = class_gradient(net, x, p.target, "saliency_grabcut")
        heat = blur(reduce_channels(grad, "abs_max")[None], p.saliency_sigma)[0]
        passes = 1
    scaled = scale_map(heat, p.scaling)
    labels = seed_labels(scaled, p.sure_fg, p.fg, p.bg)
    fg_seeds = int(np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).sum())
    bg_seeds = int(np.isin(labels, (cv2.GC_BGD, cv2.GC_PR_BGD)).sum())
    if fg_seeds == 0 or bg_seeds == 0:
        raise BadInput(
            "saliency_grabcut: the seed map gives no "
            + ("foreground" if fg_seeds == 0 else "background")
            + " pixels for these thresholds (the map is flat for this class); lower fg or raise bg"
        )
    rgb = (net.denormalize(x)[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    mask = labels.copy()
    bgd = np.zeros((1, 65), np.float64)
    fgd = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's GMM initialisation uses k-means with OpenCV's RNG
    cv2.grabCut(bgr, mask, (0, 0, 0, 0), bgd, fgd, p.iterations, cv2.GC_INIT_WITH_MASK)  # rect unused
    cut = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
    cutout = Image.fromarray(np.dstack([rgb, (cut * 255).astype(np.uint8)]), "RGBA")
    meta: dict[str, Any] = {
        "seed_map": p.seed_map,
        "foreground_fraction": float(cut.mean()),
        "seed_foreground_fraction": float((scaled >= p.fg).mean()),
    }
    if p.gt_mask is not None:
        gt = _gt_mask(net, p.gt_mask, size)
        meta["iou"] = iou(cut, gt)
        meta["seed_iou"] = iou(scaled >= p.fg, gt)
    obs.progress(1.0, "grabcut done")
    return run.result(
        cut.astype(np.float32),
        t,
        logits,
        passes=passes,
        extras={"cutout": cutout, "seed": heat, "trimap": labels},
        **meta,
    )
