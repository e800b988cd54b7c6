"""Full-resolution figures of a map: the heat map drawn over the original photo (over the region the network saw),
with a colour bar, its units and a title that says what was explained; what `--full` and page downloads write."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BadInput
from .render import to_array

MAX_FIGURE_SIDE = 4096  # the figure's longer side in pixels; larger photos are drawn scaled down


def map_figure(
    photo: Image.Image,
    heat: np.ndarray,
    box: Sequence[float] | None = None,
    *,
    title: str = "",
    label: str = "attribution",
    cmap: str = "jet",
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """The photo at its own resolution with `heat` (HxW) stretched over `box` (x0, y0, x1, y1 in photo pixels; the
    whole photo when None), a colour bar labelled `label` in the map's own units, and `title` above."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    h = np.asarray(heat, dtype=np.float64)
    if h.ndim != 2 or h.size == 0 or not np.isfinite(h).all():
        raise BadInput(f"map_figure: heat must be a finite HxW array, got shape {h.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise BadInput(f"map_figure: alpha must lie in 0..1, got {alpha}")
    base = photo.convert("RGB")
    scale = min(1.0, MAX_FIGURE_SIDE / max(base.size))
    if scale < 1.0:
        base = base.resize((max(1, round(base.width * scale)), max(1, round(base.height * scale))))
    w, h_px = base.size
    x0, y0, x1, y1 = (0.0, 0.0, float(w), float(h_px)) if box is None else (float(v) * scale for v in box)
    lo = float(h.min()) if vmin is None else float(vmin)
    hi = float(h.max()) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1e-12
    dpi = 100.0
    fig = Figure(figsize=(w / dpi + 1.6, h_px / dpi + (0.6 if title else 0.2)), dpi=dpi)
    top = 1.0 - ((0.45 / (h_px / dpi + 0.6)) if title else 0.0)
    ax = fig.add_axes((0.01, 0.0, w / (w + 160.0), top))
    ax.imshow(to_array(base), extent=(0, w, h_px, 0), interpolation="nearest")
    im = ax.imshow(
        h, cmap=cmap, vmin=lo, vmax=hi, alpha=alpha, extent=(x0, x1, y1, y0), interpolation="bilinear"
    )
    ax.set_xlim(0, w)
    ax.set_ylim(h_px, 0)
    ax.set_axis_off()
    if title:
        fig.text(0.01, 1.0 - 0.08 / (h_px / dpi + 0.6), title, fontsize=11, va="top", ha="left")
    cax = fig.add_axes((w / (w + 160.0) + 0.02, 0.1, 24.0 / (w + 160.0), 0.8))
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(label)
    if cb.solids is not None:
        cb.solids.set_alpha(1.0)  # the bar shows the colours at full strength, not blended
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def map_title(method: str, meta: dict[str, Any]) -> str:
    """What a map explains, in one line: method, target class with its probability, and the layer (when known)."""
    parts = [method]
    t = meta.get("target")
    if isinstance(t, dict):
        label = t.get("label") if t.get("label") is not None else f"class {t.get('index')}"
        prob = t.get("probability")
        parts.append(f"{label} ({prob:.1%})" if isinstance(prob, (int, float)) else str(label))
    layer = meta.get("layer") or (meta.get("params") or {}).get("layer")
    if layer:
        parts.append(f"layer {layer}")
    return " · ".join(parts)
