"""Guided Grad-CAM (Selvaraju et al. 2017): guided backprop gated by the upsampled Grad-CAM map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from ...registry import LAYER, TARGET, Observer, param, register
from ...result import Result
from ._base import REDUCTIONS, GradCAMWeights, MapRun, Score, class_gradient, gradient_rgb, reduce_channels

if TYPE_CHECKING:
    from ...zoo import Backbone


@dataclass
class GuidedGradCAMParams:
    target: int | None = TARGET()
    layer: str | None = LAYER()
    reduce: str = param("abs_max", "channel reduction of the (C,H,W) product", choices=REDUCTIONS)


@register(
    "guided_gradcam",
    "attribute",
    GuidedGradCAMParams,
    paper="Selvaraju et al. 2017, Grad-CAM (Guided Grad-CAM)",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: GuidedGradCAMParams, obs: Observer) -> Result:
    """Element-wise product of the guided-backprop gradient (C,H,W) and the Grad-CAM map, reduced over channels."""
    run = MapRun(net, img, "guided_gradcam", p.target)
    cam = GradCAMWeights(net, p.layer)
    logits = cam.forward(run.x)
    grad, _, t, n = class_gradient(net, run.x, p.target, "guided_gradcam", rule="guided")
    heat, low = cam.compute(Score({t: 1.0}))
    prod = grad * heat[None]
    obs.progress(1.0, "guided grad-cam done")
    return run.result(
        reduce_channels(prod, p.reduce),
        t,
        logits,
        passes=cam.passes + 1,
        extras={"gradient": prod, "gradcam": heat, "rgb": gradient_rgb(prod)},
        layer=cam.layer,
        rectifiers=n,
        reduction=p.reduce,
    )
