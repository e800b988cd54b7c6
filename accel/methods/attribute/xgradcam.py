"""XGrad-CAM (Fu et al. 2020): channel weights that satisfy the sensitivity and conservation axioms.

w_k = sum_ij (A_k(i,j) / sum_mn A_k(m,n)) * dS/dA_k(i,j): the gradient averaged over space with the channel's
own activation as the weighting (Grad-CAM's plain mean is the uniform-weight special case). A channel whose
activations sum to zero has no such average and gets weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ...registry import LAYER, TARGET, Observer, param, register
from ...result import Result
from ._base import CAMBase, Score, run_cam

if TYPE_CHECKING:
    from ...zoo import Backbone


class XGradCAMWeights(CAMBase):
    """w_k = sum_ij A_k(i,j) dS/dA_k(i,j) / sum_ij A_k(i,j) (0 where the channel sums to 0)."""

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        assert grads is not None
        a, g = acts.double(), grads.double()
        num = (a * g).sum((2, 3))
        den = a.sum((2, 3))
        safe = torch.where(den != 0, den, torch.ones_like(den))
        return torch.where(den != 0, num / safe, torch.zeros_like(num)).float()


@dataclass
class XGradCAMParams:
    target: int | None = TARGET()
    layer: str | None = LAYER()
    relu: bool = param(True, "keep only positive evidence, as in the paper")


@register(
    "xgradcam",
    "attribute",
    XGradCAMParams,
    paper="Fu et al. 2020, Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: XGradCAMParams, obs: Observer) -> Result:
    """ReLU(sum_k w_k A_k) with activation-weighted gradient means w_k, upsampled to the input size."""
    return run_cam(XGradCAMWeights(net, p.layer, relu=p.relu), net, img, p.target, "xgradcam", obs=obs)
