"""Johnson et al. (2016) feed-forward style transformation network, sized for CPU training and inference.

Reflection-padded convolutions with instance normalisation, two stride-2 downsampling convolutions, residual blocks,
and nearest-neighbour upsampling followed by a convolution (instead of transposed convolutions, which leave
checkerboard artefacts). Input and output are RGB images in 0..1 (a sigmoid bounds the output).

One deviation from the paper, for training on a CPU budget: the network predicts a change to the input's logits
(`sigmoid(logit(x) + f(x))`) and its last convolution starts at zero, so it starts as the identity and only has to
learn the style, not to reproduce the content through its bottleneck.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvIN(nn.Module):
    """Reflection pad + convolution (+ instance norm + ReLU), optionally after a nearest-neighbour 2x upsample."""

    def __init__(
        self, cin: int, cout: int, k: int, stride: int = 1, upsample: bool = False, act: bool = True
    ) -> None:
        super().__init__()
        self.upsample = upsample
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride)
        self.norm = nn.InstanceNorm2d(cout, affine=True) if act else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = self.conv(self.pad(x))
        if self.norm is not None:
            x = F.relu(self.norm(x))
        return x


class ResidualBlock(nn.Module):
    """Two 3x3 conv + instance-norm layers with an identity shortcut (no ReLU after the sum, as in Johnson et al.)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1 = ConvIN(c, c, 3)
        self.pad = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(c, c, 3)
        self.norm2 = nn.InstanceNorm2d(c, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm2(self.conv2(self.pad(self.c1(x))))


class TransformerNet(nn.Module):
    """Image -> stylised image (N,3,H,W in 0..1); `width` channels at full resolution, `blocks` residual blocks.

    Height and width must be multiples of 4 (`pad_to4` / `crop_to` handle other sizes outside the graph).
    """

    def __init__(self, width: int = 24, blocks: int = 5) -> None:
        super().__init__()
        self.width, self.blocks = int(width), int(blocks)
        c = self.width
        self.down = nn.Sequential(ConvIN(3, c, 9), ConvIN(c, 2 * c, 3, 2), ConvIN(2 * c, 4 * c, 3, 2))
        self.res = nn.Sequential(*[ResidualBlock(4 * c) for _ in range(self.blocks)])
        self.up = nn.Sequential(
            ConvIN(4 * c, 2 * c, 3, upsample=True),
            ConvIN(2 * c, c, 3, upsample=True),
            ConvIN(c, 3, 9, act=False),
        )
        last = self.up[-1]
        assert isinstance(last, ConvIN) and last.conv.bias is not None
        nn.init.zeros_(last.conv.weight)
        nn.init.zeros_(last.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.clamp(0.01, 0.99)
        return torch.sigmoid(torch.log(p / (1.0 - p)) + self.up(self.res(self.down(x * 2.0 - 1.0))))


def pad_to4(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflection-pad an (N,3,H,W) batch on the bottom/right to multiples of 4; returns it and the original size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 4, (-w) % 4
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > 4 else "replicate")
    return x, (h, w)


def build_from_state(state: dict[str, torch.Tensor]) -> TransformerNet:
    """A TransformerNet with width and block count read off a state dict's shapes, with the weights loaded."""
    width = int(state["down.0.conv.weight"].shape[0])
    blocks = len({k.split(".")[1] for k in state if k.startswith("res.")})
    net = TransformerNet(width, blocks)
    net.load_state_dict(state)
    return net.eval()
