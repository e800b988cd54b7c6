"""FashionCNN: the small VGG-style Fashion-MNIST classifier convlens trains itself (CAM-ready: GAP + linear head)."""

from __future__ import annotations

import torch
from torch import nn

from accel.fashion_mnist import FASHION_CLASSES

from . import Decomposition, sequential_chain


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """3x3 same-padding convolution (no bias: BN follows), batch norm, and its own non-inplace ReLU."""
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=False)]


class FashionCNN(nn.Module):
    """Three conv blocks of two conv3x3-BN-ReLU (widths 32/64/128, max-pool after the first two), GAP, Linear(128, 10).

    Layer names: ``features.0`` .. ``features.19`` (conv/bn/relu/pool in order; the last conv activation is
    ``features.19``, 128x7x7), ``pool`` (global average, 128x1x1) and ``fc`` (logits).
    """

    MEAN = 0.2860
    STD = 0.3530
    CLASSES: tuple[str, ...] = FASHION_CLASSES
    WIDTHS: tuple[int, int, int] = (32, 64, 128)
    CAM_LAYER = "features.19"
    EMBEDDING_LAYER = "pool"

    def __init__(self, num_classes: int = 10) -> None:
        """Build the network with freshly initialised weights."""
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for i, width in enumerate(self.WIDTHS):
            layers += _conv_bn_relu(cin, width) + _conv_bn_relu(width, width)
            if i < len(self.WIDTHS) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) for normalised input (N, 1, 28, 28): (x/255 - MEAN) / STD."""
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    def decomposition(self) -> Decomposition:
        """features (conv/BN/ReLU/pool chain) -> global average pool -> fc."""
        return Decomposition(sequential_chain("features", self.features), self.pool, fc=self.fc)

    @classmethod
    def normalize(cls, images: torch.Tensor) -> torch.Tensor:
        """uint8 or 0..255 float images (N, 28, 28) or (N, 1, 28, 28) -> normalised float32 (N, 1, 28, 28)."""
        x = images.to(torch.float32)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        return (x / 255.0 - cls.MEAN) / cls.STD
