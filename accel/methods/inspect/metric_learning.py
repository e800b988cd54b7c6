"""Metric learning on frozen features: a small projection head trained with a triplet loss (the triplet network).

The dataset's feature vectors (or raw pixels) are computed once through the runner; a two-layer head maps them
to a unit-norm embedding trained with a batch-hard triplet loss (Hermans et al. 2017) on a training split. On the
held-out split we report recall@1 (the nearest other image shares the label) before and after, and return the
2-D PCA of the learned embedding with the raw features' PCA for comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ...errors import BadInput
from ...registry import BACKEND, DATASET, SEED, SILENT, TAP, Observer, param, register
from ...result import Result
from ._common import (
    dataset_features,
    report,
    resolve_dataset,
    scatter_image,
    torch_threads,
    vector_tap,
)
from .embedding import pca
from .neighbors import knn

if TYPE_CHECKING:
    from ...zoo import Backbone


@dataclass
class MetricLearningParams:
    dataset: str = DATASET(
        "labelled dataset: fashion_mnist[:train|test], foolbox:<kind>, or a folder with one subfolder per class ('auto' = the model's)"
    )
    limit: int = param(6000, "use the first N images (0 = all)", min=0, max=100_000)
    tap: str = TAP(
        help="frozen input: 'embedding', 'logits', a layer (spatially averaged), or 'pixels'",
        extra=("pixels",),
    )
    dim: int = param(32, "output dimension of the projection head", min=2, max=1024)
    hidden: int = param(256, "hidden width of the projection head", min=4, max=4096)
    epochs: int = param(15, "passes over the training split", min=1, max=1000)
    batch: int = param(
        128, "triplet mining batch (batch-hard: hardest positive and negative per anchor)", min=8, max=8192
    )
    margin: float = param(0.5, "triplet margin (embeddings have unit norm)", min=0.0, max=2.0)
    lr: float = param(1e-3, "Adam learning rate", min=1e-6, max=1.0)
    test_fraction: float = param(0.25, "held-out fraction for recall@1", min=0.05, max=0.95)
    seed: int = SEED("split, initialisation, batches")
    backend: str = BACKEND()


def recall_at_1(x: np.ndarray, labels: np.ndarray, metric: str = "cosine") -> float:
    """Leave-one-out recall@1: fraction of rows whose nearest other row has the same label."""
    idx, _, _ = knn(x, x, 1, metric, exclude=np.arange(len(x)))
    return float((labels[idx[:, 0]] == labels).mean())


def train_head(
    x: np.ndarray,
    y: np.ndarray,
    dim: int,
    hidden: int,
    epochs: int,
    batch: int,
    margin: float,
    lr: float,
    seed: int,
    obs: Observer = SILENT,
) -> tuple[Any, list[float]]:
    """Train Linear-ReLU-Linear + L2 norm with batch-hard triplet loss; returns (head, mean loss per epoch)."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, dim))
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    losses: list[float] = []
    n = len(xt)
    for ep in range(epochs):
        perm = torch.randperm(n, generator=g)
        tot, cnt = 0.0, 0
        for s in range(0, n, batch):
            b = perm[s : s + batch]
            if len(b) < 4:
                continue
            e = nn.functional.normalize(head(xt[b]), dim=1)
            lab = yt[b]
            d = torch.cdist(e, e)
            same = lab[:, None] == lab[None, :]
            eye = torch.eye(len(b), dtype=torch.bool)
            pos = (d * (same & ~eye)).max(1).values
            neg = d.masked_fill(same, float("inf")).min(1).values
            valid = torch.isfinite(neg) & (same & ~eye).any(1)
            if not valid.any():
                continue
            loss = torch.relu(pos - neg + margin)[valid].mean()
            if not torch.isfinite(loss):
                raise BadInput("metric_learning: the loss became NaN/inf; lower `lr`")
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * int(valid.sum())
            cnt += int(valid.sum())
        losses.append(tot / max(cnt, 1))
        obs.progress((ep + 1) / epochs, f"epoch {ep + 1}/{epochs} loss {losses[-1]:.4f}")
    return head.eval(), losses


@register(
    "metric_learning",
    "inspect",
    MetricLearningParams,
    paper="Schroff et al. 2015 (FaceNet triplet loss); Hermans, Beyer & Leibe 2017 (batch-hard triplets)",
    needs_image=False,
)
def run(net: Backbone, img: Any, p: MetricLearningParams, obs: Observer) -> Result:
    """Train a triplet-loss projection head on frozen features; recall@1 before/after and the new 2-D map."""
    import torch

    tap = "embedding" if p.tap == "pixels" else vector_tap(net, p.tap)
    if p.tap == "pixels" and not net.embedding_layer:
        tap = vector_tap(net, "logits")
    ds = resolve_dataset(net, p.dataset, p.limit)
    if not ds.labelled:
        raise BadInput(
            f"metric_learning needs labelled images; {ds.spec} has no labels (use class subfolders)"
        )
    fs = dataset_features(net, ds, tap, p.backend, obs=obs.span(0.0, 0.3))
    feats = fs.pixels() if p.tap == "pixels" else fs.feats
    labels = fs.labels
    if (labels < 0).any():
        raise BadInput(
            f"metric_learning needs labels; {ds.spec} has unlabelled images (use class subfolders)"
        )
    classes = np.unique(labels)
    if len(classes) < 2:
        raise BadInput(f"metric_learning needs at least 2 classes; {ds.spec} has {len(classes)}")
    rng = np.random.default_rng(p.seed)
    perm = rng.permutation(len(feats))
    n_test = int(round(p.test_fraction * len(feats)))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    if len(train) < 8 or len(test) < 4:
        raise BadInput(
            f"metric_learning: {len(feats)} images are too few for a train/test split; raise `limit`"
        )
    # centre per dimension, scale by one global std (per-dimension scaling would blow up constant border pixels)
    mu = feats[train].mean(0)
    sd = float(feats[train].std()) or 1.0
    xs = ((feats - mu) / sd).astype(np.float32)
    t0 = time.perf_counter()
    before = recall_at_1(feats[test], labels[test])
    with torch_threads(1):  # a tiny MLP: one thread beats two fighting over busy cores
        head, losses = train_head(
            xs[train],
            labels[train],
            p.dim,
            p.hidden,
            p.epochs,
            p.batch,
            p.margin,
            p.lr,
            p.seed,
            obs=obs.span(0.3, 0.95),
        )
    with torch.no_grad():
        z = torch.nn.functional.normalize(head(torch.from_numpy(xs)), dim=1).numpy()
    if not np.isfinite(z).all():
        raise BadInput("metric_learning: the head produced NaN/inf embeddings; lower `lr`")
    after = recall_at_1(z[test], labels[test])
    train_after = recall_at_1(z[train], labels[train])
    pts = pca(z[test], 2)
    pts_before = pca(feats[test], 2)
    sc_b, sc_a = scatter_image(pts_before, labels[test], 384), scatter_image(pts, labels[test], 384)
    side = np.concatenate([sc_b, np.full((384, 8, 3), 255, np.uint8), sc_a], axis=1)
    report(obs, 1.0, f"recall@1 {before:.3f} -> {after:.3f}")
    return Result(
        "points",
        pts,
        meta={
            "dataset": ds.spec,
            "tap": p.tap,
            "train": len(train),
            "test": len(test),
            "recall@1_before": before,
            "recall@1_after": after,
            "recall@1_train_after": train_after,
            "final_loss": losses[-1] if losses else None,
            "train_s": round(time.perf_counter() - t0, 3),
            **{f"features_{k}": v for k, v in fs.meta.items()},
        },
        extras={
            "labels": labels[test].copy(),
            "ids": [fs.ids[i] for i in test],
            "classes": fs.classes,
            "points_before": pts_before,
            "embedding": z[test],
            "losses": np.asarray(losses, dtype=np.float32),
            "recall_before": before,
            "recall_after": after,
            "image": Image.fromarray(side),
            "head": head,
        },
    )
