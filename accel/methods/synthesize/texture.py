"""Texture synthesis: parametric (Gram matrices of CNN features, Gatys et al. 2015) and non-parametric (Efros &
Leung 1999, the classical baseline the lecture contrasts it with).

Gram: start from noise and match the exemplar's Gram matrices at one or several layers; the network's features
are the texture model. Efros-Leung: grow the texture pixel by pixel, copying the centre of a randomly chosen
exemplar window among those that best match the already-synthesised neighbourhood (small sizes only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ...errors import BadInput, ResourceLimit
from ...registry import LAYERS, SEED, Observer, param, register
from ...result import Result
from . import _opt

if TYPE_CHECKING:
    from ...backbone import Backbone

EL_MAX_WORK = 4e10  # Efros-Leung: output pixels x exemplar windows x window size, about a minute of CPU


@dataclass
class TextureParams:
    """Parameters of texture: Gram (layers, weights, optimiser) or Efros-Leung (window)."""

    method: str = param(
        "gram", "Gram-matrix synthesis (Gatys) or non-parametric Efros-Leung", choices=("gram", "efros_leung")
    )
    layers: str = LAYERS(
        "", "comma-separated layers whose Gram matrices are matched (empty = relu1_1..relu5_1 on VGG)"
    )
    layer_weights: str = param("", "comma-separated weight per layer (empty = equal)")
    size: int = param(128, "side of the synthesised texture in pixels", min=8, max=4096)
    exemplar_size: int = param(
        0, "longer side the exemplar is resized to (0 = same as size)", min=0, max=4096
    )
    steps: int = param(100, "optimisation steps (gram)", min=1, max=10000)
    lr: float = param(1.0, "step size (L-BFGS: 1; Adam in pixel units: ~0.02)", min=1e-6, max=1e4)
    optimizer: str = param("lbfgs", "L-BFGS (Gatys) or Adam", choices=("lbfgs", "adam"))
    parameterization: str = param(
        "pixel", "image parameterisation (gram)", choices=("pixel", "sigmoid", "fourier")
    )
    window: int = param(9, "Efros-Leung neighbourhood window (odd, pixels)", min=3, max=31)
    seed: int = SEED("noise start, Efros-Leung choices")


def efros_leung(
    exemplar: np.ndarray,
    size: int,
    window: int = 9,
    seed: int = 0,
    eps: float = 0.1,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Non-parametric texture synthesis (Efros & Leung 1999) of a size x size RGB texture from an HxWx3 exemplar.

    Grows outward from a random 3x3 seed; each pixel copies the centre of a window chosen at random among those
    within (1 + eps) of the best Gaussian-weighted SSD to its filled neighbourhood."""
    if window % 2 == 0:
        raise BadInput(f"efros_leung: window must be odd, got {window}")
    ex = exemplar.astype(np.float32) / 255.0
    eh, ew = ex.shape[:2]
    if eh < window or ew < window:
        raise BadInput(f"efros_leung: the exemplar ({ew}x{eh}) is smaller than the window ({window})")
    r = window // 2
    nwin = (eh - window + 1) * (ew - window + 1)
    work = float(size) * size * nwin * window * window * 3
    if work > EL_MAX_WORK:
        raise ResourceLimit(
            f"efros_leung: {size}x{size} output from a {ew}x{eh} exemplar with window {window} is too much work "
            f"({work:.2g} > {EL_MAX_WORK:.2g} operations); use size <= 96, exemplar_size <= 64 or a smaller window"
        )
    rng = np.random.default_rng(seed)
    from numpy.lib.stride_tricks import sliding_window_view

    patches = sliding_window_view(ex, (window, window, 3)).reshape(nwin, window * window * 3)
    centers = patches.reshape(nwin, window, window, 3)[:, r, r]
    p2 = patches * patches
    sig = window / 6.4
    g1 = np.exp(-0.5 * ((np.arange(window) - r) / sig) ** 2)
    gauss = np.repeat(np.outer(g1, g1).ravel(), 3).astype(np.float32)
    out = np.zeros((size + 2 * r, size + 2 * r, 3), np.float32)
    filled = np.zeros((size + 2 * r, size + 2 * r), bool)
    c = r + size // 2 - 1
    sy, sx = int(rng.integers(eh - 2)), int(rng.integers(ew - 2))
    out[c : c + 3, c : c + 3] = ex[sy : sy + 3, sx : sx + 3]
    filled[c : c + 3, c : c + 3] = True
    total, done = size * size, 9
    max_err = 0.3
    from scipy.ndimage import binary_dilation

    inner = np.zeros_like(filled)
    inner[r : r + size, r : r + size] = True
    while done < total:
        if should_stop is not None and should_stop():
            break
        frontier = binary_dilation(filled, np.ones((3, 3), bool)) & ~filled & inner
        ys, xs = np.nonzero(frontier)
        counts = np.array([filled[y - 1 : y + 2, x - 1 : x + 2].sum() for y, x in zip(ys, xs)])
        order = np.argsort(-counts, kind="stable")
        progressed = False
        for i in order:
            y, x = ys[i], xs[i]
            t = out[y - r : y + r + 1, x - r : x + r + 1].reshape(-1)
            m = np.repeat(filled[y - r : y + r + 1, x - r : x + r + 1].ravel(), 3).astype(np.float32) * gauss
            d = (p2 @ m - 2.0 * (patches @ (m * t)) + float((m * t * t).sum())) / float(m.sum())
            best = max(float(d.min()), 0.0)  # float error can make a perfect match slightly negative
            cand = np.nonzero(d <= best * (1 + eps) + 1e-7)[0]
            pick = int(cand[rng.integers(len(cand))])
            if d[pick] > max_err:
                continue
            out[y, x] = centers[pick]
            filled[y, x] = True
            done += 1
            progressed = True
        if not progressed:
            max_err *= 1.1
        if progress is not None:
            progress(done / total, f"{done}/{total} pixels")
    return (np.clip(out[r : r + size, r : r + size], 0, 1) * 255 + 0.5).astype(np.uint8)


@register(
    "texture",
    "synthesize",
    TextureParams,
    paper="Gatys, Ecker & Bethge 2015, Texture Synthesis Using Convolutional Neural Networks; Efros & Leung 1999",
    needs_image=True,
    needs_grad=True,
    page="inversion",
)
def run(
    net: Backbone,
    img: Image.Image,
    p: TextureParams,
    obs: Observer,
) -> Result:
    """Synthesise a texture like the exemplar `img`: Gram-matrix matching on CNN features, or Efros-Leung."""
    progress = obs.callback()  # a plain callable for the runtime layer
    ex_size = p.exemplar_size or p.size
    ex01 = _opt.pil_to01(img, ex_size)
    layers = (
        _opt.parse_names(p.layers, "texture layers") if p.layers.strip() else _opt.default_style_layers(net)
    )
    _opt.check_layers(net, layers)
    weights = _opt.parse_weights(p.layer_weights, len(layers), "layer_weights")
    if p.method == "efros_leung":
        t0 = time.perf_counter()
        arr = efros_leung(
            _opt.to_uint8(ex01),
            p.size,
            p.window,
            p.seed,
            progress=progress,
            should_stop=obs.should_stop,
        )
        x = torch.from_numpy(arr.astype(np.float32) / 255).permute(2, 0, 1)[None]
        meta: dict[str, Any] = {
            "texture_method": "efros_leung",
            "window": p.window,
            "time_s": time.perf_counter() - t0,
        }
        meta["style_loss_final"] = _opt.style_distance(net, x, _opt.gram_targets(net, ex01, layers), weights)
        meta["layers"] = layers
        return _opt.image_result(x, meta, image=img, extras={"exemplar": _opt.to_uint8(ex01)})
    _opt.check_memory(net, p.size, p.size, what="texture")
    targets = _opt.gram_targets(net, ex01, layers)
    obj = _opt.style_objective(targets, weights)
    gen = torch.Generator().manual_seed(p.seed)
    init = (0.5 + 0.1 * torch.randn(1, 3, p.size, p.size, generator=gen)).clamp(0, 1)
    prm = _opt.make_param(p.parameterization, p.size, p.size, gen, init01=init)
    res = _opt.optimize(
        net,
        obj,
        prm,
        steps=p.steps,
        lr=p.lr,
        optimizer=p.optimizer,
        seed=p.seed,
        observer=obs,
        what="texture",
    )
    start = _opt.style_distance(net, init, targets, weights)
    final = _opt.style_distance(net, res.image, targets, weights)
    meta = {
        "texture_method": "gram",
        "layers": layers,
        "layer_weights": weights,
        "style_loss_start": start,
        "style_loss_final": final,
        "style_loss_drop": 1.0 - final / start if start > 0 else None,
    }
    return _opt.image_result(res.image, meta, image=img, extras={"exemplar": _opt.to_uint8(ex01)}, opt=res)
