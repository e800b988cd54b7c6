"""Robustness of an explanation to small input noise: max- and average-sensitivity (Yeh et al. 2019).

Each image is explained again on `samples` copies with i.i.d. uniform noise in [-radius, radius] (in the
network's preprocessed input units) on every value; the sensitivity of one copy is ||a - a'||_F / ||a||_F, where a
is the map under test. Max-sensitivity takes the worst copy, average-sensitivity the mean; lower is better.

All noisy copies of all images go to the explainer in large batches (`explain_batched`), and the draws depend
only on (seed, copy, image), so the two metrics see the same copies and chunking never changes a score.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInput
from ..registry import SILENT, Observer
from .catalogue import EvalBatch, metric

if TYPE_CHECKING:
    from ..backbone import Backbone

CHUNK_BYTES = (
    64 << 20
)  # inputs handed to the explainer at once (about 110 ImageNet inputs, 21,000 28x28 ones)
MAX_SAMPLES = 10_000


def chunk_size(x: np.ndarray) -> int:
    """How many (C,H,W) inputs like x[0] fit in one explainer call of CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // max(1, int(x[0].nbytes)))


def explain_batched(
    batch: EvalBatch,
    net: Backbone,
    make: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
    total: int,
    obs: Observer = SILENT,
) -> tuple[np.ndarray, int]:
    """(maps (total,H,W) float32, how many are done) for `total` inputs built on demand by
    `make(lo, hi) -> (x[lo:hi], targets[lo:hi])`, explained through `batch.explain` on `net` in CHUNK_BYTES chunks.

    Fewer than `total` are done only when `obs` asked to stop; the rows after them are undefined."""
    if batch.explain is None:
        raise BadInput("this metric needs the explanation method (it recomputes maps)")
    hw = batch.maps.shape[1:]
    out = np.empty((total, *hw), np.float32)
    step = chunk_size(batch.x)
    for lo in range(0, total, step):
        if obs.should_stop():
            return out, lo
        hi = min(total, lo + step)
        x, t = make(lo, hi)
        m = np.asarray(batch.explain(net, x, t), dtype=np.float32)
        if m.shape != (hi - lo, *hw):
            raise BadInput(f"the explainer returned maps of shape {m.shape}, expected {(hi - lo, *hw)}")
        out[lo:hi] = m
        obs.progress(hi / total, f"explained {hi}/{total} inputs")
    return out, total


def seeded_rng(seed: int, copy: int, image: int) -> np.random.Generator:
    """The generator of one noisy copy of one image: a function of (seed, copy, image) only, so scores never
    depend on how copies are batched, and two metrics with the same seed see the same copies."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(copy), int(image)])


def uniform_noise(seed: int, copy: int, image: int, shape: tuple[int, ...], radius: float) -> np.ndarray:
    """The noise of one copy of one image: i.i.d. uniform in [-radius, radius], seeded by (seed, copy, image)."""
    return seeded_rng(seed, copy, image).uniform(-radius, radius, size=shape).astype(np.float32)


def _check(radius: float, samples: int) -> None:
    """BadInput unless radius > 0 is finite and 1 <= samples <= MAX_SAMPLES is whole."""
    if (
        isinstance(radius, bool)
        or not isinstance(radius, (int, float, np.floating))
        or not 0 < radius < np.inf
    ):
        raise BadInput(f"radius must be a positive number (input units), got {radius!r}")
    if (
        isinstance(samples, bool)
        or not isinstance(samples, (int, np.integer))
        or not 1 <= samples <= MAX_SAMPLES
    ):
        raise BadInput(f"samples must be a whole number in 1..{MAX_SAMPLES}, got {samples!r}")


# one entry: max- and average-sensitivity of the same batch and options share their explanations
_LAST: dict[str, object] = {}


def sensitivities(batch: EvalBatch, radius: float, samples: int) -> np.ndarray:
    """(N, samples) float64: ||a - a'||_F / ||a||_F for every noisy copy (NaN where ||a|| = 0 or not computed)."""
    _check(radius, samples)
    key = (id(batch.x), id(batch.maps), id(batch.explain), float(radius), int(samples), int(batch.seed))
    ref = _LAST.get("batch")
    if _LAST.get("key") == key and isinstance(ref, weakref.ref) and ref() is batch:
        return np.array(_LAST["value"])
    n = len(batch.x)
    shape = batch.x.shape[1:]

    def make(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.arange(lo, hi)
        copy, image = idx // n, idx % n
        noise = np.stack(
            [uniform_noise(batch.seed, int(c), int(i), shape, radius) for c, i in zip(copy, image)]
        )
        return batch.x[image] + noise, batch.targets[image]

    maps, done = explain_batched(batch, batch.net, make, n * samples, batch.observer)
    a = batch.maps.reshape(n, -1).astype(np.float64)
    norm = np.linalg.norm(a, axis=1)
    diff = maps.reshape(samples, n, -1).astype(np.float64) - a[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (np.linalg.norm(diff, axis=2) / norm[None]).T
    out[norm == 0] = np.nan
    flat_index = (
        np.arange(n * samples).reshape(samples, n).T
    )  # explained copy-major: copy c of image i is c*n + i
    out[flat_index >= done] = np.nan  # copies the observer stopped before
    if done == n * samples:
        _LAST.update(key=key, batch=weakref.ref(batch), value=out.copy())
    return out


def _reduce(scores: np.ndarray, how: Callable[..., np.ndarray]) -> np.ndarray:
    """Row-wise max or mean ignoring NaN; all-NaN rows stay NaN (without numpy's empty-slice warning)."""
    out = np.full(len(scores), np.nan)
    ok = ~np.isnan(scores).all(axis=1)
    if ok.any():
        out[ok] = how(scores[ok], axis=1)
    return out


@metric(
    "max_sensitivity",
    "robustness",
    higher_is_better=False,
    paper="Yeh et al. 2019 (NeurIPS)",
    needs_explainer=True,
    random_baseline=False,
)
def max_sensitivity(batch: EvalBatch, *, radius: float = 0.2, samples: int = 20) -> np.ndarray:
    """Largest relative change of the map, ||a - a'|| / ||a||, over `samples` copies with uniform noise in
    [-radius, radius] (preprocessed input units; Quantus's default radius 0.2); lower is more robust."""
    return _reduce(sensitivities(batch, radius, samples), np.nanmax)


@metric(
    "avg_sensitivity",
    "robustness",
    higher_is_better=False,
    paper="Yeh et al. 2019 (NeurIPS)",
    needs_explainer=True,
    random_baseline=False,
)
def avg_sensitivity(batch: EvalBatch, *, radius: float = 0.2, samples: int = 20) -> np.ndarray:
    """Mean relative change of the map, ||a - a'|| / ||a||, over `samples` copies with uniform noise in
    [-radius, radius] (preprocessed input units; Quantus's default radius 0.2); lower is more robust."""
    return _reduce(sensitivities(batch, radius, samples), np.nanmean)
