"""The one result type every technique returns, with display helpers that keep rendering out of the methods."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

KINDS = ("map", "image", "grid", "points", "patches")


@dataclass(frozen=True)
class LossRecord:
    """One step of an optimisation: the total loss and, where the objective has named parts, each part's value."""

    step: int
    value: float
    parts: dict[str, float] = field(default_factory=dict)


def colorize(
    m: np.ndarray, cmap: str = "jet", vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """Map a 2-D float array to uint8 RGB with a matplotlib colormap (min-max scaled unless bounds are given)."""
    from matplotlib import colormaps

    m = np.asarray(m, dtype=np.float64)
    lo = float(np.nanmin(m)) if vmin is None else vmin
    hi = float(np.nanmax(m)) if vmax is None else vmax
    span = hi - lo if hi > lo else 1.0
    u = np.clip((m - lo) / span, 0.0, 1.0)
    rgb = colormaps[cmap](u)[..., :3]
    return (rgb * 255.0 + 0.5).astype(np.uint8)


@dataclass
class Result:
    """What a method produced: `data` (numpy), its `kind`, the input it explains, metadata (params, timings) and,
    for optimisation methods, the loss history (`losses`, one typed record per step)."""

    kind: str
    data: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    image: Image.Image | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    losses: list[LossRecord] = field(default_factory=list)  # optimisation methods: the loss curve, step by step

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Result kind must be one of {KINDS}, got {self.kind!r}")

    def overlay(
        self,
        alpha: float = 0.5,
        cmap: str = "jet",
        vmin: float | None = None,
        vmax: float | None = None,
    ) -> Image.Image:
        """Blend a map over the image it explains (maps only); shared vmin/vmax give one colour scale across maps."""
        if self.kind != "map":
            return self.to_image()
        heat = Image.fromarray(colorize(self.data, cmap, vmin, vmax))
        if self.image is None:
            return heat
        base = self.image.convert("RGB").resize(heat.size, Image.BILINEAR)
        return Image.blend(base, heat, float(alpha))

    def loss_curve(self) -> list[float]:
        """The total loss per recorded step (empty for methods that do not optimise)."""
        return [r.value for r in self.losses]

    def to_image(self, cmap: str = "jet") -> Image.Image:
        """A PIL image for display: the synthesized image, the rendered grid, or a colour-mapped map."""
        d = self.data
        if self.kind == "map":
            return Image.fromarray(colorize(d, cmap))
        if self.kind in ("image", "grid", "patches") and d.ndim == 3 and d.shape[-1] in (1, 3):
            arr = d if d.dtype == np.uint8 else (np.clip(d, 0, 1) * 255 + 0.5).astype(np.uint8)
            return Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr)
        if self.kind in ("image", "grid") and d.ndim == 2:
            return Image.fromarray(colorize(d, "gray"))
        if "image" in self.extras and isinstance(self.extras["image"], Image.Image):
            return self.extras["image"]
        raise ValueError(f"cannot render a {self.kind!r} result with data of shape {d.shape} as an image")
