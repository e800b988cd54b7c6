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
from accel.errors import BadInput, NotDifferentiable
from accel.methods.attribute._base.lrp_rules import Box, make_composite
from accel.methods.attribute.lrp import input_box, relevance
from accel.zoo import Backbone, Preproc
from tests.conftest import get_net

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

    class ExactMerge(SequentialMergeBatchNorm):
        @staticmethod
        def merge_batch_norm(modules: Any, batch_norm: Any) -> None:
            SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
            batch_norm.eps = 0.0  # the merged BatchNorm becomes an exact identity

    class MBConvCanonizer(AttributeCanonizer):
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
    low, high = input_box(resnet18).low, input_box(resnet18).high
    assert low is not None and high is not None
    box = Box(low.double(), high.double())
    ours = relevance(module, x, make_composite(composite, 1e-6, 0.25), box, lambda z: T_CAT)
    assert ours.rules["batch_norm:folded"] == 20 and ours.rules["sum"] == 8  # 8 in-place `out += identity`
    ref = zennit_lrp(module, x, T_CAT, composite, box)
    assert rel_err(ours.relevance, ref) <= 1e-10


# ---------------------------------------------------------------------------------------------------- by hand


class Tiny(nn.Module):
    """x (2 channels, 1x1) -> conv1x1 W=[[1, 1], [0, 0]], b=[0.5, 0] -> ReLU -> flatten -> linear [2, 1], no bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)
        self.fc = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(2, 2, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.5, 0.0]))
            self.fc.weight.copy_(torch.tensor([[2.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


# x = (2, -1). Forward: z = (2 - 1 + 0.5, 0) = (1.5, 0), ReLU -> (1.5, 0), f = 2 * 1.5 = 3 = R_out.
# Dense layer (epsilon -> 0): R(unit 0) = 1.5 * 2 * 3 / 3 = 3, R(unit 1) = 0; ReLU passes it; then the conv:
#   epsilon:       R_j = x_j w_j / z * 3            = (2/1.5, -1/1.5) * 3               = (4, -2)   (bias keeps 1)
#   z+:            x+w+ = (2, 0), b+ = 0.5 -> 2.5:  (2/2.5 * 3, 0)                       = (2.4, 0)
#   alpha2-beta1:  positive as z+; negative: x-w+ = (0, -1), b- = 0 -> -1:
#                  2 * (2.4, 0) - 1 * (0, -1/-1 * 3)                                     = (4.8, -3)
#   flat:          every input of unit 0 an equal share: (3/2, 3/2)                      = (1.5, 1.5)
#   z-box, l=-3, h=3: x w - l w+ - h w- = (2 + 3, -1 + 3) = (5, 2); the bias enters all three terms (b - b+ - b-
#                  = 0), so the total is 7:  (5/7, 2/7) * 3                              = (15/7, 6/7)
HAND = {
    "epsilon": (4.0, -2.0),
    "epsilon_plus": (2.4, 0.0),
    "epsilon_alpha2_beta1": (4.8, -3.0),
    "epsilon_plus_flat": (1.5, 1.5),
    "epsilon_gamma_box": (15 / 7, 6 / 7),
}


@pytest.mark.parametrize("composite", sorted(HAND))
def test_lrp_matches_a_hand_computed_network(composite: str) -> None:
    x = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    box = Box(torch.full((1, 2, 1, 1), -3.0), torch.full((1, 2, 1, 1), 3.0))
    out = relevance(Tiny().eval(), x, make_composite(composite, 1e-9, 0.25), box, lambda z: 0)
    assert out.logits[0, 0] == pytest.approx(3.0)
    assert out.relevance.reshape(-1) == pytest.approx(HAND[composite], rel=1e-6, abs=1e-6)


def test_gamma_rule_by_hand() -> None:
    """Gamma 0.25 on the conv above, R = (3, 0): w + g w+ = (1.25, 1.25), b + g b+ = 0.625, w + g w- = (1, 1);
    z = 1.5 > 0, so the positive side explains it: x+ (w+gw+) + b.. + x- (w+gw-) = 2.5 + 0.625 - 1 = 2.125, and
    R = (2 * 1.25, -1 * 1) / 2.125 * 3 = (3.5294, -1.4118)."""
    from accel.methods.attribute._base.lrp_rules import Gamma, LinearOp

    m = Tiny()
    x = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    w, b = m.conv.weight.detach(), m.conv.bias.detach()
    op = LinearOp("conv2d", (1, 0, 1, 1))
    r = torch.tensor([3.0, 0.0]).view(1, 2, 1, 1)
    got = Gamma("gamma", gamma=0.25).propagate(op, x, w, b, op(x, w, b), r, Box())
    assert got.reshape(-1).tolist() == pytest.approx([2 * 1.25 * 3 / 2.125, -3 / 2.125], rel=1e-6)


class BiasFree(nn.Module):
    """Conv, ReLU6, max pool, depthwise conv, ReLU, residual add, average pool, dense: no biases anywhere."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.fc = nn.Linear(8, 4, bias=False)
        self.sums: list[float] = []  # relevance reaching the block output and the pooled vector, per pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(nn.functional.relu6(self.c1(x)), 2)
        h = torch.relu(self.dw(h)) + h
        v = nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        for t in (h, v):
            t.register_hook(lambda g: self.sums.append(float(g.sum())))
        return self.fc(v)


def test_lrp_epsilon_conserves_relevance_layer_by_layer() -> None:
    """LRP-epsilon with epsilon 1e-9 on a bias-free network (float64): the relevance reaching every layer sums to
    the logit (the autograd signal is relevance, so a tensor hook reads it). Not to 1e-9: the residual sum and the
    average pool divide by z + 1e-6 sign(z) (zennit's fixed stabiliser), which keeps ~1e-6 of the relevance."""
    m = BiasFree().double().eval()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    out = relevance(m, x, make_composite("epsilon", 1e-9, 0.25), Box(), lambda z: int(np.argmax(z)))
    logit = float(out.logits.max())
    assert len(m.sums) == 2 and abs(logit) > 1e-3
    for s in [*m.sums, float(out.relevance.sum())]:
        assert s == pytest.approx(logit, rel=1e-4)


def test_batchnorm_is_folded_into_the_conv_before_it(chelsea) -> None:
    """conv + BatchNorm (random statistics) explains like the single conv with the folded weight and bias."""
    torch.manual_seed(5)
    conv, bn = nn.Conv2d(3, 6, 3, bias=False), nn.BatchNorm2d(6)
    bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.normal_()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2)
    fc = nn.Linear(6, 3)
    a = nn.Sequential(conv, bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).double().eval()
    folded = nn.Conv2d(3, 6, 3).double()
    s = bn.weight / (bn.running_var + bn.eps).sqrt()
    folded.weight.data = conv.weight.data * s.view(-1, 1, 1, 1)
    folded.bias.data = bn.bias.data - bn.running_mean * s
    b = nn.Sequential(folded, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).double().eval()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64)
    box = Box(torch.full((1, 3, 1, 1), -3.0), torch.full((1, 3, 1, 1), 3.0))
    for name in ("epsilon_gamma_box", "epsilon_alpha2_beta1"):
        comp = make_composite(name, 1e-6, 0.25)
        ra = relevance(a, x, comp, box, lambda z: 1)
        rb = relevance(b, x, comp, box, lambda z: 1)
        assert ra.rules["batch_norm:folded"] == 1
        assert np.allclose(ra.relevance, rb.relevance, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------------- the usual


@pytest.fixture(scope="module")
def fashion() -> Backbone:
    return get_net("fashion_cnn")


def test_lrp_map_shape_finite_deterministic_and_target_dependent(fashion: Backbone, chelsea) -> None:
    r = accel.run("lrp", fashion, chelsea, target=3)
    again = accel.run("lrp", fashion, chelsea, target=3)
    other = accel.run("lrp", fashion, chelsea, target=7)
    assert r.kind == "map" and r.data.shape == (28, 28) and r.data.dtype == np.float32
    assert np.isfinite(r.data).all() and np.abs(r.data).max() > 0
    assert np.array_equal(r.data, again.data)
    assert np.allclose(r.data, r.extras["relevance"].sum(0), atol=1e-6)
    assert r.meta["target"]["index"] == 3 and r.meta["relevance_out"] == pytest.approx(
        r.meta["target"]["logit"]
    )
    assert np.corrcoef(r.data.ravel(), other.data.ravel())[0, 1] < 0.99
    assert r.meta["rules"]["conv2d:z-box"] == 1 and r.meta["rules"]["conv2d:gamma"] == 5


def test_lrp_refuses_bad_parameters_and_backbones(fashion: Backbone, chelsea, tmp_path) -> None:
    with pytest.raises(BadInput, match="composite.*must be one of"):
        accel.run("lrp", fashion, chelsea, composite="epsilon_minus")
    with pytest.raises(BadInput, match="epsilon.*>="):
        accel.run("lrp", fashion, chelsea, epsilon=0.0)
    with pytest.raises(BadInput, match="gamma.*>="):
        accel.run("lrp", fashion, chelsea, gamma=-1.0)
    with pytest.raises(BadInput, match="target"):
        accel.run("lrp", fashion, chelsea, target=10)
    with pytest.raises(BadInput, match="unknown LRP composite 'nope'"):
        make_composite("nope", 1e-6, 0.25)
    headless = Backbone("fashion-features", fashion.module.features, fashion.pre, None, has_head=False)
    with pytest.raises(BadInput, match="lrp explains a class score.*no classifier head"):
        accel.run("lrp", headless, chelsea)
    from accel.runtime.export import export_backbone

    onnx = accel.load(str(export_backbone(fashion, ["logits"], out=tmp_path / "fashion.onnx")))
    with pytest.raises(NotDifferentiable, match="forward-only"):
        accel.run("lrp", onnx, chelsea)
