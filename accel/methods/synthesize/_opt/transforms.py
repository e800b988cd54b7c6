"""Random transforms applied to what the network sees at each step (Lucent's `transform`): robustness priors.

A transform is `f(x, generator) -> x`; every draw comes from the run's seeded generator, so runs are reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """A uniform integer in lo..hi (inclusive) from the generator."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def jitter(d: int) -> Transform:
    """Shift the image by up to `d` pixels in x and y (reflection padding), a fresh shift each step."""

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if d <= 0:
            return x
        h, w = x.shape[-2:]
        p = min(d, h - 1, w - 1)
        xp = F.pad(x, (p, p, p, p), mode="reflect")
        dy, dx = _randint(g, 0, 2 * p), _randint(g, 0, 2 * p)
        return xp[..., dy : dy + h, dx : dx + w]

    return t


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by a factor drawn from `scales` each step (scale robustness)."""
    scales = list(scales)

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = scales[_randint(g, 0, len(scales) - 1)]
        if s == 1.0:
            return x
        h, w = x.shape[-2:]
        return F.interpolate(
            x, size=(max(8, round(h * s)), max(8, round(w * s))), mode="bilinear", align_corners=False
        )

    return t


def random_rotate(degrees: Sequence[float]) -> Transform:
    """Rotate by an angle (degrees) drawn from `degrees` each step, reflecting at the borders."""
    angles = list(degrees)

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        a = math.radians(angles[_randint(g, 0, len(angles) - 1)])
        if a == 0.0:
            return x
        c, s = math.cos(a), math.sin(a)
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype)[None].expand(len(x), -1, -1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    return t


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (N,C,H,W) batch with reflection padding (deterministic)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    if r < 1:
        return x
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def blur(sigma: float) -> Transform:
    """Gaussian blur as a transform (applied to what the network sees)."""
    return lambda x, g: gaussian_blur(x, sigma)


def compose(*transforms: Transform | None) -> Transform:
    """Apply transforms left to right."""
    ts = [t for t in transforms if t is not None]

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for f in ts:
            x = f(x, g)
        return x

    return t
