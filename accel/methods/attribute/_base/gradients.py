"""Input gradients of a score (plain or by a rectifier rule) and how they become a map or a picture.

Gradient work runs on `net.module` with torch autograd; maps are float32 HxW at the preprocessed input size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ....errors import BadInput
from ....taps import capture
from .rules import rectifier_rule
from .targets import require_head, resolve_target

if TYPE_CHECKING:
    from ....backbone import Backbone

REDUCTIONS = ("abs_max", "max", "sum", "abs_sum", "l2")


def input_gradient(
    net: Backbone,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    layer: str | None = None,
    rule: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """d objective / d input for a batch x. The objective sees the logits, or the output of `layer` when given.

    Returns (gradient like x, the objective's input detached, rectifiers overridden by `rule`).
    """
    mod = net.require_module("gradient attribution")
    xg = x.detach().clone().float().requires_grad_(True)
    with rectifier_rule(rule) as mode, capture(mod, [layer] if layer else []) as store:
        out = mod(xg)
        src = store[layer] if layer else out
        score = objective(src)
    (g,) = torch.autograd.grad(score.sum(), xg)
    return g.detach(), src.detach(), (mode.count if mode is not None else 0)


def class_gradient(
    net: Backbone, x: torch.Tensor, target: int | None, method: str, rule: str | None = None
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One forward/backward: d logit[target] / d input for one image, the target defaulting to the prediction.

    Returns (gradient (C,H,W), logits (1, classes), resolved target, rectifiers overridden by `rule`).
    """
    require_head(net, method)
    net.check_target(target)
    mod = net.require_module(method)
    xg = x.detach().clone().float().requires_grad_(True)
    with rectifier_rule(rule) as mode:
        out = mod(xg)
    logits = out.detach().float().numpy()
    t = resolve_target(net, target, logits, method)
    (g,) = torch.autograd.grad(out[:, t].sum(), xg)
    return g[0].detach().numpy(), logits, t, (mode.count if mode is not None else 0)


def reduce_channels(a: np.ndarray, how: str) -> np.ndarray:
    """(C,H,W) attribution -> HxW map: abs_max (Simonyan), max, sum (signed), abs_sum, or l2 norm over channels."""
    if how == "abs_max":
        m = np.abs(a).max(0)
    elif how == "max":
        m = a.max(0)
    elif how == "sum":
        m = a.sum(0)
    elif how == "abs_sum":
        m = np.abs(a).sum(0)
    elif how == "l2":
        m = np.sqrt((a.astype(np.float64) ** 2).sum(0))
    else:
        raise BadInput(f"unknown channel reduction {how!r}; use one of {list(REDUCTIONS)}")
    return np.ascontiguousarray(m, dtype=np.float32)


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(N,h,w) maps -> (N,H,W) by bilinear interpolation with half-pixel centres (like cv2.INTER_LINEAR)."""
    hw = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == hw:
        return maps
    return F.interpolate(maps[:, None].float(), size=hw, mode="bilinear", align_corners=False)[:, 0]


def gradient_rgb(g: np.ndarray) -> Image.Image:
    """A (C,H,W) gradient rendered as an RGB image centred on grey (the usual guided-backprop picture)."""
    a = g if g.shape[0] == 3 else np.repeat(g[:1], 3, 0)
    a = a - a.mean()
    s = float(a.std()) or 1.0
    a = np.clip(0.5 + 0.15 * a / s, 0.0, 1.0)
    return Image.fromarray((a.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))
