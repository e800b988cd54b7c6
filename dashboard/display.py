"""Results on a page: any Result shown by its kind, captions with timings, a shared colour scale for several maps,
loss curves, WebGL scatters of points and image grids. Every caption and label that may hold user text (dataset
labels, file names) is shown literally, without server paths."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from accel.images import colorize
from accel.result import Result

from .session_store import public_text
from .ui import escape_md, html_text

# ---------------------------------------------------------------------------------------------------- display


def meta_line(meta: dict[str, Any]) -> str:
    """Wall time, backend and passes of a result, for captions under maps and images."""
    parts = []
    if isinstance(meta.get("wall_s"), (int, float)):
        parts.append(f"{meta['wall_s']:.2f} s")
    if meta.get("backend"):
        parts.append(str(meta["backend"]))
    if isinstance(meta.get("passes"), (int, float)):
        parts.append(f"{int(meta['passes'])} passes")
    t = meta.get("target")
    if isinstance(t, dict) and t.get("index") is not None:
        lab = f" {t['label']}" if t.get("label") else ""
        prob = f" (p={t['probability']:.2f})" if isinstance(t.get("probability"), float) else ""
        parts.append(f"target {t['index']}{lab}{prob}")
    elif isinstance(t, (int, np.integer)):
        parts.append(f"target {int(t)}")
    return " · ".join(parts)


def target_index(meta: dict[str, Any]) -> int | None:
    """The class index a result explains (meta "target" as an int or as {"index": ...})."""
    t = meta.get("target")
    if isinstance(t, dict):
        t = t.get("index")
    return int(t) if isinstance(t, (int, np.integer)) else None


def show_result(
    res: Result, *, caption: str = "", alpha: float = 0.5, width: Any = None, key: str = ""
) -> None:
    """Display any Result by kind: maps as overlays, images/grids/patches as pictures, points as a scatter. The caption
    (labels may come from an uploaded model or dataset) is shown as text, server paths hidden."""
    cap = escape_md(public_text(" · ".join(x for x in (caption, meta_line(res.meta)) if x)), strict=True)
    if res.kind == "points":
        st.plotly_chart(points_figure(res), key=key or None)
        if cap:
            st.caption(cap)
        return
    try:
        img = res.overlay(alpha=alpha) if res.kind == "map" else res.to_image()
    except ValueError as e:
        st.warning(escape_md(public_text(f"cannot display this {res.kind} result: {e}"), strict=True))
        return
    img = fit_width(img, at_least=GRID_SIDE if res.kind in ("grid", "patches") else 256)
    extra = companion_pictures(res)
    if not extra:
        st.image(img, caption=cap or None, width=width or ("stretch" if img.width >= 640 else "content"))
        if res.kind == "map":
            colour_scale(res.data)
        return
    cols = st.columns(1 + len(extra))
    cols[0].image(img, caption=cap or None, width="stretch")  # companions side by side
    for col, (name, pic, note) in zip(cols[1:], extra, strict=True):
        col.image(
            fit_width(pic),
            caption=escape_md(public_text(f"{name} · {note}" if note else name)),
            width="stretch",
        )


def companion_pictures(res: Result) -> list[tuple[str, Image.Image, str]]:
    """Pictures a result carries beside its own (PIL images in its extras, e.g. fast style's packaged peer), as
    (name, picture, note): the note gives the meta that names them (`<name>_model`, `<name>_seconds`). The "image"
    extra is a result's own picture (points, grids), not a companion."""
    out = []
    for k, v in res.extras.items():
        if not isinstance(v, Image.Image) or k == "image":
            continue
        secs = res.meta.get(f"{k}_seconds")
        bits = [
            str(res.meta.get(f"{k}_model") or ""),
            f"{secs:.3f} s" if isinstance(secs, (int, float)) else "",
        ]
        out.append((k, v, " · ".join(b for b in bits if b)))
    return out


GRID_SIDE = (
    512  # grids (filter mosaics, activation tiles) are enlarged to at least this side: tiles stay legible
)


def fit_width(img: Image.Image, max_side: int = 900, at_least: int = 256) -> Image.Image:
    """Upscale small images by a whole factor (nearest neighbour) towards `at_least` pixels on the longer side, so
    28x28 inputs and 3x3 filter tiles stay visible; never exceed `max_side`."""
    w, h = img.size
    if max(w, h) >= at_least:
        return img
    f = max(1, min(at_least // max(w, h), max_side // max(w, h)))
    return img.resize((w * f, h * f), Image.Resampling.NEAREST)


def colour_scale(data: Any, cmap: str = "jet") -> None:
    """The colour bar of a map drawn with its own min-max scale (Result.overlay's default), with its values."""
    d = np.asarray(data, dtype=np.float64)
    if not d.size or not np.isfinite(d).all():
        return
    lo, hi = float(d.min()), float(d.max())
    st.image(colorbar_image(lo, hi, cmap, width=256, height=10), caption=f"colour scale {lo:.3g} … {hi:.3g}")


def shared_scale(
    maps: list[np.ndarray], mode: str, signed: bool
) -> tuple[list[np.ndarray], float, float, str]:
    """One colour scale for several attribution maps: `mode` "normalised" divides each map by its 99th
    percentile of |values| (a common 0..1 scale), "absolute" keeps raw values under one global min/max."""
    out = [
        np.asarray(m, dtype=np.float32) if signed else np.abs(np.asarray(m, dtype=np.float32)) for m in maps
    ]
    if mode == "normalised":
        res = []
        for m in out:
            p = float(np.percentile(np.abs(m), 99)) if m.size else 1.0
            res.append(np.clip(m / (p if p > 0 else 1.0), -1.0, 1.0))
        out = res
        lo, hi = (-1.0, 1.0) if signed else (0.0, 1.0)
    else:
        hi = max((float(np.max(np.abs(m))) for m in out if m.size), default=1.0) or 1.0
        lo = -hi if signed else min((float(np.min(m)) for m in out if m.size), default=0.0)
    cmap = "RdBu_r" if signed else "jet"
    return out, lo, hi, cmap


def colorbar_image(lo: float, hi: float, cmap: str, width: int = 512, height: int = 14) -> Image.Image:
    """A horizontal colour bar for the shared scale."""
    ramp = np.tile(np.linspace(lo, hi, width, dtype=np.float32), (height, 1))
    return Image.fromarray(colorize(ramp, cmap, lo, hi))


MISSING = "–"  # what a table shows for a value it does not have (never "None" or "nan")


def readable_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Table rows with every column present in every row and no "None"/"nan" shown: a column with a missing value
    shows MISSING there and its other values as text (a column keeps one type)."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    out = [{k: r.get(k) for k in keys} for r in rows]

    def missing(v: Any) -> bool:
        return v is None or (isinstance(v, float) and not np.isfinite(v))

    for k in keys:
        if any(missing(r[k]) for r in out):
            for r in out:
                v = r[k]
                r[k] = MISSING if missing(v) else f"{v:.4g}" if isinstance(v, float) else str(v)
    return out


def compact(fig: go.Figure, height: int, **layout: Any) -> go.Figure:
    """`fig` in the dashboard's plot style: `height` pixels, thin margins, plus any other layout settings."""
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=30, b=10), **layout)
    return fig


def loss_figure(losses: Sequence[float], title: str = "loss") -> go.Figure:
    """A small line plot of an optimisation's loss curve."""
    y = np.asarray(losses, dtype=np.float64)
    fig = go.Figure(go.Scatter(x=np.arange(len(y)), y=y, mode="lines", name=title))
    return compact(fig, 220, title=title, xaxis_title="step")


def loss_sparkline(losses: Sequence[float], width: int = 360, height: int = 110) -> str:
    """The loss curve as a small static SVG (at most 240 points, min-max scaled, first/last/min values written on
    it): what a live panel redraws every poll. A plotly chart cost the browser about a core-second per 40-step run
    in redraws, taken from the run itself when browser and server share a machine; the interactive chart is drawn
    once, when the run ends."""
    y = np.asarray([v for v in losses if np.isfinite(v)], dtype=np.float64)
    pad, top = 6, 18
    if len(y) < 2:
        return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"></svg>'
    idx = np.unique(np.linspace(0, len(y) - 1, min(len(y), 240)).round().astype(int))
    lo, hi = float(y.min()), float(y.max())
    span = hi - lo if hi > lo else 1.0
    xs = pad + idx / (len(y) - 1) * (width - 2 * pad)
    ys = top + (hi - y[idx]) / span * (height - top - pad)
    pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys))
    text = html_text(f"loss {y[0]:.4g} → {y[-1]:.4g} · min {lo:.4g} · step {len(losses) - 1}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">'
        f'<rect width="{width}" height="{height}" fill="white" stroke="#ddd"/>'
        f'<text x="{pad}" y="13" font-family="sans-serif" font-size="11" fill="#555">{text}</text>'
        f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="1.5"/></svg>'
    )


def points_figure(
    res: Result,
    *,
    labels: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    highlight: Sequence[int] = (),
    marker_size: float | None = None,
) -> go.Figure:
    """A WebGL scatter (go.Scattergl) of a points result coloured by label; customdata holds the point index."""
    pts = np.asarray(res.data, dtype=np.float32)
    n = len(pts)
    if labels is None:
        labels = _find(res, ("labels", "label", "y"))
    classes = classes or _find(res, ("classes", "class_names", "label_names"))
    size = marker_size or (6 if n <= 2000 else 4 if n <= 20000 else 2.5)
    idx = np.arange(n)
    fig = go.Figure()
    lab = np.asarray(labels).astype(np.int64) if labels is not None and len(labels) == n else None
    if lab is not None and len(np.unique(lab)) <= 20:
        for c in np.unique(lab):
            sel = lab == c
            name = html_text(classes[c] if classes is not None and 0 <= c < len(classes) else str(c))
            fig.add_trace(
                go.Scattergl(
                    x=pts[sel, 0],
                    y=pts[sel, 1],
                    mode="markers",
                    name=name,
                    customdata=idx[sel],
                    text=[name]
                    * int(sel.sum()),  # class names come from dataset folders: escaped, never a template
                    marker=dict(size=size, opacity=0.8),
                    hovertemplate="%{text}<br>#%{customdata}<extra></extra>",
                )
            )
    else:
        fig.add_trace(
            go.Scattergl(
                x=pts[:, 0],
                y=pts[:, 1],
                mode="markers",
                customdata=idx,
                marker=dict(
                    size=size, color=lab if lab is not None else None, colorscale="Turbo", opacity=0.8
                ),
                hovertemplate="#%{customdata}<extra></extra>",
            )
        )
    if len(highlight):
        h = np.asarray(highlight, dtype=np.int64)
        fig.add_trace(
            go.Scattergl(
                x=pts[h, 0],
                y=pts[h, 1],
                mode="markers",
                name="selected",
                customdata=h,
                marker=dict(size=14, symbol="circle-open", color="black", line=dict(width=2)),
                hoverinfo="skip",
            )
        )
    return compact(fig, 560, legend=dict(itemsizing="constant"), dragmode="pan")


def _find(res: Result, names: Sequence[str]) -> Any:
    for src in (res.extras, res.meta):
        for k in names:
            if k in src and src[k] is not None:
                return src[k]
    return None


def image_row(
    images: Sequence[Image.Image], captions: Sequence[str], ncols: int = 6, width: Any = "stretch"
) -> None:
    """A row-wrapped grid of images with captions (shown as text: they often hold dataset labels or file names)."""
    if not images:
        return
    for i in range(0, len(images), ncols):
        cols = st.columns(ncols)
        for col, im, cap in zip(cols, images[i : i + ncols], captions[i : i + ncols]):
            col.image(im, caption=escape_md(public_text(cap), strict=True) if cap else None, width=width)
