"""Convolution filters as pictures: first-layer kernels as RGB tiles, deeper kernels as per-input-channel grids.

First layer (kernels that see the image): each filter is one RGB tile, min-max normalised per filter as in the
AlexNet paper's figure (oriented edges, colour blobs). Deeper layers: one row per filter, one grayscale tile per
input channel, scaled per filter symmetrically around zero (mid-gray = 0), so sign and relative strength show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from ...errors import BadInput
from ...images import make_grid
from ...registry import LAYER, Observer, param, register
from ...result import Result
from ._common import auto_zoom, check_canvas, minmax01, report, rgb, upscale

if TYPE_CHECKING:
    from ...zoo import Backbone


@dataclass
class FiltersParams:
    layer: str = LAYER("", "convolution layer whose kernels to show ('' = the first convolution)")
    sort: str = param(
        "norm", "order of the filters: by L2 norm (strongest first) or as stored", choices=("norm", "none")
    )
    max_filters: int = param(256, "show at most this many filters", min=1, max=4096)
    max_inputs: int = param(
        32, "deeper layers: show at most this many input channels per filter", min=1, max=1024
    )
    zoom: int = param(0, "integer enlargement of each kernel tile (0 = auto, about 24-32 px)", min=0, max=64)
    pad: int = param(1, "pixels between tiles", min=0, max=16)


def conv_modules(net: Backbone) -> list[tuple[str, nn.Conv2d]]:
    """The 2-D convolutions of a backbone in execution order (their names are valid `layer` values)."""
    mod = net.require_module("showing filters")
    convs = {n: m for n, m in mod.named_modules() if isinstance(m, nn.Conv2d)}
    order = [li.name for li in net.layers() if li.name in convs]
    rest = [n for n in convs if n not in order]
    return [(n, convs[n]) for n in order + rest]


def _pick_conv(net: Backbone, name: str) -> tuple[str, nn.Conv2d, bool]:
    convs = conv_modules(net)
    if not convs:
        raise BadInput(f"{net.name!r} has no 2-D convolution to show")
    if not name:
        return convs[0][0], convs[0][1], True
    for i, (n, m) in enumerate(convs):
        if n == name:
            return n, m, i == 0
    raise BadInput(
        f"filters: {name!r} is not a convolution of {net.name!r}; "
        f"convolutions: {[n for n, _ in convs][:12]}{' ...' if len(convs) > 12 else ''} ({len(convs)} in all)"
    )


@register(
    "filters",
    "inspect",
    FiltersParams,
    paper="Krizhevsky, Sutskever & Hinton 2012, ImageNet Classification with Deep CNNs (Fig. 3)",
    needs_image=False,
)
def run(net: Backbone, img: Any, p: FiltersParams, obs: Observer) -> Result:
    """Convolution kernels as a tile mosaic: RGB tiles for the first layer, per-input-channel grids deeper."""
    name, conv, first = _pick_conv(net, p.layer)
    w = conv.weight.detach().float().cpu().numpy()  # (O, I/groups, kh, kw)
    out_c, in_c, kh, kw = w.shape
    pre = net.pre
    if first and in_c == 3 and conv.groups == 1 and pre.channels == "BGR":
        w = w[:, ::-1]  # show BGR-trained kernels in RGB
    flat = w.reshape(out_c, -1)
    norms = np.linalg.norm(flat, axis=1)
    order = np.argsort(-norms, kind="stable") if p.sort == "norm" else np.arange(out_c)
    shown = order[: p.max_filters]
    zoom = p.zoom or auto_zoom(max(kh, kw), 28)
    rgb_tiles = first and in_c == 3 and conv.groups == 1
    n_tiles = len(shown) * (1 if rgb_tiles or in_c == 1 else min(in_c, p.max_inputs))
    check_canvas(
        n_tiles * (kh * zoom + p.pad) * (kw * zoom + p.pad), "filters", "max_filters, max_inputs or zoom"
    )
    report(obs, 0.3, f"{len(shown)} filters of {name}")

    if rgb_tiles or in_c == 1:
        # one tile per filter: RGB (first layer) or grayscale (single input channel / depthwise)
        tiles = []
        for o in shown:
            t = minmax01(w[o].transpose(1, 2, 0) if rgb_tiles else w[o, 0])
            tiles.append(upscale(rgb((t * 255 + 0.5).astype(np.uint8)), zoom))
        ncols = math.ceil(math.sqrt(len(tiles)))
        grid = make_grid(tiles, ncols=ncols, pad=p.pad, pad_value=(255, 255, 255))
        layout = {"rows": math.ceil(len(tiles) / ncols), "cols": ncols, "inputs_shown": in_c}
    else:
        # one row per filter, one grayscale tile per input channel, symmetric around zero per filter
        n_in = min(in_c, p.max_inputs)
        tiles = []
        for o in shown:
            scale = float(np.abs(w[o, :n_in]).max()) or 1.0
            for c in range(n_in):
                t = 0.5 + 0.5 * w[o, c] / scale
                tiles.append(upscale(rgb((np.clip(t, 0, 1) * 255 + 0.5).astype(np.uint8)), zoom))
        grid = make_grid(tiles, ncols=n_in, pad=p.pad, pad_value=(255, 255, 255))
        layout = {"rows": len(shown), "cols": n_in, "inputs_shown": n_in}
    report(obs, 1.0, "done")

    sel = flat[shown]
    stats = {
        "index": shown.astype(np.int64),
        "norm": norms[shown].astype(np.float32),
        "mean": sel.mean(1).astype(np.float32),
        "std": sel.std(1).astype(np.float32),
        "min": sel.min(1).astype(np.float32),
        "max": sel.max(1).astype(np.float32),
    }
    return Result(
        "grid",
        grid,
        meta={
            "layer": name,
            "first_layer": bool(first),
            "style": "rgb" if rgb_tiles else ("gray" if in_c == 1 else "per-input-channel"),
            "kernel": [int(out_c), int(in_c), int(kh), int(kw)],
            "groups": int(conv.groups),
            "filters": int(out_c),
            "shown": len(shown),
            "zoom": int(zoom),
            "tile": [int(kh * zoom), int(kw * zoom)],
            **layout,
        },
        extras={"stats": stats, "order": order.astype(np.int64), "weights": w[shown]},
    )
