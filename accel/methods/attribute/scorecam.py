"""Score-CAM (Wang et al. 2020): channel weights = the class probability gained by the input masked with each
upsampled, normalised activation map; the masked forward passes are batched through the runner's sweep."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ...registry import BACKEND, LAYER, SILENT, TARGET, Observer, param, register
from ...result import Result
from ...runtime.sweep import Masks
from ._base import CAMBase, Score, run_cam, upsample

if TYPE_CHECKING:
    from ...zoo import Backbone


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class ScoreCAMWeights(CAMBase):
    """w_k = p_c(x * M_k) - p_c(baseline) for the top `max_channels` channels (0 for the rest), where M_k is
    channel k upsampled to the input and min-max scaled to [0, 1]."""

    uses_gradients = False

    def __init__(
        self,
        net: Backbone,
        layer: str | None = None,
        backend: str = "auto",
        max_channels: int = 256,
        batch_size: int | None = None,
        obs: Observer = SILENT,
    ) -> None:
        super().__init__(net, layer, relu=True, backend=backend)
        self.max_channels = max_channels
        self.batch_size = batch_size
        self.obs = obs
        self.used: list[int] = []

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        from ...runtime.runner import runner

        assert self.x is not None
        a = acts[0].float()
        k = a.shape[0]
        lo = a.reshape(k, -1).min(1).values
        hi = a.reshape(k, -1).max(1).values
        live = torch.nonzero(hi > lo).flatten()  # constant channels carry no spatial information
        if len(live) == 0:  # e.g. a 1x1 layer: no channel has a spatial pattern to mask with, the map is 0
            self.used = []
            return torch.zeros(1, k)
        order = live[torch.argsort(a[live].reshape(len(live), -1).mean(1), descending=True, stable=True)]
        chosen = order[: self.max_channels]
        self.used = chosen.tolist()
        w = torch.zeros(1, k)
        if len(chosen) == 0:
            return w
        up = upsample(a[chosen], tuple(self.x.shape[-2:]))
        lo_c, hi_c = lo[chosen].view(-1, 1, 1), hi[chosen].view(-1, 1, 1)
        masks = ((up - lo_c) / (hi_c - lo_c)).clamp(0, 1).numpy()
        r = self.runner or runner(
            self.net, ["logits"], backend=self.requested_backend, batch_size=self.batch_size
        )
        coefs = score.coefs

        def reduce(outs: dict[str, np.ndarray]) -> np.ndarray:
            p = _softmax(outs["logits"])
            out = np.zeros(len(p), dtype=p.dtype)
            for c, v in coefs.items():
                out = out + v * p[:, c]
            return out

        x0 = self.x.numpy()
        probs = r.sweep(
            x0, Masks(masks, baseline=0.0), reduce=reduce, progress=self.obs.span(0.1, 1.0).callback()
        )
        self.passes += r.last_passes  # this thread's passes (pooled runners are shared)
        base = reduce(r.run(np.zeros_like(x0)))
        self.passes += r.last_passes
        self.backend = r.backend
        w[0, chosen] = torch.from_numpy(np.asarray(probs, dtype=np.float64) - float(base[0])).float()
        return w


@dataclass
class ScoreCAMParams:
    target: int | None = TARGET()
    layer: str | None = LAYER()
    max_channels: int = param(
        256, "channels scored (the most active ones; one masked forward pass each)", min=1, max=4096
    )
    backend: str = BACKEND(help="forward-pass engine for the masked inputs")
    batch_size: int | None = param(None, "masked inputs per forward pass (default: from free memory)", min=1)


@register(
    "scorecam",
    "attribute",
    ScoreCAMParams,
    paper="Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural Networks",
    needs_grad=False,
)
def run(net: Backbone, img: Image.Image, p: ScoreCAMParams, obs: Observer) -> Result:
    """ReLU(sum_k w_k A_k) with w_k the probability increase of x masked by channel k (gradient-free)."""
    cam = ScoreCAMWeights(net, p.layer, p.backend, p.max_channels, p.batch_size, obs)
    res = run_cam(cam, net, img, p.target, "scorecam", obs=obs)
    res.meta["channels_scored"] = len(cam.used)
    return res
