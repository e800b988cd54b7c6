"""Guided backpropagation (Springenberg et al. 2015): only positive gradients pass back through active ReLUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PIL import Image

from ...registry import Observer, register
from ...result import Result
from ._base import RuleParams, run_rule

if TYPE_CHECKING:
    from ...zoo import Backbone


@register(
    "guided_backprop",
    "attribute",
    RuleParams,
    paper="Springenberg et al. 2015, Striving for Simplicity: The All Convolutional Net",
    needs_grad=True,
    featured=True,
)
def run(net: Backbone, img: Image.Image, p: RuleParams, obs: Observer) -> Result:
    """Input gradient with the guided rule at every ReLU/ReLU6 (module, functional or in-place)."""
    return run_rule(net, img, "guided_backprop", "guided", p, obs)
