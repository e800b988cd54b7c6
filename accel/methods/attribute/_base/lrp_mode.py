"""LRP as a modified backward pass: inside `LRPMode`, the autograd signal that flows back is relevance.

A `TorchFunctionMode` intercepts the calls a forward pass makes, so any architecture works without editing or
hooking the model (and the shared module stays untouched for other users):
- `F.conv2d` / `F.linear` run through `LinearRuleFn`, whose backward applies the composite's rule (`lrp_rules`);
- `F.batch_norm` right after such a layer is canonised: folded into it (w' = w a, b' = (b - mean) a + beta with
  a = gamma / sqrt(var + eps)), so the rule sees the affine map conv+BN as one layer; any other BN passes relevance;
- ReLU and ReLU6 (modules, functional, in place) pass relevance through unchanged (the LRP "pass" rule);
- residual adds a + b of two same-shaped activations split relevance in proportion, R_a = a / (a + b) R;
- average pooling uses the parameter-free z-rule; max pooling, reshapes, padding and concatenation keep their
  gradient (which routes relevance without changing it);
- `F.pad` of the network input carries the z-box bounds and the real-pixel mask to the first layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .lrp_rules import Box, Composite, LinearOp, norm_rule


class LinearRuleFn(torch.autograd.Function):
    """Returns y = op(x, w, b) (computed by the caller); backward: the relevance of x by `rule` (nothing flows to
    w and b)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        how: tuple[Any, ...],
    ) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.z, ctx.w, ctx.b, ctx.how = y.detach().clone(), w.detach(), None if b is None else b.detach(), how
        return (
            ctx.z.clone()
        )  # the caller may overwrite its output in place (ReLU(inplace=True)): keep our own z

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (x,) = ctx.saved_tensors
        op, rule, box = ctx.how
        return rule.propagate(op, x.detach(), ctx.w, ctx.b, ctx.z, r, box), None, None, None, None


class PassFn(torch.autograd.Function):
    """Returns the precomputed output y of an elementwise map of x; relevance passes back to x unchanged."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None]:
        return r, None


class NormFn(torch.autograd.Function):
    """f(x) forward for a parameter-free linear map f (average pooling); backward by the z-rule."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.x, ctx.f = x.detach().clone(), f
        return f(x)

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, None]:
        return norm_rule(ctx.f, ctx.x, r), None


class SumFn(torch.autograd.Function):
    """a + b forward; backward splits the relevance in proportion, R_a = a R / stab(a + b), R_b likewise."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ctx.ab = torch.stack(
            [a.detach(), b.detach()], -1
        )  # a copy: the sum may overwrite a in place (out += x)
        return a + b

    @staticmethod
    def backward(ctx: Any, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rel = norm_rule(lambda t: t.sum(-1), ctx.ab, r)
        return rel[..., 0], rel[..., 1]


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any = None) -> Any:
    """Argument `i` (or keyword `name`) of an intercepted call, else `default`."""
    return args[i] if len(args) > i else kwargs.get(name, default)


# Rectifiers (and their in-place forms) whose relevance passes through: function -> index of its `inplace`
# argument (-1: always in place, None: never).
PASS_THROUGH: dict[Any, int | None] = {
    F.relu: 1,
    F.relu_: -1,
    torch.relu: None,
    torch.relu_: -1,
    torch.Tensor.relu: None,
    torch.Tensor.relu_: -1,
    F.relu6: 1,
    F.hardtanh: 3,
    F.hardtanh_: -1,
}
ADDS = (torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.add_, torch.Tensor.__iadd__)
IN_PLACE_ADDS = (torch.Tensor.add_, torch.Tensor.__iadd__)
POOLS = (F.avg_pool2d, F.adaptive_avg_pool2d)


class LRPMode(TorchFunctionMode):
    """Routes the forward pass of `input` through the rules of `composite` (see the module docstring); counts
    what it touched in `stats` (rules per kind, BN folds, residual sums, passes, pools)."""

    def __init__(self, composite: Composite, input: torch.Tensor, box: Box) -> None:
        super().__init__()
        self.composite = composite
        self.first_done = composite.first is None
        self.boxes: dict[int, tuple[torch.Tensor, Box]] = {id(input): (input, box)}
        # outputs of affine layers that a BatchNorm may fold into: id -> (output, input, w, b, op, rule, box)
        self.pending: dict[int, tuple[Any, ...]] = {}
        self.stats: dict[str, int] = {}

    def count(self, what: str) -> None:
        """One more `what` in the stats."""
        self.stats[what] = self.stats.get(what, 0) + 1

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in (F.conv2d, torch.conv2d):
            return self.affine(LinearOp("conv2d", self.geometry(args, kwargs)), args, kwargs)
        if func is F.linear:
            return self.affine(LinearOp("linear"), args, kwargs)
        if func is F.batch_norm:
            return self.batch_norm(func, args, kwargs)
        if func in PASS_THROUGH and args and isinstance(args[0], torch.Tensor):
            return self.pass_through(func, args, kwargs)
        if func in ADDS and self.is_residual(args, kwargs):
            return self.residual(func, args[0], args[1])
        if func in POOLS and args and isinstance(args[0], torch.Tensor):
            self.count("avg_pool")
            return NormFn.apply(args[0], lambda t: func(t, *args[1:], **kwargs))
        out = func(*args, **kwargs)
        if func is F.pad and args and id(args[0]) in self.boxes:
            self.pad_box(args, kwargs, out)
        return out

    @staticmethod
    def geometry(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """(stride, padding, dilation, groups) of a conv2d call."""
        names = ("stride", "padding", "dilation", "groups")
        defaults = (1, 0, 1, 1)
        return tuple(_arg(args, kwargs, 3 + i, n, d) for i, (n, d) in enumerate(zip(names, defaults)))

    def affine(self, op: LinearOp, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        """A conv or dense layer: the composite's rule for it (the first-layer rule on the first one)."""
        x, w, b = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
        rule, box = (self.composite.conv if op.kind == "conv2d" else self.composite.linear), Box()
        if not self.first_done and op.kind in self.composite.first_kinds and self.composite.first is not None:
            self.first_done = True
            rule = self.composite.first
            box = self.boxes[id(x)][1] if id(x) in self.boxes and self.boxes[id(x)][0] is x else Box()
        self.count(f"{op.kind}:{rule.name}")
        y = LinearRuleFn.apply(x, op(x.detach(), w, b), w, b, (op, rule, box))
        self.pending[id(y)] = (y, x, w, b, op, rule, box)
        return y

    def batch_norm(self, func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        """Fold an eval-mode BatchNorm into the affine layer that produced its input; otherwise pass relevance."""
        x = args[0]
        names = ("running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
        mean, var, gamma, beta, training, _m, eps = (
            _arg(args, kwargs, 1 + i, n, d)
            for i, (n, d) in enumerate(zip(names, (None,) * 4 + (False, 0.1, 1e-5)))
        )
        rec = self.pending.get(id(x))
        if training or mean is None or var is None or rec is None or rec[0] is not x:
            self.count("batch_norm:pass")
            return PassFn.apply(x, func(x.detach(), *args[1:], **kwargs))
        _y, xin, w, b, op, rule, box = rec
        scale = (gamma if gamma is not None else torch.ones_like(var)) / (var + eps) ** 0.5
        shift = beta if beta is not None else torch.zeros_like(var)
        w2 = w * scale.view(-1, *([1] * (w.ndim - 1)))
        b2 = ((b if b is not None else torch.zeros_like(var)) - mean) * scale + shift
        self.count("batch_norm:folded")
        # the folded layer's output is the BatchNorm of the unfolded one: no second convolution needed
        y = LinearRuleFn.apply(xin, func(x.detach(), *args[1:], **kwargs), w2, b2, (op, rule, box))
        self.pending[id(y)] = (y, xin, w2, b2, op, rule, box)
        return y

    def pass_through(self, func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> torch.Tensor:
        """A rectifier: its value, with relevance passed back unchanged (in-place calls stay in place)."""
        x: torch.Tensor = args[0]
        where = PASS_THROUGH[func]
        inplace = where == -1 or (where is not None and bool(_arg(args, kwargs, where, "inplace", False)))
        self.count("rectifier:pass")
        if not x.requires_grad:
            return func(*args, **kwargs)
        kw = {k: v for k, v in kwargs.items() if k != "inplace"}
        plain = {
            F.relu_: F.relu,
            torch.relu_: torch.relu,
            torch.Tensor.relu_: torch.relu,
            F.hardtanh_: F.hardtanh,
        }
        f = plain.get(func, func)
        rest = list(args[1:])
        if where is not None and where > 0 and len(args) > where:
            rest = rest[: where - 1]  # drop a positional inplace flag
        y = PassFn.apply(x, f(x.detach(), *rest, **kw))
        if inplace and not x.is_leaf:
            x.copy_(y)  # keep in-place semantics; relevance flows through y
            return x
        return y

    @staticmethod
    def is_residual(args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
        """A sum of two same-shaped activations in the graph (not a bias, a constant or a scaled add)."""
        if len(args) != 2 or kwargs:
            return False
        a, b = args
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.requires_grad
            and b.requires_grad
            and not isinstance(a, torch.nn.Parameter)
            and not isinstance(b, torch.nn.Parameter)
        )

    def residual(self, func: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a + b with the proportional split; `a += b` stays in place."""
        self.count("sum")
        y = SumFn.apply(a, b)
        if func in IN_PLACE_ADDS:
            a.copy_(y)
            return a
        return y

    def pad_box(self, args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> None:
        """Padding of the network input: pad its bounds alike (zeros in constant mode) and mark the new border."""
        _x, box = self.boxes[id(args[0])]

        def pad(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else F.pad(t.expand_as(args[0]), *args[1:], **kwargs)

        mask = torch.ones_like(args[0]) if box.mask is None else box.mask.expand_as(args[0])
        self.boxes[id(out)] = (
            out,
            Box(pad(box.low), pad(box.high), F.pad(mask, _arg(args, kwargs, 1, "pad"))),
        )
