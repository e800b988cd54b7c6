"""Class visualisation: gradient ascent on a class score (or a channel / neuron) from a blank image.

Simonyan et al. 2014 maximise the pre-softmax score with L2 regularisation; Yosinski et al. 2015 add decay,
Gaussian blur every few steps, jitter and clipping of small pixel values and small gradient contributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ...errors import BadInput
from ...registry import LAYER, SEED, TARGET, Observer, param, register
from ...result import Result
from . import _opt

if TYPE_CHECKING:
    from ...backbone import Backbone


@dataclass
class ClassVizParams:
    """Parameters of class_viz (declared once; the CLI and dashboard controls are generated from them)."""

    target: int = TARGET(130, "ImageNet class index whose pre-softmax score is maximised (130 = flamingo)")
    layer: str = LAYER("", "optional layer name: visualise a channel/neuron there instead of a class score")
    channel: int = param(0, "channel index at `layer` (used only with a layer)", min=0)
    unit: str = param(
        "channel",
        "with a layer: the whole channel's mean, or its centre neuron",
        choices=("channel", "neuron"),
    )
    steps: int = param(150, "optimisation steps", min=1, max=5000)
    lr: float = param(
        0.05, "Adam step size (pixel units for 'pixel', spectrum units for 'fourier')", min=1e-6, max=1e4
    )
    parameterization: str = param(
        "pixel",
        "image parameterisation: raw pixels or a decorrelated Fourier spectrum",
        choices=("pixel", "fourier"),
    )
    init: str = param(
        "zeros",
        "start image: mid grey ('zeros' of the centred image) or grey plus noise",
        choices=("zeros", "noise"),
    )
    l2_decay: float = param(
        0.001, "per-step decay of pixels towards grey (Yosinski's L2 decay); 0 = off", min=0.0, max=0.5
    )
    blur_every: int = param(4, "blur the image every N steps (0 = never)", min=0, max=1000)
    blur_sigma: float = param(0.5, "Gaussian blur radius (pixels) for the periodic blur", min=0.0, max=10.0)
    jitter: int = param(
        8, "random shift (pixels) applied each step before the network sees the image", min=0, max=64
    )
    clip_pixels: float = param(
        0.0,
        "percentile of pixels with the smallest norm reset to grey each step (0 = off)",
        min=0.0,
        max=99.0,
    )
    clip_grads: float = param(
        0.0,
        "percentile of pixels with the smallest gradient contribution left unchanged (0 = off)",
        min=0.0,
        max=99.0,
    )
    size: int = param(0, "image side in pixels (0 = the network's input size)", min=0, max=4096)
    stop_prob: float = param(
        0.0,
        "stop early once the target's softmax probability reaches this (0 = run all steps)",
        min=0.0,
        max=1.0,
    )
    seed: int = SEED("noise start, jitter")


def _objective(net: Backbone, p: ClassVizParams) -> tuple[_opt.Objective, str]:
    if p.layer:
        li = net.layer(p.layer)
        nch = li.out_shape[0] if li.out_shape else 0
        if not 0 <= p.channel < nch:
            raise BadInput(f"channel {p.channel} is out of range for layer {p.layer!r} ({nch} channels)")
        if p.unit == "neuron":
            return -_opt.neuron(p.layer, p.channel), f"neuron {p.layer}[{p.channel}] (centre)"
        return -_opt.channel(p.layer, p.channel), f"channel {p.layer}[{p.channel}]"
    net.check_target(p.target)
    label = net.labels[p.target] if net.labels else str(p.target)
    return -_opt.class_score(p.target), f"class {p.target} ({label})"


def _scores(net: Backbone, x01: torch.Tensor, p: ClassVizParams) -> dict[str, float]:
    """Target probability/logit (or unit activation) of an image as saved (uint8-quantised, no jitter)."""
    with torch.no_grad():
        if p.layer:
            acts, _ = _opt.forward(net, _opt.quantize(x01), [p.layer])
            a = acts[p.layer][0, p.channel]
            if p.unit == "neuron" and a.ndim == 2:
                a = a[a.shape[0] // 2, a.shape[1] // 2]
            return {"activation": float(a.mean())}
        logits = net.require_module("class scores")(net.normalize(_opt.quantize(x01)))[0]
        prob = logits.softmax(-1)
        return {"prob": float(prob[p.target]), "logit": float(logits[p.target]), "top1": int(prob.argmax())}


@register(
    "class_viz",
    "synthesize",
    ClassVizParams,
    paper="Simonyan et al. 2014, Deep Inside Convolutional Networks; Yosinski et al. 2015, Understanding Neural "
    "Networks Through Deep Visualization",
    needs_image=False,
    needs_grad=True,
)
def run(
    net: Backbone,
    img: Image.Image | None,
    p: ClassVizParams,
    obs: Observer,
) -> Result:
    """Gradient ascent on a class score (or a channel/neuron) from a blank image, with Yosinski's regularisers."""
    obj, what = _objective(net, p)
    size = p.size or net.pre.size
    if size < 16:
        raise BadInput(f"class_viz: size must be at least 16 pixels, got {size}")
    _opt.check_memory(net, size, size, what="class_viz")
    gen = torch.Generator().manual_seed(p.seed)
    param_ = _opt.make_param(p.parameterization, size, size, gen, noise=0.1 if p.init == "noise" else 0.0)
    start = _scores(net, param_().detach(), p)

    def post_step(prm: _opt.ImageParam, step: int) -> None:
        if not isinstance(prm, _opt.PixelImage):
            return  # the Fourier parameterisation regularises by construction
        x = prm()
        if p.l2_decay > 0:
            x = 0.5 + (x - 0.5) * (1.0 - p.l2_decay)
        if p.blur_every and (step + 1) % p.blur_every == 0 and p.blur_sigma > 0:
            x = _opt.gaussian_blur(x, p.blur_sigma)
        if p.clip_pixels > 0:
            norm = (x - 0.5).pow(2).sum(1, keepdim=True).sqrt()
            x = torch.where(norm < torch.quantile(norm.flatten(), p.clip_pixels / 100), 0.5, x)
        prm.set01(x)

    def grad_hook(prm: _opt.ImageParam) -> None:
        if p.clip_grads <= 0 or not isinstance(prm, _opt.PixelImage) or prm.raw.grad is None:
            return
        contrib = (prm.raw.grad * (prm.raw - 0.5)).sum(1, keepdim=True).abs()
        keep = contrib >= torch.quantile(contrib.flatten(), p.clip_grads / 100)
        prm.raw.grad.mul_(keep)

    def stop_when(step: int, x: torch.Tensor) -> str | None:
        if p.layer or p.stop_prob <= 0 or (step + 1) % 5:
            return None
        prob = _scores(net, x, p)["prob"]
        return (
            f"target probability {prob:.3f} >= {p.stop_prob} at step {step + 1}"
            if prob >= p.stop_prob
            else None
        )

    res = _opt.optimize(
        net,
        obj,
        param_,
        steps=p.steps,
        lr=p.lr,
        transform=_opt.jitter(p.jitter) if p.jitter else None,
        seed=p.seed,
        observer=obs,
        post_step=post_step,
        grad_hook=grad_hook,
        stop_when=stop_when,
        what="class_viz",
    )
    final = _scores(net, res.image, p)
    meta: dict[str, Any] = {"objective": repr(obj), "visualised": what, "size": size}
    for k, v in start.items():
        meta[f"start_{k}"] = v
    for k, v in final.items():
        meta[f"final_{k}"] = v
    if not p.layer:
        meta["target"] = p.target
        meta["target_label"] = net.labels[p.target] if net.labels else str(p.target)
        with torch.no_grad():
            prob = net.require_module("class scores")(net.normalize(_opt.quantize(res.image)))[0].softmax(-1)
        top = prob.topk(5)
        names = net.labels or [str(i) for i in range(prob.numel())]
        meta["top5"] = [(names[i], float(v)) for v, i in zip(top.values.tolist(), top.indices.tolist())]
    return _opt.image_result(res.image, meta, opt=res)


__all__ = ["ClassVizParams", "run"]
