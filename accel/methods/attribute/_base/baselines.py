"""Reference inputs for path and perturbation methods (integrated gradients, occlusion): zero, black, mean,
blur, uniform noise, in network-input space."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ....errors import BadInput

if TYPE_CHECKING:
    from ....backbone import Backbone


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a (C,H,W) float image (reflected borders)."""
    import cv2

    if sigma <= 0:
        raise BadInput(f"blur sigma must be > 0, got {sigma}")
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0), dtype=np.float32)
    out = cv2.GaussianBlur(hwc, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)
    if out.ndim == 2:
        out = out[..., None]
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def make_baseline(
    net: Backbone, x: torch.Tensor, kind: str, sigma: float = 10.0, seed: int = 0
) -> np.ndarray:
    """A reference input (C,H,W) in network-input space: zero (the input-space origin; the dataset mean colour for
    mean/std-normalised nets), black (0 in pixel space), mean (the image's per-channel mean), blur, uniform noise."""
    x0 = x[0].detach().float().numpy()
    c, h, w = x0.shape
    if kind == "zero":
        return np.zeros_like(x0)
    if kind == "black":
        return net.normalize(torch.zeros(1, 3, h, w))[0].numpy().astype(np.float32)
    if kind == "mean":
        return np.broadcast_to(x0.mean((1, 2), keepdims=True), x0.shape).astype(np.float32).copy()
    if kind == "blur":
        return blur(x0, sigma)
    if kind == "uniform":
        g = torch.Generator().manual_seed(int(seed))
        return net.normalize(torch.rand(1, 3, h, w, generator=g))[0].numpy().astype(np.float32)
    raise BadInput(f"unknown baseline {kind!r}; use zero, black, mean, blur or uniform")
