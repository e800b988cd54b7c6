"""The metric catalogue: every explanation metric declares its name, family, direction and needs once; the suite,
the CLI, the bench and the dashboard's Evaluate page list and call metrics only through here.

A metric is `fn(batch, **options) -> (N,) float scores`, one per image of the batch; the batch carries what any
metric may need (inputs, targets, maps, an explainer that recomputes maps, ground-truth masks), so a metric never
reaches for a model or a method by itself.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInput
from ..registry import SILENT, Observer

if TYPE_CHECKING:
    from ..backbone import Backbone

# families, in the order pages and tables show them
FAMILIES = ("faithfulness", "localisation", "randomisation", "robustness", "complexity")

# (net, x (N,C,H,W) float32 preprocessed inputs, targets (N,) int) -> (N,H,W) float32 maps
Explainer = Callable[["Backbone", np.ndarray, np.ndarray], np.ndarray]


@dataclass
class EvalBatch:
    """What metrics judge: N preprocessed inputs, the explained classes, the maps under test and how to recompute
    them (randomisation and robustness explain again on changed weights or inputs)."""

    net: Backbone
    x: np.ndarray  # (N,C,H,W) float32, the network's own preprocessing
    targets: np.ndarray  # (N,) int64 class indices
    maps: np.ndarray  # (N,H,W) float32 attributions aligned with x
    explain: Explainer | None = None  # recomputes maps; required by metrics with needs_explainer
    masks: np.ndarray | None = None  # (N,H,W) bool ground-truth regions; required by metrics with needs_masks
    seed: int = 0
    observer: Observer = field(default=SILENT)

    def __post_init__(self) -> None:
        """Refuse inconsistent shapes and non-finite values before any metric runs."""
        self.x = np.asarray(self.x, dtype=np.float32)
        self.maps = np.asarray(self.maps, dtype=np.float32)
        self.targets = np.asarray(self.targets).astype(np.int64).reshape(-1)
        n = len(self.x)
        if self.x.ndim != 4 or n == 0:
            raise BadInput(f"inputs must be a non-empty (N,C,H,W) array, got shape {self.x.shape}")
        if self.maps.shape != (n, *self.x.shape[2:]):
            raise BadInput(f"maps must have shape {(n, *self.x.shape[2:])} (N,H,W), got {self.maps.shape}")
        if len(self.targets) != n:
            raise BadInput(f"need one target per input ({n}), got {len(self.targets)}")
        if not (np.isfinite(self.x).all() and np.isfinite(self.maps).all()):
            raise BadInput("inputs and maps must be finite (no NaN or inf)")
        if self.masks is not None:
            self.masks = np.asarray(self.masks).astype(bool)
            if self.masks.shape != self.maps.shape:
                raise BadInput(f"masks must have the maps' shape {self.maps.shape}, got {self.masks.shape}")


@dataclass(frozen=True)
class Metric:
    """One metric: `fn(batch, **options)` -> (N,) scores; `higher_is_better` states its direction."""

    name: str
    family: str
    higher_is_better: bool
    fn: Callable[..., np.ndarray]
    summary: str
    paper: str
    needs_masks: bool = False
    needs_explainer: bool = False
    random_baseline: bool = True  # whether scoring a seeded random map is a meaningful reference

    def __call__(self, batch: EvalBatch, **options: Any) -> np.ndarray:
        """Scores (N,) float64 for the batch; BadInput when the batch lacks what this metric needs."""
        if self.needs_masks and batch.masks is None:
            raise BadInput(f"{self.name} needs ground-truth masks or boxes for every image")
        if self.needs_explainer and batch.explain is None:
            raise BadInput(f"{self.name} needs the explanation method (it recomputes maps)")
        out = np.asarray(self.fn(batch, **options), dtype=np.float64).reshape(-1)
        if len(out) != len(batch.x):
            raise AssertionError(f"{self.name} returned {len(out)} scores for {len(batch.x)} inputs")
        return out


METRICS: dict[str, Metric] = {}


def metric(
    name: str,
    family: str,
    *,
    higher_is_better: bool,
    paper: str,
    needs_masks: bool = False,
    needs_explainer: bool = False,
    random_baseline: bool = True,
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator: register `fn(batch, **options) -> (N,) scores` as metric `name` of `family`; the first line of
    its docstring is the summary shown in tables and help."""
    if family not in FAMILIES:
        raise ValueError(f"unknown metric family {family!r}; one of {FAMILIES}")

    def deco(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        summary = (fn.__doc__ or name).strip().splitlines()[0]
        METRICS[name] = Metric(
            name, family, higher_is_better, fn, summary, paper, needs_masks, needs_explainer, random_baseline
        )
        return fn

    return deco


def list_metrics(family: str | None = None) -> list[Metric]:
    """Every registered metric (of one family), in family order then name."""
    load_all()
    if family is not None and family not in FAMILIES:
        raise BadInput(f"unknown metric family {family!r}; one of {', '.join(FAMILIES)}")
    ms = [m for m in METRICS.values() if family is None or m.family == family]
    return sorted(ms, key=lambda m: (FAMILIES.index(m.family), m.name))


def get_metric(name: str) -> Metric:
    """The metric called `name`, or BadInput listing the known ones."""
    load_all()
    if name not in METRICS:
        raise BadInput(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def load_all() -> None:
    """Import every module of this package once, so that each metric's `@metric` registration has run (by name,
    through importlib: the catalogue must not import the modules that import it)."""
    package = __name__.rpartition(".")[0]
    for m in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{package}.{m.name}")
