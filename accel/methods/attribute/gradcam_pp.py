"""Grad-CAM++ (Chattopadhay et al. 2018): pixel-wise weighted positive gradients (closed form, exp(score))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ...registry import LAYER, TARGET, Observer, register
from ...result import Result
from ._base import CAMBase, Score, run_cam

if TYPE_CHECKING:
    from ...zoo import Backbone


class GradCAMPlusPlus(CAMBase):
    """w_k = sum_ij alpha_kij relu(g_kij), alpha = g^2 / (2 g^2 + sum_ij A_kij g^3) (the exponential-score form)."""

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        assert grads is not None
        g2 = grads.double() ** 2
        g3 = g2 * grads.double()
        s = acts.double().sum((2, 3), keepdim=True)
        den = 2 * g2 + s * g3
        alpha = torch.where(
            grads != 0, g2 / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(g2)
        )
        return (alpha * grads.double().clamp(min=0)).sum((2, 3)).float()


@dataclass
class GradCAMPPParams:
    target: int | None = TARGET()
    layer: str | None = LAYER()


@register(
    "gradcam_pp",
    "attribute",
    GradCAMPPParams,
    paper="Chattopadhay et al. 2018, Grad-CAM++: Improved Visual Explanations for Deep Convolutional Networks",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: GradCAMPPParams, obs: Observer) -> Result:
    """ReLU(sum_k w_k A_k) with Grad-CAM++ weights, upsampled to the input size."""
    return run_cam(GradCAMPlusPlus(net, p.layer), net, img, p.target, "gradcam_pp", obs=obs)
