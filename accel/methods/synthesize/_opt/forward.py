"""The one forward pass of a synthesis step, and what a run at a given size may cost.

`forward` captures exactly the layers the objectives read and stops after the deepest one unless the logits are
needed; `check_memory` refuses, naming the setting, a size whose activations and gradients would not fit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ....errors import BadInput, ResourceLimit
from ....limits import CAPS, cap_float, check
from ....taps import capture, resolve

if TYPE_CHECKING:
    from ....backbone import Backbone


def memory_budget_bytes() -> int:
    """Memory a synthesis run may plan for: $CONVLENS_SYNTH_MAX_MB (default 8192 MB)."""
    return int(cap_float("synth_mb") * 2**20)


def estimate_bytes(net: Backbone, h: int, w: int, batch: int = 1) -> int:
    """Rough peak memory of one forward+backward at HxW: every layer's activation, kept and its gradient, x1.5."""
    s0 = net.pre.size
    total = 0.0
    for li in net.layers():
        n = int(np.prod(li.out_shape)) if li.out_shape else 0
        total += n * h * w / (s0 * s0) if len(li.out_shape) == 3 else n
    return int(total * 4 * 3 * batch)


def check_memory(net: Backbone, h: int, w: int, batch: int = 1, what: str = "synthesis") -> int:
    """ResourceLimit (naming the knob) when a run at HxW would need more memory than the budget."""
    check("side", max(h, w), f"{what}: the larger side of a {w}x{h} image")  # one side cap: CONVLENS_MAX_SIDE
    need, budget = estimate_bytes(net, h, w, batch), memory_budget_bytes()
    if need > budget:
        raise ResourceLimit(
            f"{what}: {w}x{h} pixels on {net.name} would need about {need / 2**30:.1f} GiB for activations and "
            f"gradients, over the budget of {budget / 2**30:.1f} GiB; use a smaller size, or raise the budget "
            f"with the environment variable {CAPS['synth_mb'].env}=N (megabytes)"
        )
    return need


class _StopForward(Exception):
    """Raised by a hook once the deepest needed layer has run (the rest of the network is skipped)."""


def check_layers(net: Backbone, layers: Iterable[str]) -> None:
    """BadInput for a layer name the network does not have (listing some it does)."""
    for name in layers:
        net.layer(name.partition(":")[0])


# what torch says when a pooling or convolution window is larger than what is left of a tiny input
_TOO_SMALL = (
    "Output size is too small",
    "Kernel size can't be greater",
    "smaller than kernel",
    "input size is too small",
)


def forward(
    net: Backbone, x01: torch.Tensor, taps: Iterable[str], logits: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward pass of a 0..1 RGB batch, capturing `taps`; stops after the deepest tap unless logits are needed."""
    mod = net.require_module("optimising an image")
    taps = sorted(set(taps))
    if logits and not net.has_head:
        raise BadInput(
            f"{net.name!r} has no classifier head, so class scores cannot be optimised; use a layer"
        )
    stop_at = None
    if not logits and taps:
        order = {li.name: i for i, li in enumerate(net.layers())}
        bases = [t.partition(":")[0] for t in taps]
        if all(b in order for b in bases):
            stop_at = max(bases, key=lambda b: order[b])
    with capture(mod, taps) as store:
        handle = None
        if stop_at is not None:

            def stop(_m: nn.Module, _a: tuple, _o: object) -> None:
                raise _StopForward

            handle = resolve(mod, stop_at).register_forward_hook(stop)
        try:
            out = mod(net.normalize(x01))
        except _StopForward:
            out = None
        except RuntimeError as e:
            if not any(m in str(e) for m in _TOO_SMALL):
                raise
            h, w = x01.shape[-2:]
            raise BadInput(
                f"a {w}x{h} image is too small for {net.name} up to {stop_at or 'its output'}: a convolution or "
                f"pooling window no longer fits ({str(e).splitlines()[0][:120]}); use a larger size"
            ) from None
        finally:
            if handle is not None:
                handle.remove()
    return dict(store), (out if logits else None)
