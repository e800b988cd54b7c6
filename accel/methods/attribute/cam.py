"""Class Activation Mapping (Zhou et al. 2016) for heads that are global average pooling + one linear layer."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import nn

from ...errors import BadInput
from ...registry import LAYER, TARGET, Observer, param, register
from ...result import Result
from ._base import CAMBase, Score, check_layer, run_cam

if TYPE_CHECKING:
    from ...zoo import Backbone


_HEADS: weakref.WeakKeyDictionary[Any, dict[str | None, tuple[str, str]]] = weakref.WeakKeyDictionary()


def find_cam_head(net: Backbone, layer: str | None = None) -> tuple[str, str]:
    """(pooled conv layer, final Linear) such that the Linear's input is the spatial mean of the layer's output.

    Checked numerically on a random input, so a flatten+MLP head (AlexNet, VGG) or max pooling is refused.
    The answer is structural, so it is remembered per backbone.
    """
    known = _HEADS.setdefault(net, {})
    if layer not in known:
        known[layer] = _find_cam_head(net, layer)
    return known[layer]


def _find_cam_head(net: Backbone, layer: str | None) -> tuple[str, str]:
    from ...taps import capture

    mod = net.require_module("cam")
    if not net.has_head:
        raise BadInput(f"cam needs a classifier head; {net.name!r} has none (try gradcam on a layer)")
    linears = [n for n, m in mod.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise BadInput(f"cam needs a final nn.Linear layer; {net.name!r} has none (use gradcam instead)")
    fc = linears[-1]
    lin = dict(mod.named_modules())[fc]
    cands = [layer] if layer else []
    if not layer:
        conv = [li.name for li in net.conv_layers() if li.out_shape[0] == lin.in_features]
        if net.cam_layer in conv:
            conv.remove(net.cam_layer)
            conv.append(net.cam_layer)  # the declared CAM layer is tried first
        cands = conv[::-1][:8]
    for name in cands:
        check_layer(net, name, spatial=True)
    g = torch.Generator().manual_seed(0)
    x = net.normalize(torch.rand(2, 3, net.pre.size, net.pre.size, generator=g))
    with torch.no_grad(), capture(mod, [f"{fc}:in", *cands]) as st:
        logits = mod(x)
    feat = st[f"{fc}:in"].flatten(1)
    if logits.shape[-1] != lin.out_features or feat.shape[-1] != lin.in_features:
        raise BadInput(f"cam: {fc!r} is not the classifier producing the logits of {net.name!r}")
    for name in cands:
        pooled = st[name].float().mean((2, 3))
        if pooled.shape == feat.shape and torch.allclose(pooled, feat.float(), rtol=1e-4, atol=1e-5):
            return name, fc
    what = f"layer {layer!r}" if layer else "no conv layer"
    raise BadInput(
        f"cam needs a head that is global average pooling + linear, but in {net.name!r} {what} is average-"
        f"pooled into {fc!r}'s input; use gradcam (any network, any conv layer) instead"
    )


class ZhouCAM(CAMBase):
    """CAM: w_k = the final linear layer's weights for the scored class(es); no gradients needed."""

    uses_gradients = False

    def __init__(self, net: Backbone, layer: str | None = None, relu: bool = False) -> None:
        layer, self.fc = find_cam_head(net, layer)
        super().__init__(net, layer, relu=relu)
        lin = dict(net.require_module("cam").named_modules())[self.fc]
        assert isinstance(lin, nn.Linear)  # find_cam_head only answers with an nn.Linear
        self.fc_weight = lin.weight.detach().float()

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        w = torch.zeros(self.fc_weight.shape[1])
        for k, v in score.coefs.items():
            w = w + v * self.fc_weight[k]
        return w[None]


@dataclass
class CAMParams:
    target: int | None = TARGET()
    layer: str | None = LAYER(help="the globally pooled conv layer (default: found automatically)")
    relu: bool = param(False, "clip negative evidence to 0 (Zhou et al. show the raw weighted sum)")


@register(
    "cam",
    "attribute",
    CAMParams,
    paper="Zhou et al. 2016, Learning Deep Features for Discriminative Localization",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: CAMParams, obs: Observer) -> Result:
    """sum_k w_k^c A_k over the pooled layer, upsampled; its spatial mean (low-res) plus the bias is the logit."""
    cam = ZhouCAM(net, p.layer, relu=p.relu)
    return run_cam(cam, net, img, p.target, "cam", obs=obs, fc=cam.fc)
