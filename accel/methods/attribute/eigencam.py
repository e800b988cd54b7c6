"""Eigen-CAM (Muhammad & Yeasin 2020): the layer's activations projected on their first principal component.

With the activations as a matrix A (h*w positions x K channels), centred per channel (as pytorch-grad-cam does:
without centring the first component mostly restates the mean activation), A = U S V^T and the map is A v_1 at
every position, ReLU'd and upsampled. No gradient and no class: the map is the same for every target (the method
is class-insensitive by construction), and the forward pass may run on ONNX Runtime through the runner's taps,
also on a forward-only ONNX file whose output is a feature map, and on headless backbones (no class reported).
The sign of a principal component is arbitrary; it is fixed so that the map correlates positively with the
layer's summed activation (where the layer fires, the map is positive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ...errors import BadInput
from ...registry import BACKEND, LAYER, TARGET, Observer, param, register
from ...result import Result
from ._base import CAMBase, MapRun, Score, run_cam

if TYPE_CHECKING:
    from ...zoo import Backbone


def principal_projection(acts: torch.Tensor, center: bool = True) -> torch.Tensor:
    """(1,K,h,w) activations -> (1,h,w): the positions' projection on the first right singular vector of the
    (h*w, K) activation matrix (centred per channel when `center`), signed to correlate with the channel sum."""
    k, h, w = acts.shape[1:]
    a = acts[0].double().reshape(k, h * w).T
    if center:
        a = a - a.mean(0, keepdim=True)
    if not torch.isfinite(a).all() or float(a.abs().max()) == 0.0:
        return torch.zeros(1, h, w, dtype=acts.dtype)
    _, _, vh = torch.linalg.svd(a, full_matrices=False)
    proj = a @ vh[0]
    total = acts[0].double().sum(0).reshape(-1)
    if float(((proj - proj.mean()) * (total - total.mean())).sum()) < 0:
        proj = -proj
    return proj.reshape(1, h, w).to(acts.dtype)


class EigenCAMMap(CAMBase):
    """The first principal component's projection of the activations; gradient-free and class-free."""

    uses_gradients = False

    def __init__(
        self,
        net: Backbone,
        layer: str | None = None,
        backend: str = "auto",
        center: bool = True,
    ) -> None:
        layer = layer or net.default_spatial_layer()
        if layer is None:
            raise BadInput(
                f"eigencam reads a (C,H,W) feature map, but {net.name!r} exposes none"
                + (
                    " (a forward-only ONNX file exposes only its output: export the feature map as the output)"
                    if net.module is None
                    else ""
                )
            )
        super().__init__(net, layer, relu=True, backend=backend)
        self.center = center

    def low_map(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        return principal_projection(acts, self.center)


@dataclass
class EigenCAMParams:
    target: int | None = TARGET(
        help="class reported beside the map (the map itself is the same for every class)"
    )
    layer: str | None = LAYER()
    center: bool = param(True, "centre each channel before the SVD (pytorch-grad-cam); off: plain SVD")
    backend: str = BACKEND(help="forward-pass engine for the one pass that reads the layer")


@register(
    "eigencam",
    "attribute",
    EigenCAMParams,
    paper="Muhammad & Yeasin 2020, Eigen-CAM: Class Activation Map using Principal Components",
    needs_grad=False,
)
def run(net: Backbone, img: Image.Image, p: EigenCAMParams, obs: Observer) -> Result:
    """ReLU(A v_1): the activations' first principal component at every position, upsampled (class-free)."""
    cam = EigenCAMMap(net, p.layer, p.backend, p.center)
    if net.has_head:
        res = run_cam(cam, net, img, p.target, "eigencam", obs=obs)
        res.meta["class_sensitive"] = False
        return res
    # a headless backbone (conv features only, or a forward-only ONNX file whose output is a feature map): no
    # class to report, and none needed
    net.check_target(p.target)  # BadInput: a headless backbone has no classes
    run = MapRun(net, img)
    cam.record(run.x)
    obs.progress(0.5, f"eigencam: layer {cam.layer}")
    big, low = cam.compute(Score({0: 1.0}))  # the score is never read
    obs.progress(1.0, "done")
    return run.result(
        big,
        None,
        None,
        passes=cam.passes,
        backend=cam.backend,
        extras={"lowres": low},
        layer=cam.layer,
        class_sensitive=False,
    )
