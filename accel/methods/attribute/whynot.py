"""Why-not maps: counterfactual Grad-CAM (evidence against a class) and contrastive Grad-CAM (why A rather than B)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ...registry import LAYER, TARGET, Observer, register
from ...result import Result
from ._base import CAMBase, Score, run_cam

if TYPE_CHECKING:
    from ...zoo import Backbone


class CounterfactualWeights(CAMBase):
    """Counterfactual Grad-CAM (Selvaraju et al. 2017, sec. 5): weights from the negated gradients, so the map
    shows regions whose removal would raise the class score."""

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        assert grads is not None
        return -grads.mean((2, 3))


class ContrastiveWeights(CAMBase):
    """Grad-CAM of the logit difference score(A) - score(B): evidence for A that is not also evidence for B."""

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        assert grads is not None
        return grads.mean((2, 3))


@dataclass
class CounterfactualParams:
    target: int | None = TARGET(help="class whose counter-evidence is shown (default: the predicted class)")
    layer: str | None = LAYER()


@register(
    "gradcam_counterfactual",
    "attribute",
    CounterfactualParams,
    paper="Selvaraju et al. 2017, Grad-CAM, sec. 5 (counterfactual explanations)",
    needs_grad=True,
)
def run_counterfactual(net: Backbone, img: Image.Image, p: CounterfactualParams, obs: Observer) -> Result:
    """ReLU(sum_k -mean(d score/d A_k) A_k): where the image argues against the class."""
    return run_cam(CounterfactualWeights(net, p.layer), net, img, p.target, "gradcam_counterfactual", obs=obs)


@dataclass
class ContrastiveParams:
    target: int | None = TARGET(help="class A, the one to justify (default: the predicted class)")
    foil: int | None = TARGET(help="class B, the alternative (default: the runner-up class)")
    layer: str | None = LAYER()


@register(
    "contrastive_gradcam",
    "attribute",
    ContrastiveParams,
    paper="Prabhushankar et al. 2020, Contrastive Explanations in Neural Networks (logit-difference form)",
    needs_grad=True,
)
def run_contrastive(net: Backbone, img: Image.Image, p: ContrastiveParams, obs: Observer) -> Result:
    """Grad-CAM of logit[A] - logit[B]: why A rather than B."""
    return run_cam(
        ContrastiveWeights(net, p.layer),
        net,
        img,
        p.target,
        "contrastive_gradcam",
        foil=p.foil,
        contrast=True,
        obs=obs,
    )
