"""Nearest neighbours of a query image in feature space and in pixel space, side by side.

The lecture's point: the last-layer features put a query next to images of the same kind, while pixel space finds
images that merely share brightness and layout. Search is exact: numpy (chunked matrix products) for small
galleries, FAISS's flat index above `FAISS_THRESHOLD` vectors when faiss-cpu is installed; an approximate HNSW
index is available on request for very large galleries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ...errors import BadInput
from ...registry import BACKEND, DATASET, TAP, Observer, param, register
from ...result import Result
from ...runtime.runner import runner
from ._common import (
    dataset_features,
    label_strip,
    report,
    resolve_dataset,
    thumb_size,
    to_thumbs,
    vector_tap,
)

if TYPE_CHECKING:
    from ...zoo import Backbone

FAISS_THRESHOLD = 20_000  # gallery size above which "auto" uses FAISS (when installed)
METRICS = ("cosine", "l2")


def _faiss() -> Any:
    try:
        import faiss  # noqa: PLC0415 - optional dependency

        return faiss
    except ImportError:
        return None


def _prepare(a: np.ndarray, metric: str) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim != 2:
        raise BadInput(f"knn expects 2-D arrays (n, dim), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise BadInput("knn: vectors contain NaN or inf")
    if metric == "cosine":
        n = np.linalg.norm(a, axis=1, keepdims=True)
        a = a / np.maximum(n, 1e-12)
    return a


def knn(
    gallery: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str = "cosine",
    index: str = "auto",
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """The k nearest gallery rows of each query: (indices (Q,k), distances (Q,k), index used).

    Distances: cosine -> 1 - cosine similarity, l2 -> Euclidean. Ties go to the lower gallery index.
    `exclude` (Q,) optionally names one gallery row per query to leave out (-1 = none), for leave-one-out."""
    if metric not in METRICS:
        raise BadInput(f"metric must be one of {METRICS}, got {metric!r}")
    if index not in ("auto", "numpy", "faiss", "hnsw"):
        raise BadInput(f"index must be 'auto', 'numpy', 'faiss' or 'hnsw', got {index!r}")
    g, q = _prepare(gallery, metric), _prepare(queries, metric)
    if g.shape[1] != q.shape[1]:
        raise BadInput(f"knn: gallery has dimension {g.shape[1]}, queries {q.shape[1]}")
    extra = 0 if exclude is None else 1
    if not 1 <= k <= len(g) - extra:
        raise BadInput(f"k={k} must lie in 1..{len(g) - extra} (the gallery has {len(g)} vectors)")
    kk = k + extra
    faiss = _faiss()
    use = index
    if index == "auto":
        use = "faiss" if (faiss is not None and len(g) > FAISS_THRESHOLD) else "numpy"
    if use in ("faiss", "hnsw") and faiss is None:
        raise BadInput(f"index={index!r} needs faiss-cpu (pip install faiss-cpu); use index='numpy'")
    if use == "numpy":
        idx, dist = _knn_numpy(g, q, kk, metric)
    else:
        idx, dist = _knn_faiss(faiss, g, q, kk, metric, hnsw=use == "hnsw")
    if exclude is not None:
        ex = np.asarray(exclude).reshape(-1, 1)
        keep = idx != ex
        # drop the excluded row where present, else the last column
        keep[np.arange(len(idx)), np.where(keep.all(1), kk - 1, np.argmin(keep, 1))] = False
        idx = idx[keep].reshape(len(idx), k)
        dist = dist[keep].reshape(len(dist), k)
    return idx, dist, use


def _knn_numpy(g: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    g2 = np.einsum("ij,ij->i", g, g)
    rows = max(1, int(2**26 // max(len(g), 1)))  # ~256 MB of float32 distances per chunk
    idx_out = np.empty((len(q), k), dtype=np.int64)
    d_out = np.empty((len(q), k), dtype=np.float32)
    for s in range(0, len(q), rows):
        qq = q[s : s + rows]
        dots = qq @ g.T
        if metric == "cosine":
            d = 1.0 - dots
        else:
            d = np.maximum(np.einsum("ij,ij->i", qq, qq)[:, None] + g2[None] - 2.0 * dots, 0.0)
        part = (
            np.argpartition(d, k - 1, axis=1)[:, :k]
            if k < d.shape[1]
            else np.tile(np.arange(d.shape[1]), (len(d), 1))
        )
        pd = np.take_along_axis(d, part, 1)
        order = np.lexsort((part, pd), axis=1)  # by distance, then by index
        idx_out[s : s + rows] = np.take_along_axis(part, order, 1)
        d_out[s : s + rows] = np.take_along_axis(pd, order, 1)
    if metric == "l2":
        d_out = np.sqrt(d_out)
    return idx_out, d_out


def _knn_faiss(
    faiss: Any, g: np.ndarray, q: np.ndarray, k: int, metric: str, hnsw: bool
) -> tuple[np.ndarray, np.ndarray]:
    d = g.shape[1]
    if hnsw:
        ix = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2)
        ix.hnsw.efSearch = max(64, 2 * k)
    else:
        ix = faiss.IndexFlatIP(d) if metric == "cosine" else faiss.IndexFlatL2(d)
    ix.add(g)
    s, i = ix.search(q, k)
    if metric == "cosine":
        dist = 1.0 - s
    else:
        dist = np.sqrt(np.maximum(s, 0.0))
    return i.astype(np.int64), dist.astype(np.float32)


@dataclass
class NeighborsParams:
    dataset: str = DATASET(
        "gallery dataset: fashion_mnist[:train|test], foolbox:<kind>, samples, or a folder of images ('auto' = the model's)"
    )
    limit: int = param(2000, "gallery size: the first N images of the dataset (0 = all)", min=0, max=100_000)
    k: int = param(8, "neighbours to show in each space", min=1, max=64)
    metric: str = param("cosine", "distance in feature space", choices=METRICS)
    pixel_metric: str = param("l2", "distance in pixel space", choices=METRICS)
    tap: str = TAP()
    index: str = param(
        "auto",
        "search: exact numpy, exact FAISS, approximate HNSW, or auto by size",
        choices=("auto", "numpy", "faiss", "hnsw"),
    )
    exclude_self: bool = param(True, "leave out gallery images identical to the query (pixel distance ~ 0)")
    tile: int = param(64, "display size of each thumbnail in pixels", min=16, max=256)
    backend: str = BACKEND()


@register(
    "neighbors",
    "inspect",
    NeighborsParams,
    paper="Krizhevsky, Sutskever & Hinton 2012 (Fig. 4: nearest neighbours in last-layer feature space)",
    page="embeddings",
)
def run(net: Backbone, img: Image.Image, p: NeighborsParams, obs: Observer) -> Result:
    """k nearest dataset images of the query in feature space next to those in pixel space."""
    tap = vector_tap(net, p.tap)
    ds = resolve_dataset(net, p.dataset, p.limit)
    fs = dataset_features(net, ds, tap, p.backend, obs=obs.span(0.0, 0.9))
    x = net.preprocess(img).numpy()
    qf = runner(net, [tap], backend=p.backend).run(x)[tap]
    qf = qf.mean(axis=(2, 3)) if qf.ndim == 4 else qf.reshape(1, -1)
    qthumb = to_thumbs(net, x, thumb_size(net))
    qp = qthumb.reshape(1, -1).astype(np.float32) / np.float32(255.0)
    gp = fs.pixels()
    exclude = None
    if p.exclude_self:
        same = np.flatnonzero(np.abs(gp - qp).max(1) <= 1.0 / 255.0)
        exclude = np.asarray([same[0] if len(same) else -1])
    n_avail = len(fs.feats) - (0 if exclude is None else 1)
    if p.k > n_avail:
        raise BadInput(f"neighbors: k={p.k} but the gallery {ds.spec} has only {n_avail} usable images")
    fi, fd, used = knn(fs.feats, qf, p.k, p.metric, p.index, exclude)
    pi, pd, _ = knn(gp, qp, p.k, p.pixel_metric, p.index, exclude)
    report(obs, 0.95, "drawing")

    def side(idx: np.ndarray, dist: np.ndarray) -> dict[str, Any]:
        labs = fs.labels[idx]
        return {
            "index": idx.astype(np.int64),
            "ids": [fs.ids[i] for i in idx],
            "labels": labs.astype(np.int64),
            "label_names": [_name(fs.classes, int(v)) for v in labs],
            "dist": dist.astype(np.float32),
        }

    feat, pix = side(fi[0], fd[0]), side(pi[0], pd[0])
    mosaic = _draw(qthumb[0], fs.thumbs, feat, pix, p.tile)
    report(obs, 1.0, "done")
    return Result(
        "grid",
        mosaic,
        meta={
            "dataset": ds.spec,
            "gallery": len(fs.feats),
            "tap": tap,
            "dim": int(fs.feats.shape[1]),
            "index": used,
            "metric": p.metric,
            "pixel_metric": p.pixel_metric,
            "pixel_space": f"{thumb_size(net)}x{thumb_size(net)} RGB of the preprocessed input",
            "excluded_self": bool(exclude is not None and exclude[0] >= 0),
            **{f"features_{k}": v for k, v in fs.meta.items()},
        },
        image=img,
        extras={"feature": feat, "pixel": pix, "query_feature": qf[0].astype(np.float32)},
    )


def _name(classes: list[str] | None, label: int) -> str:
    if label < 0:
        return ""
    if classes is not None and label < len(classes):
        return classes[label]
    return str(label)


def _draw(
    query: np.ndarray, thumbs: np.ndarray, feat: dict[str, Any], pix: dict[str, Any], tile: int
) -> np.ndarray:
    """Two rows: query then feature-space neighbours; query then pixel-space neighbours, names underneath."""
    k = len(feat["index"])
    pad, strip, head = 4, 11, 13
    w = (k + 1) * (tile + pad) + pad + 6
    h = 2 * (head + tile + strip + pad) + pad
    out = np.full((h, w, 3), 255, dtype=np.uint8)

    def put(a: np.ndarray, y: int, x: int) -> None:
        t = np.asarray(
            Image.fromarray(a).resize(
                (tile, tile), Image.Resampling.NEAREST if a.shape[0] < tile else Image.Resampling.BILINEAR
            )
        )
        out[y : y + tile, x : x + tile] = t

    for r, (title, side) in enumerate((("feature space", feat), ("pixel space", pix))):
        y0 = pad + r * (head + tile + strip + pad)
        out[y0 : y0 + head, :] = label_strip(w, f"{title}: query | {k} nearest", head, fg=0, bg=255)
        y = y0 + head
        put(query, y, pad)
        out[y + tile : y + tile + strip, pad : pad + tile] = label_strip(tile, "query", strip)
        for j in range(k):
            x = pad + 6 + (j + 1) * (tile + pad)
            put(thumbs[side["index"][j]], y, x)
            text = side["label_names"][j] or f"{side['dist'][j]:.3g}"
            out[y + tile : y + tile + strip, x : x + tile] = label_strip(
                tile, text[: max(1, tile // 6)], strip
            )
    return out
