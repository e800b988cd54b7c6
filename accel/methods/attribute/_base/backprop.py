"""Modified backpropagation maps (guided backprop, deconvnet): the input gradient of a class score, or of one
channel or unit of an intermediate layer, with every rectifier's backward replaced by the rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ....errors import BadInput
from ....registry import LAYER, SILENT, TARGET, Observer, param
from ....result import Result
from ....taps import capture
from .gradients import REDUCTIONS, class_gradient, gradient_rgb, input_gradient, reduce_channels
from .results import MapRun

if TYPE_CHECKING:
    from ....backbone import Backbone


@dataclass
class RuleParams:
    """The parameters of a modified-backprop map (guided backprop, deconvnet): a class, or a layer's unit."""

    target: int | None = TARGET(
        help="class index to explain (default: the predicted class unless layer is set)"
    )
    layer: str | None = LAYER(
        help="explain a unit of this layer instead of a class (a name from net.layers())"
    )
    channel: int | None = param(None, "channel of `layer` (default: its most active channel)", min=0)
    row: int | None = param(
        None, "row of a single unit in `layer`'s map (with col; default: the whole channel)", min=0
    )
    col: int | None = param(None, "column of a single unit in `layer`'s map (with row)", min=0)
    reduce: str = param("abs_max", "channel reduction of the (C,H,W) gradient", choices=REDUCTIONS)


def _check_selection(
    method: str, target: int | None, layer: str | None, channel: int | None, row: int | None, col: int | None
) -> None:
    """BadInput for a unit without its layer, a class and a layer at once, or half a (row, col) position."""
    if layer is None and (channel is not None or row is not None or col is not None):
        raise BadInput(f"{method}: channel/row/col select a unit of a layer; give `layer` too")
    if layer is not None and target is not None:
        raise BadInput(f"{method}: give either a class `target` or a `layer` (+ channel), not both")
    if (row is None) != (col is None):
        raise BadInput(f"{method}: a single unit needs both row and col (or neither, for the whole channel)")


def _check_unit(
    net: Backbone, method: str, layer: str, channel: int | None, row: int | None, col: int | None
) -> None:
    """BadInput for a channel or (row, col) position outside the layer's output."""
    shape = net.layer(layer).out_shape
    if len(shape) != 3 and (row is not None):
        raise BadInput(f"{method}: layer {layer!r} has output shape {shape}; row/col need a (C,H,W) map")
    nch = int(shape[0])
    if channel is not None and not 0 <= channel < nch:
        raise BadInput(f"{method}: channel {channel} is out of range for layer {layer!r} (0..{nch - 1})")
    if row is not None and col is not None and not (0 <= row < shape[1] and 0 <= col < shape[2]):
        raise BadInput(
            f"{method}: unit ({row}, {col}) is outside layer {layer!r}'s {shape[1]}x{shape[2]} map"
        )


def most_active_channel(net: Backbone, x: torch.Tensor, layer: str, method: str) -> int:
    """The channel of `layer` with the largest mean activation on input `x` (one forward pass)."""
    mod = net.require_module(method)
    with torch.no_grad(), capture(mod, [layer]) as st:
        mod(x)
    a = st[layer][0]
    return int(a.reshape(a.shape[0], -1).mean(1).argmax()) if a.ndim >= 2 else int(a.argmax())


def _unit_gradient(
    net: Backbone,
    x: torch.Tensor,
    method: str,
    rule: str,
    layer: str,
    channel: int | None,
    row: int | None,
    col: int | None,
) -> tuple[np.ndarray, int, dict[str, Any]]:
    """(gradient (C,H,W), rectifiers overridden, meta) for one channel (summed) or one unit of `layer`."""
    _check_unit(net, method, layer, channel, row, col)
    extra: dict[str, Any] = {}
    if channel is None:
        channel = most_active_channel(net, x, layer, method)
        extra["channel_chosen"] = "most active (mean activation)"
    ch = int(channel)

    def objective(a: torch.Tensor) -> torch.Tensor:
        u = a[:, ch]
        if row is not None and col is not None:
            return u[:, row, col]
        return u.reshape(u.shape[0], -1).sum(1)

    g, _, n = input_gradient(net, x, objective, layer=layer, rule=rule)
    extra.update(layer=layer, channel=ch, unit=None if row is None or col is None else (int(row), int(col)))
    return g[0].numpy(), n, extra


def run_rule(
    net: Backbone, img: Image.Image, method: str, rule: str, p: RuleParams, obs: Observer = SILENT
) -> Result:
    """Guided backprop / deconvnet for a class score, or for a channel (or one unit) of an intermediate layer."""
    _check_selection(method, p.target, p.layer, p.channel, p.row, p.col)
    run = MapRun(net, img)
    t: int | None = None
    logits: np.ndarray | None = None
    extra: dict[str, Any] = {}
    if p.layer is None:
        grad, logits, t, n = class_gradient(net, run.x, p.target, method, rule=rule)
    else:
        grad, n, extra = _unit_gradient(net, run.x, method, rule, p.layer, p.channel, p.row, p.col)
    if n == 0:
        extra["warning"] = f"{net.name} has no ReLU/ReLU6 on this path: the {rule} rule changed nothing"
    obs.progress(1.0, f"{method} done")
    return run.result(
        reduce_channels(grad, p.reduce),
        t,
        logits,
        passes=1,
        extras={"gradient": grad, "rgb": gradient_rgb(grad)},
        rule=rule,
        rectifiers=n,
        reduction=p.reduce,
        **extra,
    )
