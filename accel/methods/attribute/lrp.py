"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2019) with the usual composites.

The class logit f_t(x) is handed back layer by layer as relevance, each layer splitting what it received among
its inputs by the composite's rule (`_base/lrp_rules.py`): LRP-epsilon on dense layers, z+ / alpha-beta / gamma on
convolutions, flat or z-box (bounded by the backbone's preprocessing of 0..1 pixels) on the first layer.
BatchNorm is folded into the convolution before it, ReLU/ReLU6 pass relevance through, residual adds split it in
proportion (`_base/lrp_mode.py`). The map is the input relevance summed over channels; its total is the logit
minus what the biases absorbed (exactly the logit for LRP-0 on a bias-free network).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ...registry import TARGET, Observer, param, register
from ...result import Result
from ._base import MapRun, reduce_channels, resolve_target
from ._base.lrp_mode import LRPMode
from ._base.lrp_rules import COMPOSITES, Box, Composite, make_composite

if TYPE_CHECKING:
    from ...zoo import Backbone


@dataclass
class LRPParams:
    target: int | None = TARGET()
    composite: str = param(
        "epsilon_gamma_box",
        "rules per layer: epsilon_gamma_box (z-box first conv, gamma convs), epsilon_plus_flat (flat first layer, "
        "z+ convs), epsilon_plus (z+ = alpha1-beta0 convs), epsilon_alpha2_beta1[_flat], or epsilon everywhere; "
        "dense layers always take LRP-epsilon",
        choices=COMPOSITES,
    )
    epsilon: float = param(
        1e-6, "epsilon of the LRP-epsilon rule (dense layers; all layers for 'epsilon')", min=1e-9, max=100.0
    )
    gamma: float = param(
        0.25, "gamma of the LRP-gamma rule (how much positive weights are favoured)", min=0.0, max=100.0
    )


def input_box(net: Backbone) -> Box:
    """The z-box bounds: the backbone's preprocessing of an all-black and an all-white pixel, per channel."""
    with torch.no_grad():
        low = net.normalize(torch.zeros(1, 3, 1, 1))
        high = net.normalize(torch.ones(1, 3, 1, 1))
    return Box(torch.minimum(low, high), torch.maximum(low, high))


@register(
    "lrp",
    "attribute",
    LRPParams,
    paper="Bach et al. 2015, On Pixel-Wise Explanations by Layer-Wise Relevance Propagation; Montavon et al. 2019",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: LRPParams, obs: Observer) -> Result:
    """One forward pass through the rules, one backward pass of relevance seeded with the target's logit."""
    run = MapRun(net, img, "lrp", p.target)
    composite = make_composite(p.composite, p.epsilon, p.gamma)
    mod = net.require_module("lrp")
    out = relevance(
        mod, run.x, composite, input_box(net), lambda logits: resolve_target(net, p.target, logits, "lrp")
    )
    obs.progress(1.0, "lrp done")
    data = reduce_channels(out.relevance, "sum")
    return run.result(
        data,
        out.target,
        out.logits,
        passes=2,
        extras={"relevance": out.relevance},
        composite=p.composite,
        rules=out.rules,
        relevance_out=float(out.logits[0, out.target]),
        relevance_in=float(out.relevance.astype("float64").sum()),
    )


@dataclass
class Relevance:
    """What one LRP pass gives: input relevance (C,H,W), the logits (1, classes) seen during the pass, the class
    explained, and how many layers each rule handled."""

    relevance: np.ndarray
    logits: np.ndarray
    target: int
    rules: dict[str, int]


def relevance(
    module: torch.nn.Module,
    x: torch.Tensor,
    composite: Composite,
    box: Box,
    pick: Callable[[np.ndarray], int],
) -> Relevance:
    """LRP of one input x (1,C,H,W) through `module` in x's dtype: the class `pick(logits)` starts with its own
    logit as relevance, R_out = f_t(x), and the rules hand it back to the input."""
    xg = x.detach().clone().requires_grad_(True)
    mode = LRPMode(composite, xg, box)
    with torch.enable_grad():
        with mode:
            out = module(xg)
        logits = out.detach().numpy()
        t = pick(logits)
        seed = torch.zeros_like(out)
        seed[0, t] = out[0, t].detach()
        (rel,) = torch.autograd.grad(out, xg, seed)
    return Relevance(rel[0].detach().numpy(), logits, t, dict(mode.stats))
