"""Fooling images: a targeted, imperceptible perturbation that makes the network call class A class B.

Targeted projected gradient descent (Madry et al. 2018; Kurakin et al. 2017) under an L-infinity budget
`epsilon` in 0..1 pixel units, with FGSM (Goodfellow et al. 2015) as the one-step case. The network sees the
8-bit-quantised image at every step (straight-through), so the saved PNG fools it as well. The result keeps the
saliency and Grad-CAM maps before and after, to show how the explanation moves when the label flips.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import BadInput
from ...registry import SEED, TARGET, Observer, param, register
from ...result import LossRecord, Result
from . import _opt

if TYPE_CHECKING:
    from ...backbone import Backbone


@dataclass
class FoolingParams:
    """Parameters of fooling: target class, L-inf budget, PGD/FGSM settings."""

    target: int = TARGET(
        -1, "class the network should see (-1 = a random class other than its prediction)", min=-1
    )
    epsilon: float = param(
        8 / 255, "L-infinity budget in 0..1 pixel units (8/255 ~ 0.031); must be > 0", min=1e-6, max=1.0
    )
    method: str = param(
        "pgd", "targeted PGD (iterative) or FGSM (one step of size epsilon)", choices=("pgd", "fgsm")
    )
    steps: int = param(100, "maximum PGD steps (FGSM always takes one)", min=1, max=10000)
    alpha: float = param(0.0, "PGD step size in 0..1 pixel units (0 = epsilon / 8)", min=0.0, max=1.0)
    confidence: float = param(
        0.9, "stop once the target's probability on the 8-bit image reaches this", min=0.0, max=1.0
    )
    random_start: bool = param(False, "start from a random point inside the budget")
    amplify: float = param(
        0.0, "gain for the difference image (0 = the largest change fills the range)", min=0.0, max=1e4
    )
    seed: int = SEED("random target, random start")


def input_saliency(net: Backbone, x01: torch.Tensor, cls: int) -> np.ndarray:
    """Plain input-gradient saliency (Simonyan et al. 2014): max over channels of |d logit_cls / d pixel|, HxW."""
    x = x01.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net.require_module("saliency")(net.normalize(x))[0, cls], x)
    return g[0].abs().amax(0).numpy().astype(np.float32)


def grad_cam(net: Backbone, x01: torch.Tensor, cls: int) -> np.ndarray | None:
    """Grad-CAM (Selvaraju et al. 2017) at the backbone's CAM layer, upsampled to the input size; None without one."""
    if not net.cam_layer:
        return None
    from ...taps import capture

    x = x01.detach().clone().requires_grad_(True)
    mod = net.require_module("grad-cam")
    with capture(mod, [net.cam_layer]) as st:
        out = mod(net.normalize(x))
    a = st[net.cam_layer]
    (g,) = torch.autograd.grad(out[0, cls], a)
    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x01.shape[-2:], mode="bilinear", align_corners=False)
    return cam[0, 0].detach().numpy().astype(np.float32)


def _corr(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _ste_quantize(x: torch.Tensor) -> torch.Tensor:
    """Forward: the 8-bit image; backward: identity (straight-through)."""
    return x + (_opt.quantize(x) - x).detach()


def _pick_target(net: Backbone, p: FoolingParams, n: int, pred0: int) -> int:
    """The class to fool towards: `p.target`, or (-1) a seeded random class other than the prediction."""
    if p.target == -1:
        target = int(np.random.default_rng(p.seed).integers(n - 1))
        return target + int(target >= pred0)
    checked = net.check_target(p.target)
    if checked is None:
        raise BadInput("fooling: give a target class index (or -1 for a random one)")
    return checked


def _attack(
    net: Backbone,
    x0: torch.Tensor,
    target: int,
    p: FoolingParams,
    alpha: float,
    obs: Observer,
) -> tuple[torch.Tensor, list[float], list[float], int, str | None]:
    """Signed-gradient steps towards `target` inside the L-inf ball around `x0`, the network seeing 8-bit images.

    Returns (image, loss per evaluation, target probability per evaluation, steps taken, why it stopped early)."""
    module = net.require_module("fooling")
    eps = float(p.epsilon)
    steps = 1 if p.method == "fgsm" else p.steps
    x = x0.clone()
    if p.random_start and p.method == "pgd":
        g = torch.Generator().manual_seed(p.seed)
        x = (x0 + (torch.rand(x0.shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    history: list[float] = []
    probs: list[float] = []
    taken, stopped = 0, None
    for k in range(steps + 1):
        xv = x.detach().requires_grad_(True)
        logits = module(net.normalize(_ste_quantize(xv)))
        pt = float(logits.detach().softmax(-1)[0, target])
        loss = F.cross_entropy(logits, torch.tensor([target]))
        if not torch.isfinite(loss):
            raise BadInput(
                f"fooling: the loss became {float(loss)} at step {k}; the network output is not finite"
            )
        history.append(float(loss.detach()))
        probs.append(pt)
        obs.loss(LossRecord(len(history), history[-1], {"p_target": float(pt)}))
        if pt >= p.confidence and p.method == "pgd":
            stopped = f"target probability {pt:.3f} >= {p.confidence} after {k} steps"
            break
        if k == steps:
            break
        if obs.should_stop():
            stopped = f"cancelled at step {k}"
            break
        (grad,) = torch.autograd.grad(loss, xv)
        with torch.no_grad():
            x = xv - alpha * grad.sign()
            x = torch.min(torch.max(x, x0 - eps), x0 + eps).clamp(0, 1)
        taken = k + 1
        obs.progress(0.9 * (k + 1) / steps, f"step {k + 1}/{steps}  p(target) {pt:.3f}")
    return x, history, probs, taken, stopped


@register(
    "fooling",
    "synthesize",
    FoolingParams,
    paper="Szegedy et al. 2014; Goodfellow et al. 2015 (FGSM); Kurakin et al. 2017 / Madry et al. 2018 (PGD)",
    needs_image=True,
    needs_grad=True,
)
def run(
    net: Backbone,
    img: Image.Image,
    p: FoolingParams,
    obs: Observer,
) -> Result:
    """Targeted PGD/FGSM under an L-inf budget; reports steps, probabilities, norms and saliency before/after."""
    if not net.has_head:
        raise BadInput(f"fooling needs a classifier; {net.name!r} has no classifier head")
    module = net.require_module("fooling")
    x0 = net.to_tensor01(img)
    with torch.no_grad():
        prob0 = module(net.normalize(x0))[0].softmax(-1)
    n = prob0.numel()
    pred0 = int(prob0.argmax())
    target = _pick_target(net, p, n, pred0)
    if p.epsilon <= 0:
        raise BadInput(
            "fooling: epsilon must be > 0 (it is the L-inf budget in 0..1 pixel units, e.g. 8/255)"
        )
    eps = float(p.epsilon)
    alpha = eps if p.method == "fgsm" else (p.alpha or eps / 8)
    x, history, probs, taken, stopped = _attack(net, x0, target, p, alpha, obs)
    x_adv = _opt.quantize(x.detach())
    with torch.no_grad():
        prob1 = module(net.normalize(x_adv))[0].softmax(-1)
    pred1 = int(prob1.argmax())
    delta = x_adv - x0
    obs.progress(0.95, "saliency before/after")
    sal0, sal1 = input_saliency(net, x0, pred0), input_saliency(net, x_adv, target)
    cam0, cam1 = grad_cam(net, x0, pred0), grad_cam(net, x_adv, target)
    names = net.labels or [str(i) for i in range(n)]
    gain = p.amplify or (0.5 / max(float(delta.abs().max()), 1e-12))
    meta: dict[str, Any] = {
        "method_variant": p.method,
        "original_class": pred0,
        "original_label": names[pred0],
        "original_prob": float(prob0[pred0]),
        "target": target,
        "target_label": names[target],
        "target_prob_start": float(prob0[target]),
        "target_prob": float(prob1[target]),
        "predicted_class": pred1,
        "predicted_label": names[pred1],
        "success": bool(prob1[target] >= p.confidence) if p.method == "pgd" else bool(pred1 == target),
        "steps_run": taken,
        "stopped": stopped,
        "epsilon": eps,
        "alpha": alpha,
        "linf": float(delta.abs().max()),
        "linf_255": round(float(delta.abs().max()) * 255),
        "l2": float(delta.norm()),
        "l2_per_pixel_rms": float(delta.pow(2).mean().sqrt()),
        "amplification": gain,
        "loss_history": history,
        "target_prob_history": probs,
        "saliency_corr": _corr(sal0, sal1),
        "gradcam_corr": _corr(cam0, cam1),
        "quantized": "8-bit: the network saw the rounded image at every step",
    }
    extras: dict[str, Any] = {
        "original": _opt.to_uint8(x0),
        "difference": _opt.amplified_difference(x0, x_adv, gain),
        "saliency_before": sal0,
        "saliency_after": sal1,
    }
    if cam0 is not None and cam1 is not None:
        extras["gradcam_before"], extras["gradcam_after"] = cam0, cam1
    obs.progress(1.0, f"p(target) {meta['target_prob']:.3f}")
    return _opt.image_result(x_adv, meta, image=_opt.to_pil(x0), extras=extras, losses=_opt.records(history))
