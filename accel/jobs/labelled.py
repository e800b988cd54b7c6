"""Explaining a labelled dataset: every image's prediction beside its true class, the chosen methods' maps for each,
and the confusion matrix; what the dashboard's Dataset page shows, stores and shares.

Predictions run batched through the one runner (ONNX Runtime when it works); maps run through `accel.run`, so they
are the methods' own maps (the same as `convlens job explain`, which runs one method over a folder locally or on
Ray). The true class comes from the dataset: Fashion-MNIST and foolbox's photos carry class indices; a folder's
subfolder names are matched to the model's labels (case and `_`/space insensitive) or read as class indices.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import BadInput
from ..registry import SILENT, Observer

if TYPE_CHECKING:
    from ..backbone import Backbone
    from ..datasets import Dataset
    from ..result import Result

MAX_METHODS = 6  # methods per dataset run (each is one map per image)
EXPLAIN = ("predicted", "true")  # which class each map explains


def _norm(name: str) -> str:
    """A class name compared loosely: case, '_', '-' and '/' (not allowed in folder names) do not matter."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").replace("/", " ").split())


def truth_indices(net: Backbone, ds: Dataset, labels: Sequence[int | None]) -> tuple[np.ndarray, list[str]]:
    """Each item's true class as an index of the model's head (-1 when unknown), and notes on names that match no
    class of the model."""
    names = ds.classes
    n_cls = net.num_classes or 0
    if names is None:  # the dataset's labels are class indices already
        out = np.asarray([lab if lab is not None and 0 <= lab < n_cls else -1 for lab in labels], np.int64)
        return out, []
    model = {_norm(lab): i for i, lab in enumerate(net.labels or [])}
    mapping: dict[int, int] = {}
    unmatched: list[str] = []
    for k, name in enumerate(names):
        if _norm(name) in model:
            mapping[k] = model[_norm(name)]
        elif name.isdigit() and int(name) < n_cls:
            mapping[k] = int(name)
        else:
            unmatched.append(name)
    notes = (
        [
            f"{len(unmatched)} class folder(s) match no class of {net.name}: {', '.join(unmatched[:5])}; "
            "their images count as unlabelled"
        ]  # fmt: skip
        if unmatched
        else []
    )
    return np.asarray([mapping.get(lab, -1) if lab is not None else -1 for lab in labels], np.int64), notes


@dataclass
class LabelledRun:
    """A dataset explanation: per image its id, truth, prediction, probability and maps (N, methods, H, W)."""

    ids: list[str]
    truth: np.ndarray  # (N,) model class index, -1 unknown
    pred: np.ndarray  # (N,) top-1 class
    prob: np.ndarray  # (N,) top-1 probability
    explained: np.ndarray  # (N,) the class each map explains
    methods: list[str]
    maps: np.ndarray  # (N, M, H, W) float32
    thumbs: np.ndarray  # (N, h, w, 3) uint8 network inputs, for display
    notes: list[str] = field(default_factory=list)
    stopped: bool = False
    seconds: float = 0.0

    @property
    def labelled(self) -> np.ndarray:
        """Which images have a known true class."""
        return self.truth >= 0

    def accuracy(self) -> float | None:
        """Top-1 accuracy over the labelled images (None when none is labelled)."""
        k = self.labelled
        return float((self.pred[k] == self.truth[k]).mean()) if k.any() else None

    def confusion(self) -> tuple[np.ndarray, list[int]]:
        """The confusion matrix (rows: true, columns: predicted) over the classes that occur, and those classes."""
        k = self.labelled
        classes = sorted(set(self.truth[k].tolist()) | set(self.pred[k].tolist()))
        pos = {c: i for i, c in enumerate(classes)}
        m = np.zeros((len(classes), len(classes)), np.int64)
        for t, p in zip(self.truth[k], self.pred[k]):
            m[pos[int(t)], pos[int(p)]] += 1
        return m, classes

    def rows(self, labels: Sequence[str] | None) -> list[dict[str, Any]]:
        """One plain row per image (for tables and JSON): id, truth, prediction, probability, correct."""

        def name(c: int) -> str:
            return "" if c < 0 else (labels[c] if labels is not None and c < len(labels) else str(c))

        return [
            {
                "i": i,
                "id": self.ids[i],
                "truth": name(int(self.truth[i])),
                "predicted": name(int(self.pred[i])),
                "probability": round(float(self.prob[i]), 4),
                "correct": None if self.truth[i] < 0 else bool(self.pred[i] == self.truth[i]),
                "explained": name(int(self.explained[i])),
            }
            for i in range(len(self.ids))
        ]


def _check(net: Backbone, methods: Sequence[str], explain: str) -> None:
    """BadInput for a headless model, unknown or too many methods, or an unknown explain mode, before any work."""
    from ..registry import get

    if not net.has_head:
        raise BadInput(
            f"{net.name} has no classifier head: a dataset explanation compares predictions with labels"
        )
    if not methods or len(methods) > MAX_METHODS:
        raise BadInput(f"choose 1 to {MAX_METHODS} methods, got {len(methods)}")
    for m in methods:
        if get(m).family != "attribute":
            raise BadInput(f"{m} is not an attribution method")
    if explain not in EXPLAIN:
        raise BadInput(f"explain must be one of {EXPLAIN}, got {explain!r}")


def _predict(net: Backbone, xs: np.ndarray, backend: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 class and probability of a preprocessed batch, through the pooled runner."""
    from ..runtime.runner import runner

    logits = runner(net, ["logits"], backend=backend).run(xs)["logits"].astype(np.float64)
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return p.argmax(1), p.max(1)


def explain_labelled(
    net: Backbone,
    ds: Dataset,
    methods: Sequence[str],
    params: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    explain: str = "predicted",
    backend: str = "auto",
    observer: Observer = SILENT,
) -> LabelledRun:
    """Predict every image of `ds` (batched), then explain each with every method in `methods` (the predicted or
    the true class); stops between images when the observer asks, keeping what was done."""
    from ..registry import run

    _check(net, methods, explain)
    t0 = time.perf_counter()
    ds.check_size()
    items = list(ds)
    if not items:
        raise BadInput("the dataset has no images")
    xs = np.concatenate([net.preprocess(it.image).numpy() for it in items]).astype(np.float32)
    truth, notes = truth_indices(net, ds, [it.label for it in items])
    pred, prob = _predict(net, xs, backend)
    explained = np.where((truth >= 0) & (explain == "true"), truth, pred)
    n, (_, h, w) = len(items), net.input_shape
    maps = np.zeros((n, len(methods), h, w), np.float32)
    done = 0
    for i in range(n):
        if observer.should_stop():
            break
        for j, m in enumerate(methods):
            res = run(m, net, xs[i : i + 1], target=int(explained[i]), **dict((params or {}).get(m, {})))
            maps[i, j] = res.data
        done = i + 1
        observer.progress(done / n, f"explained {done}/{n} images")
    thumbs = np.stack(
        [np.asarray(net.deprocess(net.preprocess(it.image)).convert("RGB")) for it in items[:done]]
    )
    return LabelledRun(
        [it.id for it in items[:done]],
        truth[:done],
        pred[:done],
        prob[:done],
        explained[:done],
        list(methods),
        maps[:done],
        thumbs,
        notes + ds.notes(),
        stopped=done < n,
        seconds=round(time.perf_counter() - t0, 2),
    )


def to_result(r: LabelledRun, net: Backbone, max_rows: int = 12) -> Result:
    """The run as a storable Result: a mosaic (image, then each method's overlay on one colour scale per row) of
    the first mistakes then the rest, with the table, the maps and the confusion matrix in meta and extras."""
    from ..images import make_grid, overlay
    from ..result import Result

    order = sorted(range(len(r.ids)), key=lambda i: (r.truth[i] < 0 or r.pred[i] == r.truth[i], -r.prob[i]))
    tiles: list[np.ndarray] = []
    for i in order[:max_rows]:
        base = Image.fromarray(r.thumbs[i])
        lo, hi = float(r.maps[i].min()), float(r.maps[i].max())
        tiles.append(r.thumbs[i])
        tiles += [np.asarray(overlay(base, r.maps[i, j], vmin=lo, vmax=hi)) for j in range(len(r.methods))]
    mosaic = make_grid(tiles, ncols=1 + len(r.methods), pad=2) if tiles else np.zeros((1, 1, 3), np.uint8)
    conf, classes = r.confusion()
    labels = net.labels
    meta = {
        "images": len(r.ids),
        "labelled": int(r.labelled.sum()),
        "accuracy": r.accuracy(),
        "methods": r.methods,
        "stopped": r.stopped,
        "wall_s": r.seconds,
        "notes": r.notes,
        "table": r.rows(labels),
        "confusion_classes": [labels[c] if labels and c < len(labels) else str(c) for c in classes],
    }
    extras = {"maps": r.maps, "confusion": conf, "thumbs": r.thumbs}
    return Result("grid", mosaic, meta, extras=extras)
