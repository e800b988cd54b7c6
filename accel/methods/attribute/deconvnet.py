"""Deconvnet (Zeiler & Fergus 2014): the signal going back is rectified at every ReLU, ignoring the forward mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from ...registry import LAYER, TARGET, Observer, param, register
from ...result import Result
from ._base import REDUCTIONS, run_rule

if TYPE_CHECKING:
    from ...zoo import Backbone


@dataclass
class DeconvnetParams:
    target: int | None = TARGET(
        help="class index to explain (default: the predicted class unless layer is set)"
    )
    layer: str | None = LAYER(
        help="explain a unit of this layer instead of a class (a name from net.layers())"
    )
    channel: int | None = param(None, "channel of `layer` (default: its most active channel)", min=0)
    row: int | None = param(
        None, "row of a single unit in `layer`'s map (with col; default: the whole channel)", min=0
    )
    col: int | None = param(None, "column of a single unit in `layer`'s map (with row)", min=0)
    reduce: str = param("abs_max", "channel reduction of the (C,H,W) gradient", choices=REDUCTIONS)


@register(
    "deconvnet",
    "attribute",
    DeconvnetParams,
    paper="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: DeconvnetParams, obs: Observer) -> Result:
    """Input "gradient" with the deconvnet rule (rectified backward signal) at every ReLU/ReLU6."""
    return run_rule(
        net,
        img,
        "deconvnet",
        "deconvnet",
        target=p.target,
        layer=p.layer,
        channel=p.channel,
        row=p.row,
        col=p.col,
        reduce=p.reduce,
        obs=obs,
    )
