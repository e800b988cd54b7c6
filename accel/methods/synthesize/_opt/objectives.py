"""Objectives: losses to MINIMISE over one step's context, forming an algebra (Lucent's `objectives`).

Leaves read the image, captured activations or the logits and declare the layers they need, so one forward pass
per step serves every term; they add, subtract, negate and scale: ``-class_score(281) + 1e-4 * l2() + 0.1 * tv()``.
pystiche's losses (content, Gram, total variation) are leaves too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ....errors import BadInput
from .forward import forward
from .render import quantize

if TYPE_CHECKING:
    from ....backbone import Backbone


@dataclass
class Ctx:
    """What objectives see at one step: the image, what the network saw, captured activations and the logits."""

    image: torch.Tensor
    x: torch.Tensor
    net: Backbone
    acts: dict[str, torch.Tensor]
    logits: torch.Tensor | None
    step: int = 0

    def act(self, name: str) -> torch.Tensor:
        """The activation captured at layer `name`."""
        if name not in self.acts:
            raise BadInput(f"layer {name!r} was not captured; objectives must declare the layers they read")
        return self.acts[name]

    def class_logits(self) -> torch.Tensor:
        """The logits (N, classes); BadInput when this step's forward pass did not compute them."""
        if self.logits is None:
            raise BadInput("the logits were not computed; objectives that read them must declare logits=True")
        return self.logits


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrices of (N,C,H,W) features, normalised by H*W (so they do not depend on the image size)."""
    n, c, h, w = f.shape
    x = f.reshape(n, c, h * w)
    return x @ x.transpose(1, 2) / (h * w)


class Objective:
    """A scalar loss over a `Ctx`; objectives add, subtract, negate and scale: ``-class_score(1) + 0.1 * tv()``.

    A leaf wraps a function and declares the layers (`taps`) it reads and whether it needs the logits, so one
    forward pass per step serves every term."""

    def __init__(
        self,
        fn: Callable[[Ctx], torch.Tensor] | None = None,
        name: str = "objective",
        taps: Iterable[str] = (),
        logits: bool = False,
        parts: list[tuple[float, Objective]] | None = None,
        const: float = 0.0,
    ) -> None:
        self.fn = fn
        self.name = name
        self._taps = frozenset(taps)
        self._logits = bool(logits)
        self.parts = parts if parts is not None else [(1.0, self)]
        self.const = float(const)

    # -- structure ---------------------------------------------------------------------------------------------
    @property
    def taps(self) -> frozenset[str]:
        """Every layer any term reads (captured once per step)."""
        out: set[str] = set()
        for _, leaf in self.parts:
            out |= leaf._taps
        return frozenset(out)

    @property
    def needs_logits(self) -> bool:
        """Whether any term reads the logits (else the forward pass may stop after the deepest tap)."""
        return any(leaf._logits for _, leaf in self.parts)

    def __repr__(self) -> str:
        terms = []
        for c, leaf in self.parts:
            terms.append(leaf.name if c == 1.0 else ("-" + leaf.name if c == -1.0 else f"{c:g}*{leaf.name}"))
        if self.const:
            terms.append(f"{self.const:g}")
        return " + ".join(terms).replace("+ -", "- ") or "0"

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, ctx: Ctx) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss (a scalar tensor) and each term's unweighted value."""
        total: torch.Tensor | None = None
        terms: dict[str, float] = {}
        cache: dict[int, torch.Tensor] = {}
        for c, leaf in self.parts:
            if id(leaf) not in cache:
                assert leaf.fn is not None
                v = leaf.fn(ctx)
                if v.ndim:
                    v = v.mean()
                cache[id(leaf)] = v
            v = cache[id(leaf)]
            key = leaf.name
            while key in terms and id(leaf) != id(self._leaf_named(key)):
                key += "'"
            terms[key] = float(v.detach())
            total = c * v if total is None else total + c * v
        if total is None:
            total = torch.zeros(())
        return total + self.const, terms

    def _leaf_named(self, name: str) -> Objective | None:
        """The first term called `name` (to tell apart different terms that share a name)."""
        return next((leaf for _, leaf in self.parts if leaf.name == name), None)

    def __call__(self, ctx: Ctx) -> torch.Tensor:
        """The total loss only."""
        return self.evaluate(ctx)[0]

    # -- algebra -----------------------------------------------------------------------------------------------
    def _combine(self, other: Objective | float, sign: float) -> Objective:
        """self + sign * other, for another objective or a constant."""
        if isinstance(other, Objective):
            return Objective(
                name="sum",
                parts=self.parts + [(sign * c, leaf) for c, leaf in other.parts],
                const=self.const + sign * other.const,
            )
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return Objective(name="sum", parts=list(self.parts), const=self.const + sign * float(other))
        return NotImplemented

    def __add__(self, other: Objective | float) -> Objective:
        return self._combine(other, 1.0)

    def __radd__(self, other: float) -> Objective:
        return self._combine(other, 1.0)

    def __sub__(self, other: Objective | float) -> Objective:
        return self._combine(other, -1.0)

    def __rsub__(self, other: float) -> Objective:
        return (-self)._combine(other, 1.0)

    def __neg__(self) -> Objective:
        return self * -1.0

    def __mul__(self, k: float) -> Objective:
        if isinstance(k, Objective) or not isinstance(k, (int, float)) or isinstance(k, bool):
            return NotImplemented
        if not math.isfinite(k):
            raise BadInput(f"objective weights must be finite numbers, got {k}")
        return Objective(name="sum", parts=[(c * k, leaf) for c, leaf in self.parts], const=self.const * k)

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> Objective:
        if not isinstance(k, (int, float)) or k == 0:
            raise BadInput(f"objectives can only be divided by a non-zero number, got {k!r}")
        return self * (1.0 / k)


def objective(
    fn: Callable[[Ctx], torch.Tensor], name: str, taps: Iterable[str] = (), logits: bool = False
) -> Objective:
    """A custom leaf objective from a function of the context."""
    return Objective(fn, name, taps, logits)


def class_score(c: int) -> Objective:
    """The pre-softmax score (logit) of class `c`, averaged over the batch (negate it to maximise)."""
    return Objective(lambda ctx: ctx.class_logits()[:, c], f"class_score({c})", logits=True)


def channel(layer: str, c: int) -> Objective:
    """The mean activation of channel `c` at `layer` (a feature map)."""
    return Objective(lambda ctx: ctx.act(layer)[:, c], f"channel({layer},{c})", taps=[layer])


def neuron(layer: str, c: int, y: int | None = None, x: int | None = None) -> Objective:
    """One unit: channel `c` at spatial position (y, x) of `layer` (default: the centre)."""

    def fn(ctx: Ctx) -> torch.Tensor:
        a = ctx.act(layer)
        if a.ndim == 2:
            return a[:, c]
        h, w = a.shape[-2:]
        return a[:, c, h // 2 if y is None else y, w // 2 if x is None else x]

    return Objective(fn, f"neuron({layer},{c})", taps=[layer])


def layer_l2(layer: str) -> Objective:
    """Mean squared activation of a layer (DeepDream's objective, to maximise)."""
    return Objective(lambda ctx: ctx.act(layer).pow(2).mean(), f"layer_l2({layer})", taps=[layer])


def l2(center: float = 0.5) -> Objective:
    """Mean squared distance of the image's pixels from `center` (mid grey): an L2 prior / decay."""
    return Objective(lambda ctx: (ctx.image - center).pow(2).mean(), "l2")


def tv(beta: float = 2.0) -> Objective:
    """Total variation of the image: mean of (dx^2 + dy^2)^(beta/2) (Mahendran & Vedaldi's prior)."""

    def fn(ctx: Ctx) -> torch.Tensor:
        x = ctx.image
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        s = dx * dx + dy * dy
        return s.mean() if beta == 2.0 else (s + 1e-8).pow(beta / 2).mean()

    return Objective(fn, "tv")


def feature_error(layer: str, target: torch.Tensor, name: str | None = None) -> Objective:
    """Relative squared feature error ||F(x) - F0||^2 / ||F0||^2 at `layer` (inversion, content loss)."""
    t = target.detach()
    denom = float(t.pow(2).sum()) + 1e-12

    def fn(ctx: Ctx) -> torch.Tensor:
        a = ctx.act(layer)
        if a.shape != t.shape:
            a = F.interpolate(a, size=t.shape[-2:], mode="bilinear", align_corners=False)
        return (a - t).pow(2).sum() / denom

    return Objective(fn, name or f"features({layer})", taps=[layer])


def gram_loss(layer: str, target_gram: torch.Tensor, name: str | None = None) -> Objective:
    """Relative squared Gram-matrix error ||G(x) - G0||^2 / ||G0||^2 at `layer` (texture, style loss)."""
    t = target_gram.detach()
    denom = float(t.pow(2).sum()) + 1e-12
    return Objective(
        lambda ctx: (gram(ctx.act(layer)) - t).pow(2).sum() / denom, name or f"gram({layer})", taps=[layer]
    )


def gram_targets(net: Backbone, x01: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Gram matrices of an image (1,3,H,W 0..1) at `layers`, as fixed targets."""
    with torch.no_grad():
        acts, _ = forward(net, x01, layers)
    return {name: gram(acts[name]).detach() for name in layers}


def style_objective(
    targets: dict[str, torch.Tensor], weights: Sequence[float] | None = None, prefix: str = "gram"
) -> Objective:
    """Weighted mean of the relative Gram losses over layers (weights normalised to sum 1)."""
    names = list(targets)
    ws = list(weights) if weights is not None else [1.0] * len(names)
    total = sum(ws)
    out: Objective | None = None
    for name, w in zip(names, ws):
        if w <= 0:
            continue
        term = (w / total) * gram_loss(name, targets[name], f"{prefix}({name})")
        out = term if out is None else out + term
    if out is None:
        raise BadInput("at least one style layer needs a positive weight")
    return out


def style_distance(
    net: Backbone, x01: torch.Tensor, targets: dict[str, torch.Tensor], weights: Sequence[float] | None = None
) -> float:
    """The style (Gram) loss of an image against targets, evaluated on its 8-bit version (for reporting)."""
    obj = style_objective(targets, weights)
    with torch.no_grad():
        x = quantize(x01)
        acts, _ = forward(net, x, obj.taps)
        return float(obj(Ctx(x, x, net, acts, None)))
