"""Guided backpropagation (Springenberg et al. 2015): only positive gradients pass back through active ReLUs."""

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
class GuidedBackpropParams:
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
    "guided_backprop",
    "attribute",
    GuidedBackpropParams,
    paper="Springenberg et al. 2015, Striving for Simplicity: The All Convolutional Net",
    needs_grad=True,
    featured=True,
)
def run(net: Backbone, img: Image.Image, p: GuidedBackpropParams, obs: Observer) -> Result:
    """Input gradient with the guided rule at every ReLU/ReLU6 (module, functional or in-place)."""
    return run_rule(
        net,
        img,
        "guided_backprop",
        "guided",
        target=p.target,
        layer=p.layer,
        channel=p.channel,
        row=p.row,
        col=p.col,
        reduce=p.reduce,
        obs=obs,
    )
