"""Grad-CAM (Selvaraju et al. 2017): channel weights = spatially averaged gradients of the class score."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from ...registry import LAYER, TARGET, Observer, param, register
from ...result import Result
from ._base import GradCAMWeights, run_cam

if TYPE_CHECKING:
    from ...zoo import Backbone


@dataclass
class GradCAMParams:
    target: int | None = TARGET()
    layer: str | None = LAYER()
    relu: bool = param(True, "keep only positive evidence, as in the paper")


@register(
    "gradcam",
    "attribute",
    GradCAMParams,
    paper="Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
    needs_grad=True,
    featured=True,
)
def run(net: Backbone, img: Image.Image, p: GradCAMParams, obs: Observer) -> Result:
    """ReLU(sum_k mean(d score/d A_k) A_k) at the layer, bilinearly upsampled to the input size."""
    cam = GradCAMWeights(net, p.layer, relu=p.relu)
    return run_cam(cam, net, img, p.target, "gradcam", obs=obs)
