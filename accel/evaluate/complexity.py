"""Complexity of an attribution map: how concentrated its relevance is (a concise map is easier to read).

`sparseness`: the Gini index of |map| (Chalasani et al. 2020); `complexity`: the Shannon entropy of |map| read as a
distribution over pixels (Bhatt et al. 2020). Both judge the map alone (no model passes), so a seeded random map
is their natural reference: uniform noise is maximally complex.
"""

from __future__ import annotations

import numpy as np

from .catalogue import EvalBatch, metric

EPS_GINI = (
    1e-7  # added to every |a| before sorting, as Quantus does, so an all-zero map scores 0 instead of 0/0
)
EPS_LOG = 1e-12  # inside the logarithm, as Quantus does, so p = 0 contributes 0


def scale_by_max_abs(maps: np.ndarray) -> np.ndarray:
    """Each map (N,H,W) divided by its own max |a|, as float64 (all-zero maps stay zero): Quantus's
    `normalise_by_max`, per image. Scores defined up to scale are unchanged; stabilising epsilons then mean the
    same for every map whatever its units (gradients are ~1e-3, relevances ~1)."""
    a = np.asarray(maps, np.float64)
    top = np.abs(a).reshape(len(a), -1).max(axis=1).reshape(-1, *([1] * (a.ndim - 1)))
    return np.divide(a, top, out=np.zeros_like(a), where=top > 0)


def unit_abs(maps: np.ndarray) -> np.ndarray:
    """|maps| (N,H,W) scaled to a maximum of 1 per image, flattened to (N, H*W) float64."""
    return np.abs(scale_by_max_abs(maps)).reshape(len(maps), -1)


@metric("sparseness", "complexity", higher_is_better=True, paper="Chalasani et al. 2020 (ICML)")
def sparseness(batch: EvalBatch) -> np.ndarray:
    """Gini index of |map| (0 = relevance spread evenly, 1 = on one pixel); higher is more concise.

    G = sum_i (2i - n - 1) a_(i) / (n sum_i a_(i)) over the n pixel values sorted ascending (a_(1) <= ... <= a_(n)).
    """
    a = np.sort(unit_abs(batch.maps) + EPS_GINI, axis=1)
    n = a.shape[1]
    rank = np.arange(1, n + 1, dtype=np.float64)
    return ((2 * rank - n - 1) * a).sum(axis=1) / (n * a.sum(axis=1))


@metric("complexity", "complexity", higher_is_better=False, paper="Bhatt et al. 2020 (IJCAI)")
def complexity(batch: EvalBatch) -> np.ndarray:
    """Entropy of |map| as a distribution over pixels (0 = all on one pixel, log(H*W) = uniform); lower is simpler.

    H = -sum_i p_i log(p_i) with p_i = |a_i| / sum_j |a_j|; an all-zero map has no distribution and scores NaN.
    """
    a = unit_abs(batch.maps)
    total = a.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = a / total
        return -(p * np.log(p + EPS_LOG)).sum(axis=1)
