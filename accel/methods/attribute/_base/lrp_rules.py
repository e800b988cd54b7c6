"""The LRP rules (Bach et al. 2015; Montavon et al. 2019, "Layer-wise relevance propagation: an overview").

Every rule redistributes the relevance R_k of a linear layer's outputs z_k = sum_j x_j w_jk + b_k onto its inputs,
R_j = sum_k (contribution of j to k) / (total contribution to k) * R_k, each with its own notion of "contribution".
The sums over k are vector-Jacobian products of the layer with a modified weight (`vjp`), so one implementation
serves dense layers, convolutions of any stride, padding and grouping (depthwise included). The formulas, the
stabiliser and the bias handling follow zennit 0.5 term for term, so both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ....errors import BadInput

STABILIZER = 1e-6  # zennit's default: keeps denominators away from zero without changing the numbers


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps * sign(z), with sign(0) = +1: the denominator of every rule, never zero for eps > 0."""
    return z + eps * ((z == 0).to(z) + z.sign())


@dataclass(frozen=True)
class LinearOp:
    """One affine layer as it was called: `F.linear` or `F.conv2d` with its geometry (stride, padding, ...)."""

    kind: str  # "linear" or "conv2d"
    geometry: tuple[Any, ...] = ()  # conv2d: (stride, padding, dilation, groups)

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        """The layer's output for input x, weight w and bias b."""
        if self.kind == "linear":
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, *self.geometry)

    def vjp(self, w: torch.Tensor, like: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """(d op(x; w) / dx)^T s, shaped like the input `like`: the layer run backwards with weight w (the op is
        linear in x, so the product does not depend on x)."""
        with torch.enable_grad():
            leaf = torch.zeros_like(like).requires_grad_(True)
            (g,) = torch.autograd.grad(self(leaf, w, None), leaf, s)
        return g


def _pos(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(min=0)


def _neg(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clamp(max=0)


@dataclass(frozen=True)
class Rule:
    """How one layer redistributes relevance: `propagate(op, x, w, b, z, r, box)` -> relevance of the input x."""

    name: str
    stabilizer: float = STABILIZER

    def propagate(
        self,
        op: LinearOp,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        z: torch.Tensor,
        r: torch.Tensor,
        box: Box,
    ) -> torch.Tensor:
        """Relevance of the inputs x given the layer's output z = op(x, w, b) and the relevance r of the outputs."""
        raise NotImplementedError


@dataclass(frozen=True)
class Box:
    """What the first layer knows about its input: the lowest and highest values the (preprocessed, maybe padded)
    input can take, and a mask of the positions that are real input (0 where padding was added)."""

    low: torch.Tensor | None = None
    high: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon: R_j = x_j sum_k w_jk R_k / (z_k + eps sign z_k); eps -> 0 is LRP-0 (conserves relevance up to
    what the biases absorb)."""

    epsilon: float = 1e-6

    def propagate(
        self,
        op: LinearOp,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        z: torch.Tensor,
        r: torch.Tensor,
        box: Box,
    ) -> torch.Tensor:
        """x * W^T (R / stab(z))."""
        s = r / stabilize(z, self.epsilon)
        return x * op.vjp(w, x, s)


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-alpha-beta: positive contributions (x+ w+, x- w-, b+) get alpha R, negative ones (x+ w-, x- w+, b-)
    beta R, each normalised by its own total; alpha - beta = 1 keeps the total. alpha=1, beta=0 is LRP-z+."""

    alpha: float = 2.0
    beta: float = 1.0

    def propagate(
        self,
        op: LinearOp,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        z: torch.Tensor,
        r: torch.Tensor,
        box: Box,
    ) -> torch.Tensor:
        """alpha * (positive share) - beta * (negative share); the x- terms vanish (and are skipped) when x >= 0."""
        xp, xn, wp, wn = x.clamp(min=0), x.clamp(max=0), w.clamp(min=0), w.clamp(max=0)
        neg = bool((x < 0).any())
        zp = op(xp, wp, _pos(b)) + (op(xn, wn, None) if neg else 0)
        sp = r / stabilize(zp, self.stabilizer)
        out = self.alpha * (xp * op.vjp(wp, x, sp) + (xn * op.vjp(wn, x, sp) if neg else 0))
        if self.beta:
            zn = op(xp, wn, _neg(b)) + (op(xn, wp, None) if neg else 0)
            sn = r / stabilize(zn, self.stabilizer)
            out = out - self.beta * (xp * op.vjp(wn, x, sn) + (xn * op.vjp(wp, x, sn) if neg else 0))
        return out


@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-gamma: weights favour positive contributions, w + gamma w+ (and w + gamma w- for the negative side);
    outputs with z > 0 are explained by the favoured positive terms, z < 0 by the negative ones (zennit's
    generalised gamma, equal to Montavon's for non-negative inputs)."""

    gamma: float = 0.25

    def propagate(
        self,
        op: LinearOp,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        z: torch.Tensor,
        r: torch.Tensor,
        box: Box,
    ) -> torch.Tensor:
        """Positive outputs through (x+, w+gw+) and (x-, w+gw-); negative outputs through the opposite pairs (the
        x- terms vanish, and are skipped, when x >= 0)."""
        g = self.gamma
        xp, xn = x.clamp(min=0), x.clamp(max=0)
        neg = bool((x < 0).any())
        wup, wdn = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
        bup = None if b is None else b + g * b.clamp(min=0)
        bdn = None if b is None else b + g * b.clamp(max=0)
        zup = op(xp, wup, bup) + (op(xn, wdn, None) if neg else 0)
        zdn = op(xp, wdn, bdn) + (op(xn, wup, None) if neg else 0)
        sp = (z > 0).to(r) * r / stabilize(zup, self.stabilizer)
        sn = (z < 0).to(r) * r / stabilize(zdn, self.stabilizer)
        out = xp * (op.vjp(wup, x, sp) + op.vjp(wdn, x, sn))
        if neg:
            out = out + xn * (op.vjp(wdn, x, sp) + op.vjp(wup, x, sn))
        return out


@dataclass(frozen=True)
class ZBox(Rule):
    """LRP-z^B for the first layer of bounded inputs l <= x <= h (Montavon et al. 2017):
    R_j = sum_k (x_j w_jk - l_j w+_jk - h_j w-_jk) / sum_j(...) R_k."""

    def propagate(
        self,
        op: LinearOp,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        z: torch.Tensor,
        r: torch.Tensor,
        box: Box,
    ) -> torch.Tensor:
        """Relevance of x with the box bounds of `box`."""
        if box.low is None or box.high is None:
            raise BadInput(
                "the z-box rule needs the first layer to read the network input (possibly padded) directly; "
                "choose a composite without a box (e.g. epsilon_plus_flat)"
            )
        lo, hi = box.low.to(x).expand_as(x), box.high.to(x).expand_as(x)
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        s = r / stabilize(z - op(lo, wp, _pos(b)) - op(hi, wn, _neg(b)), self.stabilizer)
        return x * op.vjp(w, x, s) - lo * op.vjp(wp, x, s) - hi * op.vjp(wn, x, s)


@dataclass(frozen=True)
class Flat(Rule):
    """LRP-flat: every input in a unit's window gets an equal share, R_j = sum_k R_k / (inputs of k), whatever x and
    w are (used on the first layer, where pixel values say little)."""

    def propagate(
        self,
        op: LinearOp,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        z: torch.Tensor,
        r: torch.Tensor,
        box: Box,
    ) -> torch.Tensor:
        """Shares counted over real input positions only (padding gets none)."""
        ones = torch.ones_like(x) if box.mask is None else box.mask.to(x).expand_as(x)
        w1 = torch.ones_like(w)
        s = r / stabilize(op(ones, w1, None), self.stabilizer)
        return ones * op.vjp(w1, x, s)


def norm_rule(
    f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, r: torch.Tensor, eps: float = STABILIZER
) -> torch.Tensor:
    """The parameter-free z-rule of a linear map f without weights (average pooling, a sum of branches):
    R_x = x * (df/dx)^T (R / stab(f(x)))."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        z = f(leaf)
        (g,) = torch.autograd.grad(z, leaf, r / stabilize(z.detach(), eps))
    return x * g


@dataclass(frozen=True)
class Composite:
    """Which rule each layer gets: `conv` for convolutions, `linear` for dense layers, and `first` (if any) for the
    first layer the input meets (`first_kinds`: which layer kinds count as that first layer)."""

    name: str
    help: str
    conv: Rule
    linear: Rule
    first: Rule | None = None
    first_kinds: tuple[str, ...] = field(default=("conv2d",))


def make_composite(name: str, epsilon: float, gamma: float) -> Composite:
    """The named composite with the Epsilon rule's epsilon and the Gamma rule's gamma (zennit's composites of
    the same names: dense layers always take LRP-epsilon)."""
    eps = Epsilon("epsilon", epsilon=epsilon)
    zplus = AlphaBeta("z+", alpha=1.0, beta=0.0)
    ab21 = AlphaBeta("alpha2-beta1", alpha=2.0, beta=1.0)
    flat = Flat("flat")
    both = ("conv2d", "linear")
    table = {
        "epsilon": Composite(name, "LRP-epsilon everywhere", eps, eps),
        "epsilon_plus": Composite(name, "z+ (alpha1-beta0) on convolutions", zplus, eps),
        "epsilon_plus_flat": Composite(name, "flat first layer, z+ on convolutions", zplus, eps, flat, both),
        "epsilon_alpha2_beta1": Composite(name, "alpha2-beta1 on convolutions", ab21, eps),
        "epsilon_alpha2_beta1_flat": Composite(name, "flat first layer, alpha2-beta1", ab21, eps, flat, both),
        "epsilon_gamma_box": Composite(
            name, "z-box first conv, gamma on convolutions", Gamma("gamma", gamma=gamma), eps, ZBox("z-box")
        ),
    }
    if name not in table:
        raise BadInput(f"unknown LRP composite {name!r}; use one of {', '.join(COMPOSITES)}")
    return table[name]


COMPOSITES = (
    "epsilon_gamma_box",
    "epsilon_plus_flat",
    "epsilon_plus",
    "epsilon_alpha2_beta1",
    "epsilon_alpha2_beta1_flat",
    "epsilon",
)
