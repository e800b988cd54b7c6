"""Receptive fields from the graph (accel.receptive) must match the region an input gradient reaches.

The empirical field of a unit is measured on a linearised copy of the network: ReLU/BatchNorm become
Identity, MaxPool becomes AvgPool of the same geometry, conv weights become positive constants (biases
removed), so every input pixel inside the field has a strictly positive gradient and every pixel outside
has exactly zero. AlexNet and VGG16 copies are also thinned to one channel (the geometry does not depend
on channel counts), which keeps the whole file to a few seconds.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from accel.receptive import RF, ReceptiveFieldError, receptive_fields, rf_for

# ----------------------------------------------------------------------------------------------------
# networks under test


class SameConv2d(nn.Conv2d):
    """TF-style "SAME" conv: pads asymmetrically (extra on the right/bottom) in forward, from the input size."""

    same_padding = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for length, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(length / s) - 1) * s + (k - 1) * d + 1 - length, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class StaticSameConv2d(nn.Conv2d):
    """EfficientNet's other pattern: the SAME padding is a ZeroPad2d child fixed at construction."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, image_size: int) -> None:
        super().__init__(cin, cout, k, stride, padding=0)
        out = math.ceil(image_size / stride)
        total = max((out - 1) * stride + k - image_size, 0)
        self.static_padding = nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(
            self.static_padding(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups
        )


class InvertedResidual(nn.Module):
    """MobileNet/EfficientNet block: 1x1 expand, depthwise 3x3 SAME, 1x1 project, residual add."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = nn.Conv2d(c, 2 * c, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(2 * c)
        self.act0 = nn.ReLU6()
        self.dw = SameConv2d(2 * c, 2 * c, 3, 1, groups=2 * c, bias=False)
        self.bn1 = nn.BatchNorm2d(2 * c)
        self.act1 = nn.ReLU6()
        self.project = nn.Conv2d(2 * c, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act1(self.bn1(self.dw(self.act0(self.bn0(self.expand(x)))))))


class SameNet(nn.Module):
    """Stride-2 SAME convs (dynamic and static padding), a residual block, explicit pads, a channel cat."""

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.stem = SameConv2d(3, 8, 3, 2, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stem_act = nn.ReLU6()
        self.block = InvertedResidual(8)
        self.down = SameConv2d(8, 8, 5, 2)
        self.down_act = nn.ReLU()
        self.static = StaticSameConv2d(8, 8, 3, 2, image_size // 4)
        self.pad = nn.ZeroPad2d((1, 0, 1, 0))
        self.conv = nn.Conv2d(8, 8, 3, 2)
        self.branch_a = nn.Conv2d(8, 4, 3, padding=1)
        self.branch_b = nn.Conv2d(8, 4, 3, padding=2, dilation=2)
        self.post = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(self.stem_act(self.stem_bn(self.stem(x))))
        x = self.down_act(self.down(x))
        x = F.relu(self.static(x))
        x = self.conv(self.pad(x))
        x = self.post(torch.cat([self.branch_a(x), self.branch_b(x)], dim=1))
        return self.fc(torch.flatten(self.pool(x), 1))


def small_vgg() -> nn.Sequential:
    """VGG-style: conv-BN-ReLU blocks, a padded pool, a ceil-mode pool, then global pool and a classifier."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(3, 4),
        *block(4, 4),
        nn.MaxPool2d(2, 2),
        *block(4, 8),
        nn.MaxPool2d(3, 2, padding=1),
        *block(8, 8),
        nn.Conv2d(8, 8, 5, stride=2, padding=2, dilation=1),
        nn.ReLU(),
        nn.MaxPool2d(2, 2, ceil_mode=True),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


@functools.cache
def alexnet_features() -> nn.Module:
    return torchvision.models.alexnet().features.eval()


@functools.cache
def vgg16_features() -> nn.Module:
    return torchvision.models.vgg16().features.eval()


# ----------------------------------------------------------------------------------------------------
# empirical fields


def linearise(net: nn.Module, thin: bool) -> nn.Module:
    """Copy where every path is linear with positive weights; thin=True makes every conv 1 -> 1 channel."""
    net = copy.deepcopy(net)
    for name, m in list(net.named_modules()):
        if not name:
            continue
        parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
        attr = name.rpartition(".")[2]
        if isinstance(m, nn.MaxPool2d):
            assert m.dilation in (1, (1, 1))
            setattr(parent, attr, nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode))
        elif isinstance(m, (nn.ReLU, nn.ReLU6, nn.BatchNorm2d, nn.Dropout)):
            setattr(parent, attr, nn.Identity())
        elif isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            if thin:
                m.weight = nn.Parameter(torch.full((1, 1, kh, kw), 1.0 / (kh * kw)))
                m.in_channels = m.out_channels = m.groups = 1
            else:
                nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
            m.bias = None
    return net.eval()


class _Stop(Exception):
    pass


def layer_outputs(net: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules from one forward pass (which stops once all are captured)."""
    store: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_m, _inp, out):
            store[name] = out
            if len(store) == len(names):
                raise _Stop

        return fn

    handles = [net.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        net(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return store


def grad_boxes(x: torch.Tensor, units: list[torch.Tensor]) -> list[tuple[int, int, int, int]]:
    """Per unit, (top, left, bottom, right), exclusive, of the input pixels with a non-zero gradient.

    Unit k must be taken from batch element k: one backward pass then gives every unit's gradient.
    """
    (g,) = torch.autograd.grad(sum(units), x, retain_graph=True)
    boxes = []
    for k in range(len(units)):
        nz = g[k].abs().sum(0) > 0
        rows = nz.any(1).nonzero().flatten()
        cols = nz.any(0).nonzero().flatten()
        assert len(rows) and len(cols), "unit does not depend on the input at all"
        boxes.append((int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
    return boxes


def check_layers(net: nn.Module, size: int, layer_types: tuple[type, ...], thin: bool) -> dict[str, RF]:
    """Compare every layer of the given types with its empirical field; returns the fields checked."""
    fields = receptive_fields(net, (1, 3, size, size))
    lin = linearise(net, thin).requires_grad_(False)
    # positive input: with positive weights every activation is > 0, so a functional relu is the identity;
    # batch of 4: the centre unit, its right and lower neighbours, and the corner unit (0, 0)
    x = torch.ones(4, 1 if thin else 3, size, size, requires_grad=True)
    names = [n for n, m in net.named_modules() if n and isinstance(m, layer_types)]
    assert names
    outs = layer_outputs(lin, names, x)
    checked, cache = {}, {}
    for name in names:
        rf = fields[name]
        assert not rf.global_, name
        out = outs[name]
        ho, wo = out.shape[-2:]
        ci, cj = ho // 2, wo // 2
        assert ci + 1 < ho and cj + 1 < wo, f"{name}: output {ho}x{wo} too small for the test"
        if id(out) not in cache:  # an Identity (ex-ReLU) returns its input: same tensor, same gradients
            units = [out[0, :, ci, cj], out[1, :, ci, cj + 1], out[2, :, ci + 1, cj], out[3, :, 0, 0]]
            mkldnn = torch.backends.mkldnn.enabled
            torch.backends.mkldnn.enabled = False  # the plain kernels are faster for 1-channel convs
            try:
                cache[id(out)] = grad_boxes(x, [u.sum() for u in units])  # channels summed: the layer's field
            finally:
                torch.backends.mkldnn.enabled = mkldnn
        centre, right, below, corner = cache[id(out)]
        # the set-up must keep the centre field (and its neighbours) away from the border
        for box in (centre, right, below):
            assert box[0] > 0 and box[1] > 0 and box[2] < size and box[3] < size, (name, box)
        assert (centre[2] - centre[0], centre[3] - centre[1]) == rf.size, (name, centre, rf)
        assert (below[0] - centre[0], right[1] - centre[1]) == rf.stride, (name, rf)
        assert rf.box(ci, cj, size, size) == centre, (name, rf)
        assert rf.box(ci, cj + 1, size, size) == right, (name, rf)
        assert rf.box(0, 0, size, size) == corner, (name, rf)  # clipped by the image border
        checked[name] = rf
    return checked


LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.ReLU6)

# ----------------------------------------------------------------------------------------------------
# tests


def test_alexnet_features_match_gradients() -> None:
    fields = check_layers(alexnet_features(), 320, LAYERS, thin=True)
    assert len(fields) == 13
    assert (fields["10"].size, fields["10"].stride) == ((163, 163), (16, 16))
    assert (fields["12"].size, fields["12"].stride) == ((195, 195), (32, 32))


def test_vgg16_features_match_gradients() -> None:
    fields = check_layers(vgg16_features(), 288, LAYERS, thin=True)
    assert len(fields) == 31
    assert (fields["30"].size, fields["30"].stride) == ((212, 212), (32, 32))
    assert (fields["4"].size, fields["4"].stride) == ((6, 6), (2, 2))


def test_known_values_on_full_models() -> None:
    rfs = receptive_fields(torchvision.models.alexnet())
    assert (rfs["features.10"].size, rfs["features.10"].stride) == ((163, 163), (16, 16))
    assert (rfs["features.12"].size, rfs["features.12"].stride) == ((195, 195), (32, 32))
    assert rfs["features.10"].start == (-66.0, -66.0)
    assert rfs["classifier.6"].global_ and rfs[""].global_
    assert rf_for(vgg16_features(), "30") == RF((212, 212), (32, 32), (-90.0, -90.0))


def test_small_vgg_matches_gradients() -> None:
    torch.manual_seed(0)
    check_layers(small_vgg().eval(), 192, LAYERS, thin=True)


def test_same_padding_and_residual_match_gradients() -> None:
    torch.manual_seed(0)
    size = 192
    net = SameNet(size).eval()
    fields = check_layers(net, size, (*LAYERS, InvertedResidual), thin=True)
    # SAME, k=3, s=2 on an even input pads 0 before and 1 after: unit 0 starts at pixel 0
    assert fields["stem"] == RF((3, 3), (2, 2), (0.0, 0.0))
    assert fields["block"].size == fields["block.dw"].size  # the add takes the larger field
    assert fields["post"].size == receptive_fields(net, (1, 3, size, size))["branch_b"].size


def test_global_layers() -> None:
    torch.manual_seed(0)
    size = 96
    net = small_vgg().eval()
    fields = receptive_fields(net, (1, 3, size, size))
    pool, flat, fc = (fields[str(i)] for i in (len(net) - 3, len(net) - 2, len(net) - 1))
    assert pool.global_ and flat.global_ and fc.global_ and fields[""].global_
    assert pool.box(0, 0, size, size) == (0, 0, size, size)
    assert pool.size == (size, size)
    lin = linearise(net, thin=False)
    x = torch.ones(1, 3, size, size, requires_grad=True)
    out = layer_outputs(lin, [str(len(net) - 3)], x)[str(len(net) - 3)]
    assert grad_boxes(x, [out[0, 0, 0, 0]]) == [(0, 0, size, size)]


def test_adaptive_pool_even_and_uneven() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(4), nn.ReLU())
    even = receptive_fields(net, (1, 3, 32, 32))
    assert even["1"] == RF((10, 10), (8, 8), (-1.0, -1.0)) and even["2"] == even["1"]
    assert receptive_fields(net, (1, 3, 30, 30))["1"].global_


class _Upsampler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0)


class _Branchy(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class _HiddenPad(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, [1, 1, 1, 1]))


def test_unknown_and_untraceable_ops_raise() -> None:
    with pytest.raises(ValueError, match="interpolate"):
        receptive_fields(nn.Sequential(nn.Conv2d(3, 3, 3), _Upsampler()), (1, 3, 16, 16))
    with pytest.raises(ReceptiveFieldError, match="trace"):
        receptive_fields(_Branchy(), (1, 3, 16, 16))
    with pytest.raises(ReceptiveFieldError, match="same_padding"):
        receptive_fields(nn.Sequential(_HiddenPad(3, 3, 3)), (1, 3, 16, 16))
    with pytest.raises(ValueError, match="no spatial layer"):
        rf_for(nn.Sequential(nn.Conv2d(3, 3, 3)), "nope", (1, 3, 16, 16))


class _Functional(nn.Module):
    """Functional ops and tensor methods instead of modules: conv, pools, pad, slicing, permutes, means."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4, 3, 3, 3))
        self.conv = nn.Conv2d(4, 4, 3, padding="same")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.w, stride=2, padding=1)  # 3 / 2 / -1
        x = F.max_pool2d(x, 3, 2, 1)  # 7 / 4 / -3
        x = F.pad(x, [2, 0, 1, 0])[:, :, 1:, 2:]  # pad then crop back: unchanged
        x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        x = self.conv(x * x.mean(1, keepdim=True))  # 15 / 4 / -7
        x = F.avg_pool2d(x, 2)  # 19 / 8 / -7
        return x.mean((2, 3))


def test_functional_ops() -> None:
    net = _Functional()
    fields = receptive_fields(net, (1, 3, 64, 64))
    assert fields["conv"] == RF((15, 15), (4, 4), (-7.0, -7.0))
    assert fields[""].global_
    conv1d = nn.Sequential(nn.Conv1d(2, 2, 5, stride=2, padding=2), nn.MaxPool1d(2))
    assert receptive_fields(conv1d, (1, 2, 50))["1"] == RF((1, 7), (1, 4), (0.0, -2.0))


def test_fashion_cnn_features_match_gradients() -> None:
    from accel.archs.fashion_cnn import FashionCNN

    torch.manual_seed(0)
    feats = FashionCNN().features.eval()
    first = feats[0]
    # the test harness feeds 3 channels; the field does not depend on the channel count
    feats[0] = nn.Conv2d(3, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
    fields = check_layers(feats, 96, (*LAYERS, nn.BatchNorm2d), thin=True)
    last = fields[str(len(feats) - 1)]
    assert last.size == (32, 32) and last.stride == (4, 4)  # 6 convs 3x3, 2 pools: the 28 px input fits
