"""ROAD, RemOve And Debias (Rong et al. 2022): remove a map's most (or least) relevant pixels by noisy linear
imputation, so the removal itself leaks no shape, and check whether the network still predicts the class.

Imputation (Rong et al.; Quantus's `noisy_linear_imputation`): every removed pixel becomes the weighted mean of its
8 neighbours (weights 1/6 edge, 1/12 corner), known neighbours fixed, which is one sparse symmetric linear system
per copy, plus Gaussian noise (std `noise`). We assemble it vectorised and factor it in a geometric nested-
dissection order (the same solution as Quantus to float precision, several times faster than its solve). Every
percentage of one image goes through one batched `Runner.sweep`; the percentages are imputed by a pool of threads
(one per core: SciPy's SuperLU is thread-safe since SuperLU 5 and releases the GIL while it factors), the next
image's while this one's copies are forwarded (one image's imputed values in memory ahead: P * C * H*W floats at
most).

Randomness: the noise is drawn from `np.random.RandomState(seed)` for each image, percentage by percentage, as
Quantus draws from the global state: with `np.random.seed(seed)` before a one-image Quantus call, both draw the
same numbers, so the oracle agrees exactly; batch calls of Quantus differ in draws only.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import splu

from ..errors import BadInput
from ..runtime.session import default_threads
from ..runtime.sweep import Perturbation
from .catalogue import EvalBatch, metric
from .flipping import batch_runner, class_scores, per_image

PERCENTAGES = tuple(range(1, 100, 2))  # Quantus's default: 1, 3, ..., 99 percent of the pixels
# (row offset, column offset) -> weight of that neighbour in the imputation (Rong et al.)
NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


@lru_cache(maxsize=8)
def dissection_rank(h: int, w: int) -> np.ndarray:
    """Rank of every pixel of an HxW grid in a nested-dissection order: halves first, the separating row or
    column last, recursively. Eliminating in this order keeps the Cholesky-like fill of the 8-neighbour system
    near O(n log n) (a one-pixel line separates 8-connected halves)."""
    parts: list[np.ndarray] = []
    stack: list[tuple[int, int, int, int, bool]] = [(0, h, 0, w, False)]
    # iterative post-order: (region, expanded?) -> emit children before the separator
    while stack:
        r0, r1, c0, c1, done = stack.pop()
        if r1 <= r0 or c1 <= c0:
            continue
        if (r1 - r0) * (c1 - c0) <= 16:
            parts.append((np.arange(r0, r1)[:, None] * w + np.arange(c0, c1)[None, :]).ravel())
            continue
        if done:
            if r1 - r0 >= c1 - c0:
                parts.append((r0 + r1) // 2 * w + np.arange(c0, c1))
            else:
                parts.append(np.arange(r0, r1) * w + (c0 + c1) // 2)
            continue
        stack.append((r0, r1, c0, c1, True))
        if r1 - r0 >= c1 - c0:
            m = (r0 + r1) // 2
            stack += [(m + 1, r1, c0, c1, False), (r0, m, c0, c1, False)]
        else:
            m = (c0 + c1) // 2
            stack += [(r0, r1, m + 1, c1, False), (r0, r1, c0, m, False)]
    order = np.concatenate(parts)
    rank = np.empty(h * w, np.int64)
    rank[order] = np.arange(h * w)
    return rank


def linear_imputation(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Values (C, len(idx)) for the pixels idx (flat HxW indices) of x (C,H,W) that make each the weighted mean
    of its in-image 8 neighbours, the other pixels fixed: solve A v = b with A_ii = sum of the neighbour weights,
    A_ij = -w_ij between removed neighbours, b_i = sum_j w_ij x_j over kept neighbours."""
    c, h, w = x.shape
    n = len(idx)
    if n == 0:
        return np.zeros((c, 0))
    perm = np.argsort(dissection_rank(h, w)[idx], kind="stable")
    ids = idx[perm]
    flat = x.reshape(c, -1).astype(np.float64)
    var = np.full(h * w, -1, np.int64)
    var[ids] = np.arange(n)
    r0, c0 = ids // w, ids % w
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    diag = np.zeros(n)
    b = np.zeros((n, c))
    for (dr, dc), wt in NEIGHBOURS:
        rr, cc = r0 + dr, c0 + dc
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        diag[ok] += wt
        src = np.nonzero(ok)[0]
        nb = rr[ok] * w + cc[ok]
        vi = var[nb]
        unk = vi >= 0
        rows.append(src[unk])
        cols.append(vi[unk])
        vals.append(np.full(int(unk.sum()), -wt))
        b[src[~unk]] += wt * flat[:, nb[~unk]].T  # each src appears once per offset
    a = sp.csc_matrix(
        (np.concatenate([diag, *vals]), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    # symmetric positive definite: no pivoting, keep the dissection order
    lu = splu(a, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    sol = lu.solve(b)  # (n, C) in dissection order
    out = np.empty((c, n))
    out[:, perm] = sol.T
    return out


@dataclass
class Imputation(Perturbation):
    """Copy k of an image with its first ks[k] pixels of `order` replaced by noisy linear imputation; the noise of
    copy k is drawn from the RandomState snapshot states[k], so a retried batch gets the same copies. `ready`
    holds each copy's values being imputed in a thread pool (see `road_curves`); without it they are imputed here."""

    order: np.ndarray
    ks: Sequence[int]
    noise: float
    states: list[Any] = field(default_factory=list)
    ready: list[Future[np.ndarray]] | None = None

    def __post_init__(self) -> None:
        self.n = len(self.ks)

    def values(self, x0: np.ndarray, k: int) -> np.ndarray:
        """(C, ks[k]) imputed (and noised) values of copy k."""
        idx = self.order[: self.ks[k]]
        vals = linear_imputation(x0, idx)
        if self.noise and len(idx):
            rs = np.random.RandomState()
            rs.set_state(self.states[k])
            vals = vals + self.noise * rs.randn(*vals.shape)
        return vals.astype(x0.dtype)

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Copies [start, stop)."""
        c = x0.shape[0]
        out = np.repeat(x0.reshape(1, c, -1), stop - start, axis=0)
        for k in range(start, stop):
            vals = self.ready[k].result() if self.ready is not None else self.values(x0, k)
            out[k - start][:, self.order[: self.ks[k]]] = vals
        return out.reshape(stop - start, *x0.shape)

    def submit(self, pool: ThreadPoolExecutor, x0: np.ndarray) -> None:
        """Start imputing every copy in `pool`, largest first (they take longest), results kept in `ready`."""
        futures: dict[int, Future[np.ndarray]] = {}
        for k in sorted(range(self.n), key=lambda k: -self.ks[k]):
            futures[k] = pool.submit(self.values, x0, k)
        self.ready = [futures[k] for k in range(self.n)]

    def cancel(self) -> None:
        """Drop the copies not imputed yet."""
        for f in self.ready or []:
            f.cancel()


def noise_states(seed: int, shapes: Sequence[tuple[int, int]]) -> list[Any]:
    """RandomState(seed) snapshots before each draw of randn(*shape), drawn in order (Quantus's sequence)."""
    rs = np.random.RandomState(seed)
    states = []
    for shape in shapes:
        states.append(rs.get_state())
        rs.randn(*shape)
    return states


def check_percentages(percentages: Sequence[float] | None) -> list[float]:
    """The percentages of pixels to remove, each in (0, 100), or BadInput."""
    ps = list(PERCENTAGES if percentages is None else percentages)
    if not ps or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and 0 < p < 100 for p in ps):
        raise BadInput(f"percentages must be a non-empty list of numbers in (0, 100), got {percentages!r}")
    return [float(p) for p in ps]


def road_curves(
    batch: EvalBatch,
    order: str = "morf",
    percentages: Sequence[float] | None = None,
    noise: float = 0.01,
    score: str = "correct",
    backend: str = "auto",
) -> np.ndarray:
    """(N, P): for each image and percentage p, whether the network still predicts the target ("correct", as
    Quantus and Rong et al. score) or its probability ("probability") after imputing int(H*W*p/100) pixels, most
    relevant first ("morf") or least relevant first ("lerf"). Quantus's `ROAD` averages this over images."""
    if order not in ("morf", "lerf"):
        raise BadInput(f"order must be 'morf' (most relevant first) or 'lerf' (least first), got {order!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 1:
        raise BadInput(f"noise must be a number in 0..1 (std in input units), got {noise!r}")
    ps = check_percentages(percentages)
    c, h, w = batch.x.shape[1:]
    ks = [int(h * w * p / 100) for p in ps]
    run = batch_runner(batch, backend)
    curves = np.full((len(batch.x), len(ps)), np.nan)

    def copies(i: int) -> Imputation:
        m = batch.maps[i].ravel()
        pix = np.argsort(-m if order == "morf" else m, kind="stable")
        states = noise_states(batch.seed, [(c, k) for k in ks]) if noise else []
        return Imputation(pix, ks, float(noise), states)

    # The sparse solves (one core each, GIL released) run in a pool, image i+1's queued behind image i's, while
    # image i's copies go through the runner (which releases the GIL too): solves and forwards overlap.
    with ThreadPoolExecutor(default_threads(), thread_name_prefix="road-impute") as pool:
        pending: dict[int, Imputation] = {}

        def ahead(i: int) -> None:
            if i < len(batch.x) and i not in pending:
                imp = copies(i)
                imp.submit(pool, batch.x[i])
                pending[i] = imp

        def one(i: int) -> float:
            ahead(i)
            imp = pending.pop(i)
            ahead(i + 1)
            curves[i] = class_scores(run, batch.x[i], imp, int(batch.targets[i]), score)
            return 0.0

        try:
            per_image(batch, f"ROAD {order}", one)
        finally:
            for imp in pending.values():
                imp.cancel()
    return curves


@metric("road_morf", "faithfulness", higher_is_better=False, paper="Rong et al. 2022, ICML")
def road_morf(
    batch: EvalBatch,
    percentages: Sequence[float] | None = None,
    noise: float = 0.01,
    score: str = "correct",
    backend: str = "auto",
) -> np.ndarray:
    """ROAD most-relevant-first: mean accuracy over the removal percentages, pixels imputed (lower is better)."""
    return road_curves(batch, "morf", percentages, noise, score, backend).mean(1)


@metric("road_lerf", "faithfulness", higher_is_better=True, paper="Rong et al. 2022, ICML")
def road_lerf(
    batch: EvalBatch,
    percentages: Sequence[float] | None = None,
    noise: float = 0.01,
    score: str = "correct",
    backend: str = "auto",
) -> np.ndarray:
    """ROAD least-relevant-first: mean accuracy over the removal percentages, pixels imputed (higher is better)."""
    return road_curves(batch, "lerf", percentages, noise, score, backend).mean(1)
