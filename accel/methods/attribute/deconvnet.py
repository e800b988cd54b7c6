"""Deconvnet (Zeiler & Fergus 2014): the signal going back is rectified at every ReLU, ignoring the forward mask."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from ...registry import Observer, register
from ...result import Result
from ._base import RuleParams, run_rule

if TYPE_CHECKING:
    from ...zoo import Backbone


@register(
    "deconvnet",
    "attribute",
    RuleParams,
    paper="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: RuleParams, obs: Observer) -> Result:
    """Input "gradient" with the deconvnet rule (rectified backward signal) at every ReLU/ReLU6."""
    return run_rule(net, img, "deconvnet", "deconvnet", p, obs)
