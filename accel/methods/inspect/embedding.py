"""2-D maps of a dataset's feature vectors: PCA, t-SNE (openTSNE, FFT-accelerated) and UMAP, plus the image grid.

The "embedding" tap of every image is computed once through the batched runner and cached (see `_common`).
The t-SNE image grid follows Karpathy's CNN t-SNE figure: a subset of points is snapped to a regular grid by a
linear assignment (each cell gets exactly one image, total squared displacement minimal), and their thumbnails
are drawn into one mosaic.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ...errors import BadInput
from ...registry import BACKEND, DATASET, SEED, TAP, Observer, param, register
from ...result import Result
from ._common import (
    Features,
    check_canvas,
    dataset_features,
    report,
    resolve_dataset,
    scatter_image,
    vector_tap,
)

if TYPE_CHECKING:
    from ...zoo import Backbone

PCA_DIMS = 50  # t-SNE / UMAP input dimension (PCA first, the usual practice)
FFT_FROM = (
    5000  # openTSNE: FFT-interpolated gradients from this many points, Barnes-Hut below (its fixed cost wins)
)


@dataclass
class EmbeddingParams:
    projection: str = param("tsne", "projection to 2-D", choices=("tsne", "pca", "umap"))
    dataset: str = DATASET()
    limit: int = param(2000, "embed the first N images of the dataset (0 = all)", min=0, max=100_000)
    tap: str = TAP()
    perplexity: float = param(30.0, "t-SNE perplexity (effective number of neighbours)", min=2.0, max=500.0)
    gradient: str = param(
        "auto",
        f"t-SNE repulsive forces: FFT interpolation, Barnes-Hut, or auto (FFT from {FFT_FROM} points)",
        choices=("auto", "fft", "bh"),
    )
    n_neighbors: int = param(15, "UMAP neighbourhood size", min=2, max=500)
    seed: int = SEED("t-SNE / UMAP initialisation, grid subset")
    grid: int = param(
        20, "image grid side: snap this many^2 points to a grid (0 = no image grid)", min=0, max=60
    )
    thumb: int = param(32, "image grid: thumbnail size in pixels", min=8, max=128)
    trustworthiness: bool = param(
        False, "also compute sklearn's trustworthiness (k=10) of the 2-D map (slow for 10k+)"
    )
    backend: str = BACKEND()


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Centred PCA projection onto the top `dims` components (deterministic signs: largest loading positive)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0)
    dims = int(min(dims, x.shape[0], x.shape[1]))
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    vt = vt[:dims]
    signs = np.sign(vt[np.arange(dims), np.abs(vt).argmax(1)])
    signs[signs == 0] = 1
    return (x @ (vt * signs[:, None]).T).astype(np.float32)


def _n_jobs() -> int:
    """Threads for openTSNE: all cores but one (on a 2-core machine one thread is faster than two fighting)."""
    from ...settings import get

    jobs = get("CONVLENS_TSNE_JOBS")
    if jobs:
        return int(jobs)
    from ...runtime.session import usable_cores

    return max(1, min(8, usable_cores() - 1))


def effective_perplexity(perplexity: float, n: int) -> float:
    """The t-SNE perplexity used for `n` points: the asked one, lowered to (n - 1) / 3 (at least 2), since each point
    needs about 3 x perplexity neighbours."""
    return float(min(perplexity, max(2.0, (n - 1) / 3.0)))


def tsne(
    x: np.ndarray, perplexity: float = 30.0, seed: int = 0, gradient: str = "auto"
) -> tuple[np.ndarray, str]:
    """2-D t-SNE: openTSNE (FFT-accelerated interpolation for large sets) when installed, else scikit-learn's."""
    n = len(x)
    if gradient not in ("auto", "fft", "bh"):
        raise BadInput(f"t-SNE gradient must be 'auto', 'fft' or 'bh', got {gradient!r}")
    method = gradient if gradient != "auto" else ("fft" if n >= FFT_FROM else "bh")
    perp = effective_perplexity(perplexity, n)
    try:
        from openTSNE import TSNE  # noqa: PLC0415 - optional dependency
    except ImportError:
        TSNE = None  # noqa: N806
    if TSNE is not None:
        emb = TSNE(
            n_components=2,
            perplexity=perp,
            initialization="pca",
            negative_gradient_method=method,
            random_state=seed,
            n_jobs=_n_jobs(),
            verbose=False,
        ).fit(np.asarray(x, dtype=np.float64))
        return np.asarray(emb, dtype=np.float32), f"openTSNE ({'FFT' if method == 'fft' else 'Barnes-Hut'})"
    from sklearn.manifold import TSNE as SkTSNE  # noqa: PLC0415

    emb = SkTSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)
    return emb.astype(np.float32), "scikit-learn (Barnes-Hut)"


def umap_2d(x: np.ndarray, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """2-D UMAP (umap-learn); BadInput with the install hint when the package is absent."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import umap  # noqa: PLC0415 - optional dependency, slow import (numba)
    except ImportError:
        raise BadInput(
            "method='umap' needs umap-learn (pip install umap-learn); use 'tsne' or 'pca'"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state" and numba chatter
        red = umap.UMAP(n_components=2, n_neighbors=int(min(n_neighbors, len(x) - 1)), random_state=seed)
        return np.asarray(red.fit_transform(x), dtype=np.float32)


def grid_layout(points: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Cell (row, col) for each of <= rows*cols 2-D points, minimising total squared displacement (linear assignment)."""
    from scipy.optimize import linear_sum_assignment

    n = len(points)
    if n > rows * cols:
        raise BadInput(f"grid_layout: {n} points do not fit a {rows}x{cols} grid")
    p = np.asarray(points, dtype=np.float64)
    lo, hi = p.min(0), p.max(0)
    p = (p - lo) / np.where(hi > lo, hi - lo, 1.0)
    gy, gx = np.meshgrid(np.linspace(0, 1, rows), np.linspace(0, 1, cols), indexing="ij")
    cells = np.stack([gx.ravel(), 1.0 - gy.ravel()], 1)  # row 0 at the top = largest y
    cost = ((p[:, None, :] - cells[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    out = np.empty((n, 2), dtype=np.int64)
    out[r] = np.stack(np.divmod(c, cols), 1)
    return out


def grid_image(
    points: np.ndarray, thumbs: np.ndarray, side: int, thumb: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Karpathy-style mosaic: `side`^2 points (a seeded random subset) snapped to a side x side grid.

    Returns (mosaic uint8 HxWx3, chosen point indices, their (row, col) cells)."""
    n = len(points)
    m = min(n, side * side)
    cols = side if m == side * side else math.ceil(math.sqrt(m))  # fewer points: a near-square grid
    rows = math.ceil(m / cols)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, m, replace=False)) if m < n else np.arange(n)
    cells = grid_layout(points[chosen], rows, cols)
    out = np.full((rows * thumb, cols * thumb, 3), 255, dtype=np.uint8)
    for i, (r, c) in zip(chosen, cells):
        t = thumbs[i]
        if t.shape[0] != thumb:
            t = np.asarray(Image.fromarray(t).resize((thumb, thumb), Image.Resampling.BILINEAR))
        out[r * thumb : (r + 1) * thumb, c * thumb : (c + 1) * thumb] = t
    return out, chosen, cells


def project(
    fs: Features, method: str, perplexity: float, n_neighbors: int, seed: int, gradient: str = "auto"
) -> tuple[np.ndarray, str]:
    """2-D coordinates of the features with `method` (PCA to 50 dims first for t-SNE/UMAP)."""
    x = fs.feats
    if len(x) < 5:
        raise BadInput(f"embedding needs at least 5 images, the dataset {fs.spec} has {len(x)}")
    if method == "pca":
        return pca(x, 2), "PCA"
    xr = pca(x, PCA_DIMS) if x.shape[1] > PCA_DIMS else x.astype(np.float32)
    if method == "tsne":
        return tsne(xr, perplexity, seed, gradient)
    return umap_2d(xr, n_neighbors, seed), "UMAP (umap-learn)"


@register(
    "embedding",
    "inspect",
    EmbeddingParams,
    paper="van der Maaten & Hinton 2008 (t-SNE); McInnes et al. 2018 (UMAP); Karpathy, CNN t-SNE image grid",
    needs_image=False,
    page="embeddings",
)
def run(net: Backbone, img: Any, p: EmbeddingParams, obs: Observer) -> Result:
    """A 2-D map (PCA / t-SNE / UMAP) of a dataset's feature vectors, with labels and the t-SNE image grid."""
    tap = vector_tap(net, p.tap)
    ds = resolve_dataset(net, p.dataset, p.limit)
    fs = dataset_features(net, ds, tap, p.backend, obs=obs.span(0.0, 0.5))
    if p.grid:  # at most grid^2 tiles, fewer for a small dataset (a near-square grid: + one row)
        m = min(len(fs.feats), p.grid**2)
        check_canvas((m + math.isqrt(m) + 1) * p.thumb**2, "embedding image grid", "grid or thumb")
    report(obs, 0.5, f"{p.projection} of {len(fs.feats)} points")
    t0 = time.perf_counter()
    pts, impl = project(fs, p.projection, p.perplexity, p.n_neighbors, p.seed, p.gradient)
    proj_s = time.perf_counter() - t0
    if not np.isfinite(pts).all():
        raise BadInput(f"{p.projection} produced non-finite coordinates (degenerate features?)")
    extras: dict[str, Any] = {
        "labels": fs.labels.copy(),
        "ids": list(fs.ids),
        "classes": fs.classes,
        "features": fs.feats,
        "scatter": scatter_image(pts, fs.labels),
    }
    meta: dict[str, Any] = {
        "dataset": ds.spec,
        "points": len(pts),
        "tap": tap,
        "dim": int(fs.feats.shape[1]),
        "projection": impl,
        "projection_s": round(proj_s, 3),
        **({"perplexity": effective_perplexity(p.perplexity, len(pts))} if p.projection == "tsne" else {}),
        **{f"features_{k}": v for k, v in fs.meta.items()},
    }
    if p.grid:
        report(obs, 0.9, "image grid")
        t1 = time.perf_counter()
        mosaic, chosen, cells = grid_image(pts, fs.thumbs, p.grid, p.thumb, p.seed)
        extras.update(grid_image=mosaic, grid_points=chosen, grid_cells=cells, image=Image.fromarray(mosaic))
        meta["grid_s"] = round(time.perf_counter() - t1, 3)
    else:
        extras["image"] = Image.fromarray(extras["scatter"])
    if p.trustworthiness:
        from sklearn.manifold import trustworthiness

        k = min(10, (len(pts) - 1) // 2)  # scikit-learn needs k < n/2 (a 5-image set gets k=2)
        meta["trustworthiness"] = float(trustworthiness(fs.feats, pts, n_neighbors=k))
        meta["trustworthiness_k"] = k
    report(obs, 1.0, "done")
    return Result("points", pts.astype(np.float32), meta=meta, extras=extras)


def bench_tsne(
    net: Backbone, spec: str = "fashion_mnist:test:10000", seed: int = 0, sklearn: bool = True
) -> dict[str, Any]:
    """For `convlens bench`: t-SNE wall time and trustworthiness (k=10), openTSNE (FFT) vs scikit-learn's TSNE."""
    from sklearn.manifold import TSNE as SkTSNE  # noqa: PLC0415
    from sklearn.manifold import trustworthiness

    from ... import datasets

    fs = dataset_features(net, datasets.get(spec))
    x = pca(fs.feats, PCA_DIMS) if fs.feats.shape[1] > PCA_DIMS else fs.feats
    out: dict[str, Any] = {"workload": "tsne", "model": net.name, "dataset": spec, "points": len(x)}
    t0 = time.perf_counter()
    pts, impl = tsne(x, 30.0, seed, "fft")
    out.update(
        opentsne_s=round(time.perf_counter() - t0, 2),
        opentsne_impl=impl,
        opentsne_trustworthiness=float(trustworthiness(fs.feats, pts, n_neighbors=10)),
    )
    if sklearn:
        t0 = time.perf_counter()
        sk = SkTSNE(n_components=2, perplexity=30.0, init="pca", random_state=seed).fit_transform(x)
        out.update(
            sklearn_s=round(time.perf_counter() - t0, 2),
            sklearn_trustworthiness=float(trustworthiness(fs.feats, sk, n_neighbors=10)),
        )
    return out
