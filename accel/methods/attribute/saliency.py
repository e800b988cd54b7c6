"""Vanilla gradient saliency (Simonyan et al. 2014): |d class score / d input|, max over colour channels."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from ...registry import TARGET, Observer, register
from ...result import Result
from ._base import class_gradient, input_tensor, make_result, reduce_channels, target_meta

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
    t0 = time.perf_counter()
    x = input_tensor(net, img)
    grad, logits, t, _ = class_gradient(net, x, p.target, "saliency")
    obs.progress(1.0, "saliency done")
    return make_result(
        net,
        x,
        reduce_channels(grad, "abs_max"),
        t0,
        target=target_meta(net, t, logits),
        passes=1,
        extras={"gradient": grad},
        reduction="abs_max",
    )
