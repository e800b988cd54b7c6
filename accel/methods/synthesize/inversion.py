"""Feature inversion (Mahendran & Vedaldi 2015): which image has these features at this layer?

Reconstruct the photo from its activations at a layer by minimising the relative feature error plus a
total-variation prior, from noise. Reconstructions from several depths side by side show what is lost with depth:
early layers keep nearly every pixel, deep ones only parts and layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ...errors import BadInput
from ...images import make_grid
from ...registry import LAYERS, SEED, Observer, param, register
from ...result import LossRecord, Result
from . import _opt

if TYPE_CHECKING:
    from ...backbone import Backbone


@dataclass
class InversionParams:
    """Parameters of inversion: the layers to invert from, optimiser and prior."""

    layers: str = LAYERS("", "comma-separated layers to invert from, shallow to deep (empty = four depths)")
    steps: int = param(200, "optimisation steps per layer", min=1, max=10000)
    lr: float = param(0.05, "step size (Adam in pixel units; L-BFGS: 1 is a good start)", min=1e-6, max=1e4)
    optimizer: str = param("adam", "Adam or L-BFGS", choices=("adam", "lbfgs"))
    tv_weight: float = param(0.5, "weight of the total-variation prior (0 = none)", min=0.0, max=1e6)
    parameterization: str = param("pixel", "image parameterisation", choices=("pixel", "sigmoid", "fourier"))
    size: int = param(0, "image side in pixels (0 = the network's input size)", min=0, max=4096)
    seed: int = SEED("noise start")


_VGG16_DEPTHS = ("features.8", "features.15", "features.22", "features.29")
_VGG19_DEPTHS = (
    "features.block2_relu2",
    "features.block3_relu4",
    "features.block4_relu4",
    "features.block5_relu4",
)


def default_layers(net: Backbone) -> list[str]:
    """Four depths: relu2_2/3_3/4_3/5_3 on VGG16 (relu2_2/3_4/4_4/5_4 on VGG19), else spread over the network."""
    names = {li.name for li in net.layers()}
    for cand in (_VGG16_DEPTHS, _VGG19_DEPTHS):
        if all(c in names and (c != "features.29" or "features.30" in names) for c in cand):
            return list(cand)
    spatial = [li.name for li in net.conv_layers() if li.out_shape[1] > 1]
    convs = [n for n in spatial if n.count(".") <= 1] or spatial
    if not convs:
        raise BadInput(f"{net.name!r} has no spatial layers to invert")
    idx = sorted({round(f * (len(convs) - 1)) for f in (0.2, 0.45, 0.7, 0.95)})
    return [convs[i] for i in idx]


def relative_feature_error(net: Backbone, x01: torch.Tensor, layer: str, target: torch.Tensor) -> float:
    """||F(x) - F0|| / ||F0|| at `layer` for the 8-bit version of x."""
    with torch.no_grad():
        a = _opt.forward(net, _opt.quantize(x01), [layer])[0][layer]
    return float((a - target).norm() / (target.norm() + 1e-12))


@register(
    "inversion",
    "synthesize",
    InversionParams,
    paper="Mahendran & Vedaldi 2015, Understanding Deep Image Representations by Inverting Them",
    needs_image=True,
    needs_grad=True,
    page="inversion",
)
def run(
    net: Backbone,
    img: Image.Image,
    p: InversionParams,
    obs: Observer,
) -> Result:
    """Reconstruct the image from its features at one or several layers (TV prior); reports the feature errors."""
    layers = _opt.parse_names(p.layers, "inversion layers") if p.layers.strip() else default_layers(net)
    _opt.check_layers(net, layers)
    size = p.size or net.pre.size
    x0 = _opt.pil_to01(img, size, square=True)
    _opt.check_memory(net, size, size, what="inversion")
    _opt.non_negative(p.tv_weight, "tv_weight")
    rows: list[dict[str, Any]] = []
    recon: dict[str, np.ndarray] = {}
    histories: dict[str, list[float]] = {}
    curve: list[LossRecord] = []
    images: list[torch.Tensor] = []
    for k, layer in enumerate(layers):
        with torch.no_grad():
            target = _opt.forward(net, x0, [layer])[0][layer].detach()
        if not float(target.norm()) > 0:
            raise BadInput(
                f"inversion: the features at {layer!r} are all zero for this image; pick another layer"
            )
        obj = _opt.feature_error(layer, target) + p.tv_weight * _opt.tv()
        gen = torch.Generator().manual_seed(p.seed)
        prm = _opt.make_param(p.parameterization, size, size, gen, noise=0.1)
        res = _opt.optimize(
            net,
            obj,
            prm,
            steps=p.steps,
            lr=p.lr,
            optimizer=p.optimizer,
            seed=p.seed,
            lr_schedule="cosine",
            progress_span=(k / len(layers), (k + 1) / len(layers)),
            observer=obs,
            what=f"inversion at {layer}",
        )
        x = _opt.quantize(res.image)
        err0 = relative_feature_error(net, _start_image(p, size), layer, target)
        err = relative_feature_error(net, x, layer, target)
        rows.append(
            {
                "layer": layer,
                "rel_feature_error": err,
                "rel_feature_error_start": err0,
                "pixel_mae": float((x - x0).abs().mean()),
                "pixel_rmse": float((x - x0).pow(2).mean().sqrt()),
                "steps_run": res.steps,
                "stopped": res.stopped,
                "receptive_field": net.layer(layer).receptive_field,
            }
        )
        recon[layer] = _opt.to_uint8(x)
        histories[layer] = res.loss_history
        curve += [LossRecord(len(curve) + r.step, r.value, r.parts) for r in res.records()]
        images.append(x)
        if res.stopped and res.stopped.startswith("cancelled"):
            break
    meta: dict[str, Any] = {
        "layers": rows,
        "rel_feature_error": {r["layer"]: r["rel_feature_error"] for r in rows},
        "pixel_mae": {r["layer"]: r["pixel_mae"] for r in rows},
        "loss_history": histories[rows[0]["layer"]] if len(rows) == 1 else histories,
        "size": size,
        "objective": "relative feature error^2 + tv_weight * TV",
    }
    extras = {"reconstructions": recon, "original": _opt.to_uint8(x0)}
    if len(images) == 1:
        return _opt.image_result(images[0], meta, image=img, extras=extras, losses=curve)
    grid = make_grid([_opt.to_uint8(x0)] + [recon[r["layer"]] for r in rows], ncols=len(rows) + 1, pad=2)
    meta["grid_order"] = ["original"] + [r["layer"] for r in rows]
    return Result("grid", grid, meta, img, extras, curve)  # the layers' curves one after another


def _start_image(p: InversionParams, size: int) -> torch.Tensor:
    """The noise image every reconstruction starts from (for the starting feature error)."""
    gen = torch.Generator().manual_seed(p.seed)
    with torch.no_grad():
        return _opt.make_param(p.parameterization, size, size, gen, noise=0.1)()
