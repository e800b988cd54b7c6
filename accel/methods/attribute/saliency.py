"""Vanilla gradient saliency (Simonyan et al. 2014): |d class score / d input|, max over colour channels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from ...registry import TARGET, Observer, register
from ...result import Result
from ._base import MapRun, class_gradient, reduce_channels

if TYPE_CHECKING:
    from ...zoo import Backbone


@dataclass
class SaliencyParams:
    target: int | None = TARGET()


@register(
    "saliency",
    "attribute",
    SaliencyParams,
    paper="Simonyan, Vedaldi & Zisserman 2014, Deep Inside Convolutional Networks",
    needs_grad=True,
    featured=True,
)
def run(net: Backbone, img: Image.Image, p: SaliencyParams, obs: Observer) -> Result:
    """Gradient of the class logit w.r.t. the network input; abs, then max over channels."""
    run = MapRun(net, img)
    grad, logits, t, _ = class_gradient(net, run.x, p.target, "saliency")
    obs.progress(1.0, "saliency done")
    data = reduce_channels(grad, "abs_max")
    return run.result(data, t, logits, passes=1, extras={"gradient": grad}, reduction="abs_max")
