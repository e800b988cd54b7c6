"""SmoothGrad (Smilkov et al. 2017): input gradients averaged over noisy copies of the image, batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ...registry import SEED, TARGET, Observer, param, register
from ...result import Result
from ._base import MapRun, Score, input_gradient, reduce_channels, resolve_target, torch_logits

if TYPE_CHECKING:
    from ...zoo import Backbone

AGGREGATES = ("abs_of_mean", "mean_of_abs", "mean_of_square")


@dataclass
class SmoothGradParams:
    target: int | None = TARGET()
    samples: int = param(25, "number of noisy copies averaged", min=1, max=512)
    noise: float = param(
        0.15,
        "noise standard deviation as a fraction of the input's value range (max - min)",
        min=0.0,
        max=1.0,
    )
    aggregate: str = param(
        "abs_of_mean",
        "abs_of_mean: |mean gradient| (Smilkov et al.); mean_of_abs: mean |gradient|; "
        "mean_of_square: mean gradient^2 (SmoothGrad-Squared)",
        choices=AGGREGATES,
    )
    seed: int = SEED("the noise")
    internal_batch: int = param(
        4, "noisy copies per forward/backward pass (small batches are fastest on CPU)", min=1, max=256
    )


@register(
    "smoothgrad",
    "attribute",
    SmoothGradParams,
    paper="Smilkov et al. 2017, SmoothGrad: removing noise by adding noise",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: SmoothGradParams, obs: Observer) -> Result:
    """Average gradients over `samples` Gaussian-perturbed inputs; max over channels of the aggregate."""
    run = MapRun(net, img, "smoothgrad", p.target)
    x = run.x
    logits = torch_logits(net, x)
    t = resolve_target(net, p.target, logits, "smoothgrad")
    sigma = p.noise * float(x.max() - x.min())
    gen = torch.Generator().manual_seed(int(p.seed))
    noise = torch.randn((p.samples, *x.shape[1:]), generator=gen) * sigma
    acc = torch.zeros(x.shape[1:], dtype=torch.float64)
    score = Score({t: 1.0})
    passes = 1
    for i in range(0, p.samples, p.internal_batch):
        xb = x + noise[i : i + p.internal_batch]
        g, _, _ = input_gradient(net, xb, score)
        g = g.double()
        if p.aggregate == "abs_of_mean":
            acc += g.sum(0)
        elif p.aggregate == "mean_of_abs":
            acc += g.abs().sum(0)
        else:
            acc += (g * g).sum(0)
        passes += 1
        done = min(p.samples, i + p.internal_batch)
        obs.progress(done / p.samples, f"smoothgrad {done}/{p.samples} samples")
    mean = (acc / p.samples).float().numpy()
    data = reduce_channels(np.abs(mean) if p.aggregate == "abs_of_mean" else mean, "max")
    return run.result(
        data,
        t,
        logits,
        passes=passes,
        extras={"gradient": mean},
        sigma=sigma,
        samples=p.samples,
        seed=p.seed,
    )
