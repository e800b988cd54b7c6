"""Integrated Gradients (Sundararajan et al. 2017): path integral of gradients from a baseline, steps batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ...errors import BadInput
from ...registry import SEED, TARGET, Observer, param, register
from ...result import Result
from ._base import REDUCTIONS, MapRun, Score, input_gradient, make_baseline, reduce_channels, resolve_target

if TYPE_CHECKING:
    from ...zoo import Backbone

METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def path_points(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation coefficients alpha in [0,1] and quadrature weights (summing to 1) for `steps` points."""
    n = int(steps)
    if n < 1:
        raise BadInput(f"integrated_gradients needs steps >= 1, got {n}")
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * w

    # Riemann points come from float32 torch.linspace, as in Captum: a 1-ulp different alpha can flip a ReLU6
    # kink and change a pixel's gradient by a few percent, which would hide real disagreements in the oracle test.
    def lin(a: float, b: float) -> np.ndarray:
        return torch.linspace(a, b, n, dtype=torch.float32).double().numpy()

    if method == "riemann_trapezoid":
        if n < 2:
            raise BadInput("integrated_gradients: riemann_trapezoid needs steps >= 2")
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
        return lin(0.0, 1.0), w
    w = np.full(n, 1.0 / n)
    if method == "riemann_left":
        return lin(0.0, 1.0 - 1.0 / n), w
    if method == "riemann_right":
        return lin(1.0 / n, 1.0), w
    if method == "riemann_middle":
        return lin(0.5 / n, 1.0 - 0.5 / n), w
    raise BadInput(f"unknown integration method {method!r}; use one of {list(METHODS)}")


@dataclass
class IntegratedGradientsParams:
    target: int | None = TARGET()
    steps: int = param(32, "points on the path from baseline to image", min=1, max=1024)
    method: str = param("gausslegendre", "quadrature rule along the path", choices=METHODS)
    baseline: str = param(
        "zero",
        "reference input: zero (network-input origin, the dataset mean colour), black, blur, or uniform noise",
        choices=("zero", "black", "blur", "uniform"),
    )
    blur_sigma: float = param(10.0, "Gaussian sigma in pixels for the blur baseline", min=0.1, max=200.0)
    seed: int = SEED("the uniform-noise baseline")
    internal_batch: int = param(
        4, "path points per forward/backward pass (small batches are fastest on CPU)", min=1, max=256
    )
    reduce: str = param("sum", "channel reduction of the (C,H,W) attribution", choices=REDUCTIONS)


@register(
    "integrated_gradients",
    "attribute",
    IntegratedGradientsParams,
    paper="Sundararajan, Taly & Yan 2017, Axiomatic Attribution for Deep Networks",
    needs_grad=True,
    featured=True,
)
def run(net: Backbone, img: Image.Image, p: IntegratedGradientsParams, obs: Observer) -> Result:
    """(x - x') * sum_k w_k grad f(x' + a_k (x - x')), reduced over channels; meta has the completeness gap."""
    run = MapRun(net, img, "integrated_gradients", p.target)
    alphas, weights = path_points(p.steps, p.method)
    x = run.x
    base = torch.from_numpy(make_baseline(net, x, p.baseline, p.blur_sigma, p.seed))[None]
    with torch.no_grad():
        ends = net.require_module("integrated_gradients")(torch.cat([x, base])).float().numpy()
    logits = ends[:1]
    t = resolve_target(net, p.target, logits, "integrated_gradients")
    score = Score({t: 1.0})
    diff = x - base
    total = torch.zeros(x.shape[1:], dtype=torch.float64)
    passes = 1
    for i in range(0, p.steps, p.internal_batch):
        a = torch.tensor(alphas[i : i + p.internal_batch], dtype=torch.float32).view(-1, 1, 1, 1)
        w = torch.tensor(weights[i : i + p.internal_batch], dtype=torch.float64).view(-1, 1, 1, 1)
        g, _, _ = input_gradient(net, base + a * diff, score)
        total += (g.double() * w).sum(0)
        passes += 1
        done = min(p.steps, i + p.internal_batch)
        obs.progress(done / p.steps, f"integrated gradients {done}/{p.steps} steps")
    attr = (diff[0].double() * total).float().numpy()
    gap = float(attr.astype(np.float64).sum() - (ends[0, t] - ends[1, t]))
    return run.result(
        reduce_channels(attr, p.reduce),
        t,
        logits,
        passes=passes,
        extras={"attribution": attr, "baseline": base[0].numpy()},
        baseline_score=float(ends[1, t]),
        completeness_gap=gap,
        steps=p.steps,
        integration=p.method,
    )
