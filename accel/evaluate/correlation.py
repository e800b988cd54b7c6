"""Faithfulness correlation (Bhatt et al. 2020): over many random feature subsets S, does the relevance a map gives
S predict how much the class score drops when S is removed?

    score = Pearson_r over runs r of ( sum_{j in S_r} a_j ,  f(x)_t - f(x with S_r set to the baseline)_t )

Features are the input's C*H*W values, as in Quantus 0.6 (`FaithfulnessCorrelation`): a pixel's map value counts
once per channel drawn. f is the logit (Quantus's default, softmax off). All runs of one image go through one
batched `Runner.sweep`.

Randomness: subsets come from `np.random.RandomState(seed)` for each image, run by run (`choice(C*H*W, size,
replace=False)`), the calls Quantus makes on the global state; with `np.random.seed(seed)` before a one-image
Quantus call (and a baseline given as an array, so Quantus draws nothing else), the subsets and the scores agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadInput
from ..runtime.sweep import Perturbation
from .catalogue import EvalBatch, metric
from .flipping import batch_runner, check_int, class_scores, fill_value, per_image


@dataclass
class Subsets(Perturbation):
    """Copy 0: the image (C,H,W) itself; copy r >= 1: with its flat C*H*W features `subsets[r-1]` set to `value`
    (the clean score and every run in one sweep)."""

    subsets: np.ndarray  # (R, size) flat feature indices
    value: float

    def __post_init__(self) -> None:
        self.n = len(self.subsets) + 1

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Copies [start, stop)."""
        out = np.repeat(x0.reshape(1, -1), stop - start, axis=0)
        lo = max(start, 1)
        if lo < stop:
            rows = np.arange(lo - start, stop - start)[:, None]
            out[rows, self.subsets[lo - 1 : stop - 1]] = self.value
        return out.reshape(stop - start, *x0.shape)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors; 0 where either is constant (no linear relation to measure)."""
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


@metric("faithfulness_correlation", "faithfulness", higher_is_better=True, paper="Bhatt et al. 2020, IJCAI")
def faithfulness_correlation(
    batch: EvalBatch,
    runs: int = 100,
    subset_size: int = 224,
    baseline: str | float = "black",
    score: str = "logit",
    backend: str = "auto",
) -> np.ndarray:
    """Pearson correlation between a random subset's summed relevance and the score drop when it is removed
    (higher is better)."""
    c, h, w = batch.x.shape[1:]
    n_feat = c * h * w
    runs = check_int("runs", runs, 2, 10_000)
    size = check_int("subset_size", subset_size, 1, n_feat - 1)
    if score not in ("logit", "probability"):
        raise BadInput(f"score must be 'logit' or 'probability', got {score!r}")
    run = batch_runner(batch, backend)

    def one(i: int) -> float:
        rs = np.random.RandomState(batch.seed)
        subsets = np.stack([rs.choice(n_feat, size, replace=False) for _ in range(runs)])
        x = batch.x[i]
        f = class_scores(run, x, Subsets(subsets, fill_value(x, baseline)), int(batch.targets[i]), score)
        a = np.repeat(batch.maps[i].reshape(1, -1), c, axis=0).ravel()  # a pixel's value in every channel
        return pearson(a[subsets].sum(1), f[0] - f[1:])

    return per_image(batch, "faithfulness correlation", one)
