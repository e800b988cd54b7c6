"""Every channel of one layer's feature map for one image, as a grid of grayscale maps, with per-channel stats.

The lecture's "128x13x13" view: on a shared (per-layer) scale a dead or silent channel is a black tile, and the
statistics (mean, max, fraction of zeros) make such channels easy to count, not just to spot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ...errors import BadInput
from ...images import make_grid
from ...registry import LAYER, Observer, param, register
from ...result import Result
from ...taps import capture
from ._common import (
    auto_zoom,
    check_canvas,
    default_activation_layer,
    report,
    rgb,
    spatial_layer,
    upscale,
)

if TYPE_CHECKING:
    from ...zoo import Backbone


@dataclass
class ActivationsParams:
    layer: str = LAYER("", "layer whose feature maps to show ('' = the CAM layer / last spatial layer)")
    sort: str = param(
        "index",
        "order of the channels: as stored, or by mean / max activation",
        choices=("index", "mean", "max"),
    )
    scale: str = param(
        "layer",
        "gray scale: shared by the whole layer (white = its 99.5th percentile; after a ReLU, dead channels are "
        "all zero and look black) or stretched per channel",
        choices=("layer", "channel"),
    )
    max_channels: int = param(512, "show at most this many channels", min=1, max=4096)
    zoom: int = param(0, "integer enlargement of each map (0 = auto, about 32 px per tile)", min=0, max=32)
    pad: int = param(1, "pixels between tiles", min=0, max=16)


def layer_maps(net: Backbone, img: Image.Image, layer: str) -> np.ndarray:
    """The (C,H,W) float32 output of `layer` for one image (PyTorch forward with a hook)."""
    mod = net.require_module("reading activations")
    x = net.preprocess(img)
    with torch.no_grad(), capture(mod, [layer], detach=True) as st:
        mod(x)
    a = st[layer]
    if a.ndim != 4:
        raise BadInput(f"layer {layer!r} gave shape {tuple(a.shape)}, not (1,C,H,W)")
    return a[0].float().cpu().numpy()


def channel_stats(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel mean, max, min, std and fraction of values <= 0 (exact zeros after a ReLU) of (C,H,W) maps."""
    flat = maps.reshape(len(maps), -1)
    return {
        "mean": flat.mean(1).astype(np.float32),
        "max": flat.max(1).astype(np.float32),
        "min": flat.min(1).astype(np.float32),
        "std": flat.std(1).astype(np.float32),
        "frac_zero": (flat <= 0).mean(1).astype(np.float32),
    }


@register(
    "activations",
    "inspect",
    ActivationsParams,
    paper="Yosinski et al. 2015, Understanding Neural Networks Through Deep Visualization",
)
def run(net: Backbone, img: Image.Image, p: ActivationsParams, obs: Observer) -> Result:
    """All feature maps of one layer for one image as a grayscale grid, plus per-channel statistics."""
    li = spatial_layer(net, p.layer, default_activation_layer(net), "activations")
    report(obs, 0.1, f"forward to {li.name}")
    maps = layer_maps(net, img, li.name)
    if not np.isfinite(maps).all():
        raise BadInput(f"layer {li.name!r} produced NaN/inf activations for this image")
    stats = channel_stats(maps)
    c, h, w = maps.shape
    if p.sort == "index":
        order = np.arange(c)
    else:
        order = np.argsort(-stats[p.sort], kind="stable")
    shown = order[: p.max_channels]
    zoom = p.zoom or auto_zoom(max(h, w), 32)
    check_canvas(len(shown) * (h * zoom + p.pad) * (w * zoom + p.pad), "activations", "max_channels or zoom")
    lo, hi = float(maps.min()), float(maps.max())
    # shared scale with a robust white point (a few hot pixels would otherwise turn every tile black)
    white = float(np.percentile(maps, 99.5))
    white = white if white > lo else hi
    tiles = []
    for ch in shown:
        m = maps[ch]
        if p.scale == "layer":
            a, b = lo, white
        else:
            a, b = float(m.min()), float(m.max())
        u = (m - a) / (b - a) if b > a else np.zeros_like(m)
        tiles.append(upscale(rgb((np.clip(u, 0, 1) * 255 + 0.5).astype(np.uint8)), zoom))
    report(obs, 0.8, "drawing")
    ncols = math.ceil(math.sqrt(len(tiles)))
    grid = make_grid(tiles, ncols=ncols, pad=p.pad, pad_value=(255, 255, 80))
    dead = np.flatnonzero(stats["max"] <= 0)
    report(obs, 1.0, "done")
    return Result(
        "grid",
        grid,
        meta={
            "layer": li.name,
            "shape": [int(c), int(h), int(w)],
            "shown": len(shown),
            "rows": math.ceil(len(tiles) / ncols),
            "cols": ncols,
            "zoom": int(zoom),
            "tile": [int(h * zoom), int(w * zoom)],
            "scale": p.scale,
            "value_range": [lo, hi],
            "white_point": white,
            "dead_channels": len(dead),
            "mean_frac_zero": float(stats["frac_zero"].mean()),
        },
        image=img,
        extras={"stats": stats, "order": shown.astype(np.int64), "dead": dead.astype(np.int64), "maps": maps},
    )
