"""Neural style transfer (Gatys, Ecker & Bethge 2016): an image with one photo's content and another's style.

Minimise content_weight * (relative feature error at the content layer) + style_weight * (weighted relative
Gram-matrix error at the style layers) + tv_weight * TV, by L-BFGS or Adam, starting from the content photo or
noise. Losses are relative (divided by the target's own energy), so the same weights work on the Caffe VGG19
(BGR, 0..255 inputs, large activations) and torchvision's VGG16, and L-BFGS does not stall on large raw values.
Several style images blend by mixing their Gram targets; colour can be preserved (luminance-only transfer or a
colour-matched style image, Gatys et al. 2017).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ...errors import BadInput
from ...registry import LAYER, LAYERS, SEED, Observer, param, register
from ...result import Result
from . import _opt

if TYPE_CHECKING:
    from ...backbone import Backbone


@functools.lru_cache(maxsize=1)
def _style_presets() -> tuple[str, ...]:
    """The style names `style` accepts besides image files: the procedural styles and the packaged sample photos
    (listed once per process: installed packages do not change under a running server)."""
    from ...images import sample_images

    return (*_opt.PROCEDURAL_STYLES, *sample_images())


@dataclass
class StyleTransferParams:
    """Parameters of style_transfer: style image(s), loss weights, layers, optimiser, size, colour."""

    style: str = param(
        "strokes",
        "style image: procedural (mosaic, strokes), a sample photo name, or a file path; comma-separate to blend",
        kind="images",
        presets=lambda: _style_presets(),
    )
    style_blend: str = param("", "comma-separated weight per style image (empty = equal)")
    content_weight: float = param(1.0, "weight of the content loss (alpha)", min=0.0, max=1e9)
    style_weight: float = param(1e3, "weight of the style loss (beta)", min=0.0, max=1e12)
    tv_weight: float = param(0.0, "weight of a total-variation smoothness prior", min=0.0, max=1e9)
    content_layer: str = LAYER("", "layer for the content loss (empty = relu4_2 on VGG)")
    style_layers: str = LAYERS("", "comma-separated style layers (empty = relu1_1..relu5_1 on VGG)")
    style_layer_weights: str = param("", "comma-separated weight per style layer (empty = equal)")
    optimizer: str = param("lbfgs", "L-BFGS (Gatys) or Adam", choices=("lbfgs", "adam"))
    steps: int = param(100, "optimisation steps (L-BFGS iterations)", min=1, max=10000)
    lr: float = param(0.0, "step size (0 = 1 for L-BFGS, 0.02 for Adam)", min=0.0, max=1e4)
    size: int = param(256, "longer side of the result in pixels", min=16, max=4096)
    style_scale: float = param(
        1.0, "style image size relative to the result's longer side", min=0.05, max=8.0
    )
    preserve_color: str = param(
        "none",
        "keep the content's colours: luminance-only transfer, or colour-match the style image first",
        choices=("none", "luminance", "histogram"),
    )
    init: str = param("content", "start from the content photo or from noise", choices=("content", "noise"))
    seed: int = SEED("noise start")


_RGB2YUV = torch.tensor([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]])


def _yuv(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", _RGB2YUV, x)


def _rgb(y: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB2YUV), y)


def luminance_transfer(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The result's luminance with the content's chrominance (Gatys et al. 2017, colour preservation)."""
    y = _yuv(result)
    c = _yuv(_opt.resize01(content, *result.shape[-2:]))
    return _rgb(torch.cat([y[:, :1], c[:, 1:]], 1)).clamp(0, 1)


def match_colors(style: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """Linearly recolour `style` so its RGB mean and covariance match the content's."""

    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = x[0].reshape(3, -1).double()
        mu = f.mean(1, keepdim=True)
        d = f - mu
        return mu, d @ d.T / d.shape[1] + 1e-5 * torch.eye(3, dtype=torch.float64)

    def sqrtm(a: torch.Tensor, inv: bool = False) -> torch.Tensor:
        w, v = torch.linalg.eigh(a)
        w = w.clamp(min=1e-8).sqrt()
        return v @ torch.diag(1 / w if inv else w) @ v.T

    ms, cs = stats(style)
    mc, cc = stats(content)
    a = sqrtm(cc) @ sqrtm(cs, inv=True)
    f = style[0].reshape(3, -1).double()
    out = (a @ (f - ms) + mc).reshape(style.shape[1:]).float()[None]
    return out.clamp(0, 1)


def resolve_styles(p_style: str) -> list[Image.Image]:
    """Style images named by the `style` parameter (packaged names or paths, comma-separated)."""
    return [_opt.load_style_image(s) for s in _opt.parse_names(p_style, "style")]


def blended_grams(
    net: Backbone,
    styles: Sequence[Image.Image],
    weights: Sequence[float],
    layers: Sequence[str],
    side: int,
    content01: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Gram targets of several style images (longer side `side`), mixed with `weights`; optional colour match."""
    total = sum(weights)
    out: dict[str, torch.Tensor] = {}
    for img, w in zip(styles, weights):
        s01 = _opt.pil_to01(img, side)
        if content01 is not None:
            s01 = match_colors(s01, content01)
        for name, g in _opt.gram_targets(net, s01, layers).items():
            term = (w / total) * g
            out[name] = out[name] + term if name in out else term
    return out


@register(
    "style_transfer",
    "synthesize",
    StyleTransferParams,
    paper="Gatys, Ecker & Bethge 2016, Image Style Transfer Using Convolutional Neural Networks",
    needs_image=True,
    needs_grad=True,
    page="style",
    requires=("vgg_layers",),
)
def run(
    net: Backbone,
    img: Image.Image,
    p: StyleTransferParams,
    obs: Observer,
) -> Result:
    """Gatys style transfer of `img` (content) towards the style image(s); progress is reported per iteration."""
    cw = _opt.non_negative(p.content_weight, "content_weight")
    sw = _opt.non_negative(p.style_weight, "style_weight")
    tw = _opt.non_negative(p.tv_weight, "tv_weight")
    if cw + sw == 0:
        raise BadInput("style_transfer: content_weight and style_weight are both 0; nothing to optimise")
    styles = resolve_styles(p.style)
    blend = _opt.parse_weights(p.style_blend, len(styles), "style_blend")
    content_layer = p.content_layer or _opt.default_content_layer(net)
    style_layers = (
        _opt.parse_names(p.style_layers, "style_layers")
        if p.style_layers.strip()
        else _opt.default_style_layers(net)
    )
    _opt.check_layers(net, [content_layer, *style_layers])
    layer_w = _opt.parse_weights(p.style_layer_weights, len(style_layers), "style_layer_weights")
    c01 = _opt.pil_to01(img, p.size)
    h, w = c01.shape[-2:]
    _opt.check_memory(net, h, w, what="style_transfer")
    side = max(8, round(p.style_scale * p.size))
    _opt.check_memory(net, side, side, what="style_transfer (style image)")
    obs.progress(0.0, "style targets")
    targets = blended_grams(
        net, styles, blend, style_layers, side, c01 if p.preserve_color == "histogram" else None
    )
    with torch.no_grad():
        content_t = _opt.forward(net, c01, [content_layer])[0][content_layer].detach()
    style_obj = _opt.style_objective(targets, layer_w, prefix="style")
    obj = sw * style_obj if sw > 0 else None
    if cw > 0:
        term = cw * _opt.feature_error(content_layer, content_t, f"content({content_layer})")
        obj = term if obj is None else obj + term
    assert obj is not None  # content_weight + style_weight > 0 was checked above
    if tw > 0:
        obj = obj + tw * _opt.tv()
    gen = torch.Generator().manual_seed(p.seed)
    init = (
        c01.clone()
        if p.init == "content"
        else (0.5 + 0.1 * torch.randn(c01.shape, generator=gen)).clamp(0, 1)
    )
    prm = _opt.PixelImage(init, "clamp")
    lr = p.lr or (1.0 if p.optimizer == "lbfgs" else 0.02)
    res = _opt.optimize(
        net,
        obj,
        prm,
        steps=p.steps,
        lr=lr,
        optimizer=p.optimizer,
        seed=p.seed,
        observer=obs,
        what="style_transfer",
    )
    out = res.image
    if p.preserve_color == "luminance":
        out = luminance_transfer(out, c01)
    s_start = _opt.style_distance(net, init, targets, layer_w)
    s_final = _opt.style_distance(net, out, targets, layer_w)
    with torch.no_grad():
        cf = _opt.forward(net, _opt.quantize(out), [content_layer])[0][content_layer]
    meta = {
        "style": p.style,
        "style_blend": blend,
        "content_layer": content_layer,
        "style_layers": style_layers,
        "style_layer_weights": layer_w,
        "optimizer": p.optimizer,
        "lr": lr,
        "size": [w, h],
        "style_loss_start": s_start,
        "style_loss_final": s_final,
        "style_loss_drop": 1.0 - s_final / s_start if s_start > 0 else None,
        "content_rel_error": float((cf - content_t).norm() / (content_t.norm() + 1e-12)),
        "seconds_per_iteration": res.wall_s / max(res.steps, 1),
        "input_convention": f"{net.pre.channels}, scale {net.pre.scale}, mean {list(net.pre.mean)}",
    }
    extras = {
        "style_images": [_opt.to_uint8(_opt.pil_to01(s, side)) for s in styles],
        "content": _opt.to_uint8(c01),
    }
    return _opt.image_result(out, meta, image=img, extras=extras, opt=res)
