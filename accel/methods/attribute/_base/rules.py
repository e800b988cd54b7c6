"""Modified backward rules for rectifiers: guided backprop (Springenberg et al.) and deconvnet (Zeiler & Fergus).

Inside `rectifier_rule(rule)` every ReLU/ReLU6 a forward pass reaches (modules, functional and in-place forms,
hardtanh(0, 6)) goes through an autograd function whose backward applies the rule, without editing the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ....errors import BadInput


class _Rectify(torch.autograd.Function):
    """clamp(x, lo, hi) forward; backward by a modified rule (guided backprop or deconvnet)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: float, hi: float, rule: str) -> torch.Tensor:
        ctx.rule = rule
        # Same open interval as autograd's relu/hardtanh backward; stored as a fresh tensor so that an
        # in-place caller may overwrite x afterwards.
        ctx.mask = (x > lo) & (x < hi) if math.isfinite(hi) else x > lo
        return x.clamp(min=lo) if not math.isfinite(hi) else x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        if ctx.rule == "guided":  # Springenberg et al.: only positive gradient through active units
            gi = g.clamp(min=0) * ctx.mask
        elif (
            ctx.rule == "deconvnet"
        ):  # Zeiler & Fergus: rectify the signal going back, ignore the forward mask
            gi = g.clamp(min=0)
        else:
            gi = g * ctx.mask
        return gi, None, None, None


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    """Argument `i` (or keyword `name`) of an intercepted call, else `default`."""
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _relu_spec(inplace_always: bool) -> Callable[[Sequence[Any], dict[str, Any]], tuple[float, float, bool]]:
    """(lo, hi, inplace) of a relu call: 0, infinity, and whether it writes in place."""

    def spec(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[float, float, bool]:
        return 0.0, math.inf, inplace_always or bool(_arg(args, kwargs, 1, "inplace", False))

    return spec


def _relu6_spec(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[float, float, bool]:
    """(lo, hi, inplace) of a relu6 call: 0, 6."""
    return 0.0, 6.0, bool(_arg(args, kwargs, 1, "inplace", False))


def _hardtanh_spec(
    inplace_always: bool,
) -> Callable[[Sequence[Any], dict[str, Any]], tuple[float, float, bool]]:
    """(lo, hi, inplace) of a hardtanh call (nn.ReLU6 reaches torch as hardtanh(0, 6))."""

    def spec(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[float, float, bool]:
        lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
        hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
        return lo, hi, inplace_always or bool(_arg(args, kwargs, 3, "inplace", False))

    return spec


# Every way a rectifier reaches torch: nn.ReLU -> F.relu, nn.ReLU6 -> F.hardtanh(0, 6), functional and method forms.
_RECTIFIERS: dict[Any, Callable[[Sequence[Any], dict[str, Any]], tuple[float, float, bool]]] = {
    F.relu: _relu_spec(False),
    F.relu_: _relu_spec(True),
    torch.relu: _relu_spec(False),
    torch.relu_: _relu_spec(True),
    torch.Tensor.relu: _relu_spec(False),
    torch.Tensor.relu_: _relu_spec(True),
    F.relu6: _relu6_spec,
    F.hardtanh: _hardtanh_spec(False),
    F.hardtanh_: _hardtanh_spec(True),
}


class RectifierMode(TorchFunctionMode):
    """Intercepts every rectifier call during a forward pass and routes it through `_Rectify` with a rule."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        spec = _RECTIFIERS.get(func)
        if spec is not None and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            lo, hi, inplace = spec(args, kwargs)
            if lo == 0.0 and x.requires_grad:  # hardtanh(-1, 1) and friends are not rectifiers: leave them
                self.count += 1
                y = _Rectify.apply(x, lo, hi, self.rule)
                if inplace and not x.is_leaf:
                    x.copy_(y)  # keep in-place semantics; the gradient flows through y, not the old x
                    return x
                return y
        return func(*args, **kwargs)


@contextmanager
def rectifier_rule(rule: str | None) -> Iterator[RectifierMode | None]:
    """Inside the block, ReLU/ReLU6 (modules, functional, in-place) backpropagate by `rule`:
    "guided" (guided backprop), "deconvnet" (Zeiler & Fergus) or None (ordinary gradient)."""
    if rule is None:
        yield None
        return
    if rule not in ("guided", "deconvnet", "gradient"):
        raise BadInput(f"unknown backward rule {rule!r}; use 'guided', 'deconvnet' or 'gradient'")
    mode = RectifierMode(rule)
    with mode:
        yield mode
