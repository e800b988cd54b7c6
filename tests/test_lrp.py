"""LRP (issue 19): our rules against zennit 0.5 (the oracle), a hand-computed network, conservation, and the usual
checks (shape, finiteness, determinism, target dependence, BadInput).

zennit needs the model itself rewritten for what its hooks cannot see: BatchNorm merged into the convolution
before it (`SequentialMergeBatchNorm`; after the merge we set the BatchNorm's eps to 0, since zennit leaves an
"identity" BatchNorm that still divides by sqrt(1 + eps) = 1.0005 for eps=1e-3) and each residual add written as
a `Sum` module (zennit's ResNet canonizers; for EfficientNet-Lite's MBConv, `MBConvCanonizer` below). Ours needs
neither: it sees the calls themselves.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import accel
from accel.archs.efficientnet_lite import MBConv
from accel.methods.attribute._base.lrp_rules import Box, make_composite
from accel.methods.attribute.lrp import input_box, relevance
from accel.zoo import Backbone, Preproc

T_CAT = 281  # tiger cat


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------------------------------- the oracle


def _mbconv_forward(self: MBConv, x: torch.Tensor) -> torch.Tensor:
    """MBConv.forward with the skip as zennit's Sum over a stacked last axis (so its Norm rule applies)."""
    h = x
    if self.expand:
        h = self._act0(self._bn0(self._expand_conv(h)))
    h = self._act1(self._bn1(self._depthwise_conv(h)))
    h = self._bn2(self._project_conv(h))
    return self.canonizer_sum(torch.stack([h, x], -1)) if self.skip else h


def _zennit_composite(name: str, box: Box, epsilon: float, gamma: float) -> Any:
    from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
    from zennit.composites import (
        EpsilonAlpha2Beta1,
        EpsilonAlpha2Beta1Flat,
        EpsilonGammaBox,
        EpsilonPlus,
        EpsilonPlusFlat,
        LayerMapComposite,
        layer_map_base,
    )
    from zennit.layer import Sum
    from zennit.rules import Epsilon
    from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer
    from zennit.types import Convolution

    class ExactMerge(SequentialMergeBatchNorm):  # type: ignore[misc]
        @staticmethod
        def merge_batch_norm(modules: Any, batch_norm: Any) -> None:
            SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
            batch_norm.eps = 0.0  # the merged BatchNorm becomes an exact identity

    class MBConvCanonizer(AttributeCanonizer):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(
                lambda name, m: (
                    {"forward": _mbconv_forward.__get__(m), "canonizer_sum": Sum()}
                    if isinstance(m, MBConv)
                    else None
                )
            )

    can = [
        CompositeCanonizer(
            (ExactMerge(), MBConvCanonizer(), ResNetBasicBlockCanonizer(), ResNetBottleneckCanonizer())
        )
    ]
    if name == "epsilon":
        rules = [(Convolution, Epsilon(epsilon)), (nn.Linear, Epsilon(epsilon))]
        return LayerMapComposite(layer_map_base() + rules, canonizers=can)
    if name == "epsilon_gamma_box":
        return EpsilonGammaBox(low=box.low, high=box.high, epsilon=epsilon, gamma=gamma, canonizers=can)
    classes = {
        "epsilon_plus": EpsilonPlus,
        "epsilon_plus_flat": EpsilonPlusFlat,
        "epsilon_alpha2_beta1": EpsilonAlpha2Beta1,
        "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
    }
    return classes[name](epsilon=epsilon, canonizers=can)


def zennit_lrp(
    module: nn.Module,
    x: torch.Tensor,
    t: int,
    name: str,
    box: Box,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
) -> np.ndarray:
    """zennit's input relevance (C,H,W) for class t, seeded like ours with the class logit."""
    from zennit.attribution import Gradient

    comp = _zennit_composite(name, box, epsilon, gamma)
    with Gradient(copy.deepcopy(module), comp) as attributor:
        _, rel = attributor(x.clone(), lambda o: torch.eye(o.shape[1], dtype=o.dtype)[[t]] * o.detach())
    return rel[0].detach().numpy()


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_plus_flat"])
def test_lrp_matches_zennit_on_efficientnet_lite0(lite0, chelsea, composite: str) -> None:
    """Real photo, real weights, float32: ReLU6, depthwise convs, 49 folded BatchNorms, 9 residual adds, SAME
    padding (z-box bounds and the flat rule's real-pixel mask carried through F.pad). Measured: 3.5e-6 (gamma-box),
    1.3e-6 (plus-flat); alpha2-beta1 1.4e-5. LRP-epsilon (every layer) is ill-conditioned in float32 (1.9e-4 at
    epsilon=0.01, 7.9e-4 at 1e-6): it is compared in float64 on resnet18 below."""
    r = accel.run("lrp", lite0, chelsea, target=T_CAT, composite=composite)
    assert r.meta["rules"]["batch_norm:folded"] == 49 and r.meta["rules"]["sum"] == 9
    ref = zennit_lrp(lite0.module, lite0.preprocess(chelsea), T_CAT, composite, input_box(lite0))
    assert rel_err(r.extras["relevance"], ref) <= 1e-4
    assert np.allclose(r.data, ref.sum(0), rtol=0, atol=1e-4 * np.abs(ref.sum(0)).max())


@pytest.fixture(scope="module")
def resnet18() -> Backbone:
    """torchvision resnet18 with seeded random weights and random BatchNorm statistics (so folding matters)."""
    import torchvision

    torch.manual_seed(0)
    module = torchvision.models.resnet18(weights=None)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return Backbone("resnet18-random", module, Preproc(64, 72), None, pretrained=False)


@pytest.mark.parametrize("composite", ["epsilon_gamma_box", "epsilon_alpha2_beta1", "epsilon"])
def test_lrp_matches_zennit_on_a_random_resnet18(resnet18: Backbone, chelsea, composite: str) -> None:
    """In float64 the two agree to ~1e-13 (same arithmetic). In float32, random weights make the rules
    ill-conditioned (sums of near-cancelling terms) and both drift from the exact value by up to ~1e-2 of the
    map's peak, differently: that says nothing about which is right, so the comparison is made in float64."""
    x = resnet18.preprocess(chelsea).double()
    module = copy.deepcopy(resnet18.module).double()
    box = Box(*(b.double() for b in (input_box(resnet18).low, input_box(resnet18).high)))  # type: ignore[union-attr]
    ours = relevance(module, x, make_composite(composite, 1e-6, 0.25), box, lambda z: T_CAT)
    assert ours.rules["batch_norm:folded"] == 20 and ours.rules["sum"] == 8  # 8 in-place `out += identity`
    ref = zennit_lrp(module, x, T_CAT, composite, box)
    assert rel_err(ours.relevance, ref) <= 1e-10
