"""DeepDream: amplify whatever a chosen layer already sees in a photo (Mordvintsev et al. 2015).

Gradient ascent on the mean squared activation of one layer, with gradient-normalised steps, random jitter, and
octaves: the image is dreamed at small scales first and the added detail is carried up to larger ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image

from ...errors import BadInput
from ...registry import LAYER, SEED, Observer, param, register
from ...result import Result
from . import _opt

if TYPE_CHECKING:
    from ...backbone import Backbone


@dataclass
class DeepDreamParams:
    """Parameters of deepdream: layer, octaves, steps and jitter."""

    layer: str = LAYER("", "layer whose activations are amplified (empty = one about 60% of the way in)")
    octaves: int = param(4, "number of scales, smallest first", min=1, max=10)
    octave_scale: float = param(1.4, "size ratio between successive octaves", min=1.0, max=3.0)
    steps: int = param(10, "gradient steps per octave", min=1, max=1000)
    lr: float = param(
        0.01, "step size in 0..1 pixel units per step (the gradient is normalised)", min=1e-6, max=10.0
    )
    jitter: int = param(16, "random shift in pixels before each step", min=0, max=128)
    size: int = param(
        384, "longer side of the dreamed image in pixels (0 = the photo's own size)", min=0, max=4096
    )
    seed: int = SEED("jitter")


def default_layer(net: Backbone) -> str:
    """A spatial layer about 60% of the way through the network (mid-level parts and textures)."""
    spatial = [li.name for li in net.conv_layers() if li.out_shape[1] > 1]
    convs = [n for n in spatial if n.count(".") <= 1] or spatial
    if not convs:
        raise BadInput(f"{net.name!r} has no spatial layers to dream with")
    return convs[int(0.6 * (len(convs) - 1))]


def _normalise_grad(prm: _opt.ImageParam) -> None:
    for q in prm.parameters():
        if q.grad is not None:
            q.grad.div_(q.grad.abs().mean() + 1e-12)


@register(
    "deepdream",
    "synthesize",
    DeepDreamParams,
    paper="Mordvintsev, Olah & Tyka 2015, Inceptionism: Going Deeper into Neural Networks",
    needs_image=True,
    needs_grad=True,
)
def run(
    net: Backbone,
    img: Image.Image,
    p: DeepDreamParams,
    obs: Observer,
) -> Result:
    """Amplify a layer's activations (L2) on the user's photo, octave by octave with jitter."""
    layer = p.layer or default_layer(net)
    li = net.layer(layer)
    if len(li.out_shape) != 3:
        raise BadInput(f"deepdream needs a spatial layer; {layer!r} has output shape {li.out_shape}")
    base = _opt.pil_to01(img, p.size or None)
    h, w = base.shape[-2:]
    _opt.check_memory(net, h, w, what="deepdream")
    sizes = [
        (max(16, round(h / p.octave_scale**k)), max(16, round(w / p.octave_scale**k)))
        for k in range(p.octaves - 1, -1, -1)
    ]
    obj = -_opt.layer_l2(layer)
    detail = torch.zeros(1, 3, *sizes[0])
    history: list[float] = []
    stopped = None
    with torch.no_grad():
        start = float(_opt.forward(net, base, [layer])[0][layer].pow(2).mean())
    for k, (oh, ow) in enumerate(sizes):
        octave_base = _opt.resize01(base, oh, ow)
        detail = _opt.resize01(detail, oh, ow)
        prm = _opt.PixelImage((octave_base + detail).clamp(0, 1), "clamp")
        res = _opt.optimize(
            net,
            obj,
            prm,
            steps=p.steps,
            lr=p.lr,
            optimizer="sgd",
            transform=_opt.jitter(min(p.jitter, oh // 4, ow // 4)) if p.jitter else None,
            seed=p.seed + k,
            progress_span=(k / len(sizes), (k + 1) / len(sizes)),
            observer=obs,
            grad_hook=_normalise_grad,
            what="deepdream",
        )
        history += res.loss_history
        detail = res.image - octave_base
        if res.stopped:
            stopped = f"octave {k + 1}/{len(sizes)}: {res.stopped}"
            if res.stopped.startswith("cancelled"):
                break
    final = (_opt.resize01(base, h, w) + _opt.resize01(detail, h, w)).clamp(0, 1)
    with torch.no_grad():
        end = float(_opt.forward(net, _opt.quantize(final), [layer])[0][layer].pow(2).mean())
    meta = {
        "layer": layer,
        "octave_sizes": sizes,
        "activation_l2_start": start,
        "activation_l2_final": end,
        "gain": end / max(start, 1e-12),
        "loss_history": history,
        "steps_run": len(history),
        "stopped": stopped,
    }
    extras = {"difference": _opt.amplified_difference(_opt.resize01(base, h, w), final)}
    return _opt.image_result(final, meta, image=img, extras=extras, losses=_opt.records(history))
