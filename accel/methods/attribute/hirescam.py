"""HiResCAM (Draelos & Carin 2020): the gradient times the activation at every position, summed over channels.

Grad-CAM averages each channel's gradient over space before weighting; HiResCAM keeps the gradient where it is,
so for a network whose head is global average pooling + a linear layer the map's sum is exactly the score's
part that flows through the layer (the map is faithful to the model's computation, not smoothed).
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


class HiResCAMMap(CAMBase):
    """M(i,j) = sum_k dS/dA_k(i,j) * A_k(i,j): elementwise, no spatial averaging of the gradient."""

    def low_map(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        assert grads is not None
        return (grads * acts).sum(1)


@dataclass
class HiResCAMParams:
    target: int | None = TARGET()
    layer: str | None = LAYER()
    relu: bool = param(True, "keep only positive evidence (the paper shows the signed map too)")


@register(
    "hirescam",
    "attribute",
    HiResCAMParams,
    paper="Draelos & Carin 2020, Use HiResCAM instead of Grad-CAM for faithful explanations of convolutional "
    "neural networks",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: HiResCAMParams, obs: Observer) -> Result:
    """ReLU(sum_k dS/dA_k * A_k) elementwise at the layer, bilinearly upsampled to the input size."""
    return run_cam(HiResCAMMap(net, p.layer, relu=p.relu), net, img, p.target, "hirescam", obs=obs)
