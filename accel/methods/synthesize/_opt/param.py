"""Image parameterisations: an image as a function of free parameters (Lucent's `param`).

Pixels directly (projected to 0..1 or through a sigmoid) or a decorrelated Fourier spectrum, whose whitened
gradient gives feature visualisations fewer high-frequency artefacts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ....errors import BadInput


class ImageParam(nn.Module):
    """An image as a function of free parameters; `forward()` gives (1,3,H,W) in 0..1."""

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def post_step(self) -> None:
        """Called after every optimiser step (e.g. to project onto the valid range)."""


class PixelImage(ImageParam):
    """One free value per pixel: "clamp" keeps pixels themselves (projected to 0..1), "sigmoid" their logits."""

    def __init__(self, init01: torch.Tensor, mode: str = "clamp") -> None:
        super().__init__()
        if mode not in ("clamp", "sigmoid"):
            raise BadInput(f"pixel mode must be 'clamp' or 'sigmoid', got {mode!r}")
        self.mode = mode
        x = init01.detach().float().clone()
        if mode == "sigmoid":
            x = torch.logit(x.clamp(1e-3, 1 - 1e-3))
        self.raw = nn.Parameter(x)

    def forward(self) -> torch.Tensor:
        """The image (1,3,H,W) in 0..1."""
        return torch.sigmoid(self.raw) if self.mode == "sigmoid" else self.raw

    def post_step(self) -> None:
        """Project clamped pixels back onto 0..1 (sigmoid pixels are always in range)."""
        if self.mode == "clamp":
            with torch.no_grad():
                self.raw.clamp_(0.0, 1.0)

    def set01(self, x01: torch.Tensor) -> None:
        """Overwrite the image (e.g. after an in-place blur), in 0..1."""
        with torch.no_grad():
            x = x01.clamp(0, 1) if self.mode == "clamp" else torch.logit(x01.clamp(1e-3, 1 - 1e-3))
            self.raw.copy_(x)


# ImageNet colour correlation (square root of the RGB covariance, from Lucid's published constants).
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


class FourierImage(ImageParam):
    """Lucid-style image: a scaled 2-D Fourier spectrum (1/f^decay), optionally colour-decorrelated, then sigmoid.

    Optimising the spectrum whitens the gradient, so feature visualisations have fewer high-frequency artefacts."""

    scale: torch.Tensor  # a buffer: 1/f^decay per frequency, normalised

    def __init__(
        self,
        h: int,
        w: int,
        generator: torch.Generator | None = None,
        sd: float = 0.01,
        decay: float = 1.0,
        decorrelate: bool = True,
        init01: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.h, self.w, self.decorrelate = int(h), int(w), bool(decorrelate)
        fy = torch.fft.fftfreq(self.h)[:, None]
        fx = torch.fft.rfftfreq(self.w)[None, :]
        freq = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freq, min=1.0 / max(self.h, self.w)) ** decay
        self.register_buffer("scale", (scale * math.sqrt(self.h * self.w) / scale.max())[None, None])
        if init01 is not None:
            t = torch.logit(init01.detach().float().clamp(1e-3, 1 - 1e-3))
            if self.decorrelate:
                t = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_COLOR), t)
            spec = torch.fft.rfft2(t, norm="ortho") / self.scale
        else:
            shape = (1, 3, self.h, self.w // 2 + 1)
            re = torch.randn(shape, generator=generator) * sd
            im = torch.randn(shape, generator=generator) * sd
            spec = torch.complex(re, im)
        self.spec = nn.Parameter(torch.view_as_real(spec).contiguous())

    def forward(self) -> torch.Tensor:
        """The image (1,3,H,W) in 0..1: inverse FFT of the scaled spectrum, colours recorrelated, sigmoid."""
        spec = torch.view_as_complex(self.spec) * self.scale
        t = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho")
        if self.decorrelate:
            t = torch.einsum("ij,njhw->nihw", _COLOR.to(t.dtype), t)
        return torch.sigmoid(t)


def make_param(
    kind: str,
    h: int,
    w: int,
    generator: torch.Generator,
    init01: torch.Tensor | None = None,
    noise: float = 0.0,
) -> ImageParam:
    """An image parameterisation by name ("pixel", "sigmoid", "fourier"), from `init01` or mid grey, plus noise."""
    if init01 is None:
        init01 = torch.full((1, 3, h, w), 0.5)
    if noise > 0:
        init01 = (init01 + noise * torch.randn(init01.shape, generator=generator)).clamp(0, 1)
    if kind == "pixel":
        return PixelImage(init01, "clamp")
    if kind == "sigmoid":
        return PixelImage(init01, "sigmoid")
    if kind == "fourier":
        return FourierImage(h, w, generator, init01=init01)
    raise BadInput(f"unknown image parameterisation {kind!r}; choose pixel, sigmoid or fourier")
