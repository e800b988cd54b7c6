"""Gradient x Input (Shrikumar et al. 2016): each input value times the class score's gradient there.

The (C,H,W) attribution x * dS/dx is Captum's `InputXGradient`; the map reduces it over the colour channels,
by default with a signed sum, so the map at a pixel is the first-order Taylor contribution of that pixel's
colour vector: sum_c x_c dS/dx_c (for a network that is linear in its input the map sums to S minus the bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from ...registry import TARGET, Observer, param, register
from ...result import Result
from ._base import REDUCTIONS, MapRun, class_gradient, reduce_channels

if TYPE_CHECKING:
    from ...zoo import Backbone


@dataclass
class InputXGradientParams:
    target: int | None = TARGET()
    reduce: str = param(
        "sum", "channel reduction of the (C,H,W) attribution (sum: signed)", choices=REDUCTIONS
    )


@register(
    "input_x_gradient",
    "attribute",
    InputXGradientParams,
    paper="Shrikumar et al. 2016, Not Just a Black Box: Learning Important Features Through Propagating "
    "Activation Differences",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: InputXGradientParams, obs: Observer) -> Result:
    """x * d logit[target] / dx on the preprocessed input, reduced over channels (one forward and backward)."""
    run = MapRun(net, img, "input_x_gradient", p.target)
    grad, logits, t, _ = class_gradient(net, run.x, p.target, "input_x_gradient")
    attr = run.x[0].numpy() * grad
    obs.progress(1.0, "input x gradient done")
    return run.result(
        reduce_channels(attr, p.reduce), t, logits, passes=1, extras={"attribution": attr}, reduction=p.reduce
    )
