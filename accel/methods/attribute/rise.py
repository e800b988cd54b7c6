"""RISE (Petsiuk, Das & Saenko 2018): randomized input sampling for explanation of black-box models.

N random binary s x s grids (each cell kept with probability p) are upsampled bilinearly to (s+1) x cell pixels and
cropped at a random shift, giving smooth masks M_i; the map is the mask average weighted by the class score of the
masked input, S = sum_i f_c(x * M_i) M_i / (N p); by default the scores are mean-centred (a control variate with
the same expectation, since every mask pixel has mean p), which needs fewer masks for the same noise. Gradient-free: the masked copies go through the runner's
batched sweep (ONNX Runtime when it works), and the masks are generated per chunk from a seeded stream, so memory
stays flat in N and the map does not depend on the batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from scipy.special import softmax

from ...errors import BadInput
from ...registry import BACKEND, SEED, TARGET, Observer, param, register
from ...result import Result
from ...runtime.runner import runner
from ...runtime.sweep import Masks
from ._base import MapRun, make_baseline, resolve_target, upsample

if TYPE_CHECKING:
    from ...zoo import Backbone

MAX_MASKS = 20_000  # like occlusion's default window cap: about 3 minutes of efficientnet_lite0 on 2 cores
CHUNK_BATCHES = 4  # runner batches per chunk of masks: the stop button is honoured after each chunk


class MaskStream:
    """RISE masks by index: mask i depends only on (seed, i), so any slice [start, stop) is reproducible on its
    own and chunks of any size give the same masks (the stream's PCG64 state is advanced to mask `start`).

    Mask i reads s*s + 2 uniform doubles: the grid (cell kept where u < p) and the shift (dy, dx) in whole
    pixels in [0, cell); the grid is upsampled bilinearly (half-pixel centres) to (s+1)*cell and cropped to H x W
    at the shift, as in the paper's reference code."""

    def __init__(self, height: int, width: int, cells: int, keep: float, seed: int) -> None:
        if not 1 <= cells <= min(height, width):
            raise BadInput(
                f"rise: cells must be in 1..{min(height, width)} for a {height}x{width} input (each cell at "
                f"least one pixel), got {cells}"
            )
        if not 0.0 < keep <= 1.0:
            raise BadInput(f"rise: keep probability must be in (0, 1], got {keep}")
        self.height, self.width, self.cells, self.keep, self.seed = height, width, cells, keep, seed
        self.cell = (math.ceil(height / cells), math.ceil(width / cells))
        self.up = ((cells + 1) * self.cell[0], (cells + 1) * self.cell[1])
        self.draws = cells * cells + 2

    def masks(self, start: int, stop: int) -> np.ndarray:
        """Masks [start, stop) as float32 (k, H, W) in [0, 1]."""
        k = stop - start
        bits = np.random.PCG64(self.seed)
        bits.advance(start * self.draws)  # one 64-bit draw per double
        u = np.random.Generator(bits).random((k, self.draws))
        s = self.cells
        grids = torch.from_numpy((u[:, : s * s] < self.keep).reshape(k, s, s).astype(np.float32))
        up = upsample(grids, self.up).numpy()
        dy = np.floor(u[:, -2] * self.cell[0]).astype(int)
        dx = np.floor(u[:, -1] * self.cell[1]).astype(int)
        out = np.empty((k, self.height, self.width), np.float32)
        for i in range(k):
            out[i] = up[i, dy[i] : dy[i] + self.height, dx[i] : dx[i] + self.width]
        return out


def estimate(
    fm: np.ndarray, msum: np.ndarray, fsum: float, n: int, keep: float, estimator: str
) -> np.ndarray:
    """The map from the running sums over n masks: paper S = sum f_i M_i / (n p); centred
    S = (sum f_i M_i - f_bar sum M_i) / (n p) + f_bar with f_bar = sum f_i / n. E[M_i(x)] = p at every pixel, so
    the correction f_bar (1 - sum M_i / (n p)) has mean ~0 and removes the noise of uneven mask coverage."""
    if n == 0:
        return np.zeros_like(fm)
    if estimator == "paper":
        return fm / (n * keep)
    fbar = fsum / n
    return (fm - fbar * msum) / (n * keep) + fbar


@dataclass
class RiseParams:
    target: int | None = TARGET()
    masks: int = param(
        1000,
        "random masks N (one masked forward pass each); the noise falls like 1/sqrt(N): with the centred "
        "estimator two seeds' maps correlate ~0.95 at 1000 on efficientnet_lite0 (the paper used 4000 with its own)",
        min=1,
        max=MAX_MASKS,
        limit="",  # bounded by MAX_MASKS: memory stays flat in N, only time grows
    )
    cells: int = param(
        7,
        "mask grid s: each mask is s x s random cells (a cell is ceil(H/s) input pixels), upsampled and shifted; "
        "smaller s gives coarser maps",
        min=1,
        max=64,
    )
    keep: float = param(
        0.5, "keep probability p: the chance that a cell of the grid shows the image", min=0.01, max=1.0
    )
    baseline: str = param(
        "zero",
        "what masked-out pixels show: zero (network-input origin = dataset mean colour, the paper's code), "
        "black, mean (the image's mean colour) or blur (a blurred copy of the image)",
        choices=("zero", "black", "mean", "blur"),
    )
    score: str = param(
        "probability",
        "score of a masked copy: the softmax probability of the target (the paper) or its logit",
        choices=("probability", "logit"),
    )
    estimator: str = param(
        "centred",
        "centred: sum_i (f_i - mean f) M_i / (N p) + mean f, a control variate with the paper's expectation (every "
        "pixel of a mask has mean p) and less noise; paper: sum_i f_i M_i / (N p) as published",
        choices=("centred", "paper"),
    )
    seed: int = SEED("the masks and their shifts")
    backend: str = BACKEND(help="forward-pass engine for the masked copies")
    batch_size: int | None = param(None, "masked copies per forward pass (default: from free memory)", min=1)


@register(
    "rise",
    "attribute",
    RiseParams,
    paper="Petsiuk, Das & Saenko 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models",
    needs_grad=False,
)
def run(net: Backbone, img: Image.Image, p: RiseParams, obs: Observer) -> Result:
    """S = sum_i f_c(x * M_i) M_i / (n p) over the n masks scored (all N unless stopped early), by default with
    mean-centred scores (see `estimate`)."""
    mr = MapRun(net, img, "rise", p.target)
    x = mr.x
    _, h, w = net.input_shape
    stream = MaskStream(h, w, p.cells, p.keep, p.seed)
    base = make_baseline(net, x, p.baseline, sigma=5.0 * h / 224.0)  # Petsiuk's blur: sigma 5 at 224 px
    r = runner(net, ["logits"], backend=p.backend, batch_size=p.batch_size)
    x0 = x.numpy()
    logits = r.run(x0)["logits"]
    passes = r.last_passes
    t = resolve_target(net, p.target, logits, "rise")

    def value(out: dict[str, np.ndarray]) -> np.ndarray:
        z = out["logits"].astype(np.float64)
        return softmax(z, axis=1)[:, t] if p.score == "probability" else z[:, t]

    fm = np.zeros((h, w), np.float64)  # sum_i f_i M_i
    msum = np.zeros((h, w), np.float64)  # sum_i M_i
    fsum, used, stopped = 0.0, 0, False
    while used < p.masks:
        if obs.should_stop():
            stopped = True
            break
        stop = min(p.masks, used + CHUNK_BATCHES * r.batch_size)
        m = stream.masks(used, stop)
        scores = np.asarray(r.sweep(x0, Masks(m, baseline=base), reduce=value), np.float64)
        passes += r.last_passes  # this thread's passes (pooled runners are shared)
        fm += np.tensordot(scores, m, axes=1)
        msum += m.sum(0)
        fsum += float(scores.sum())
        used = stop
        obs.progress(used / p.masks, f"{used}/{p.masks} masks")
    sal = estimate(fm, msum, fsum, used, p.keep, p.estimator)
    return mr.result(
        sal,
        t,
        logits,
        passes=passes,
        backend=r.backend,
        masks=p.masks,
        masks_used=used,
        stopped=stopped,
        cells=p.cells,
        cell_px=list(stream.cell),
        keep=p.keep,
        seed=p.seed,
        score=p.score,
        estimator=p.estimator,
        baseline=p.baseline,
        runner=dict(r.meta),
    )
