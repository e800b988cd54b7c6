"""Randomisation metrics: does the map depend on the model's weights and on the explained class?

`mprt`: independent model-parameter randomisation (Adebayo et al. 2018): each layer alone re-initialised on a copy
of the backbone, the map recomputed, Spearman of |maps| against the map under test, averaged over the layers.
`smooth_mprt` (Hedström et al. 2023): bottom-up cascading randomisation compared on maps averaged over noisy copies
of the input (noise that methods amplify would otherwise decorrelate the maps whatever the weights).
`efficient_mprt` (Hedström et al. 2023): the relative rise of the map's histogram entropy once every layer is
randomised. `random_logit` (Sixt et al. 2020): SSIM between the map for the class and for a random other class.
The cascading check with its verdict stays in `sanity`; these reuse its layer groups, copies and similarities.

None has a random-map baseline: they judge how a method reacts (they recompute maps), not one given map.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInput
from ..registry import SILENT, Observer
from .catalogue import EvalBatch, metric
from .complexity import scale_by_max_abs
from .robustness import explain_batched, seeded_rng
from .sanity import (
    clone_backbone,
    layer_groups,
    param_modules,
    randomise_modules,
    spearman,
    spread_points,
    ssim,
)

if TYPE_CHECKING:
    from ..backbone import Backbone

GRANULARITY = ("group", "module")
ORDERS = ("bottom_up", "top_down")
SIMILARITY = ("ssim", "spearman")
MAX_SMOOTH_SAMPLES = 1000


def layers_to_randomise(net: Backbone, granularity: str = "group") -> list[tuple[str, list[str]]]:
    """(name, modules) steps from the logits down: every block with its normalisation ("group": sanity's cascade
    steps, Adebayo et al.'s layers; 7 on fashion_cnn, 19 on efficientnet_lite0) or every parameterised module
    alone ("module", as Quantus does: a BatchNorm is a layer of its own; 13 and 99)."""
    if granularity not in GRANULARITY:
        raise BadInput(f"granularity must be one of {', '.join(GRANULARITY)}, got {granularity!r}")
    steps = layer_groups(net) if granularity == "group" else [(n, [n]) for n in param_modules(net)][::-1]
    if not steps:
        raise BadInput(f"{net.name!r} has no parameterised layers to randomise")
    return steps


def _points(n: int, max_layers: int | None) -> list[int]:
    """Indices of the steps to score: all, or `max_layers` evenly spaced ones (first and last included; one: the
    first)."""
    if max_layers is not None and (
        isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1
    ):
        raise BadInput(
            f"max_layers must be a whole number >= 1 (or None for every layer), got {max_layers!r}"
        )
    if max_layers == 1:
        return [0]  # the top layer (the logits): Adebayo et al.'s first and most telling step
    return spread_points(n, max_layers)


def explain_on(
    batch: EvalBatch, net: Backbone, targets: np.ndarray | None = None, obs: Observer = SILENT
) -> np.ndarray | None:
    """Maps (N,H,W) of the batch's inputs on `net` for its targets (or `targets`); None when `obs` stopped it."""
    ts = batch.targets if targets is None else targets
    maps, done = explain_batched(batch, net, lambda lo, hi: (batch.x[lo:hi], ts[lo:hi]), len(batch.x), obs)
    return maps if done == len(batch.x) else None


def rank_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Spearman of |a_i| and |b_i| for maps (N,H,W) (NaN where a map is constant: it has no ranking)."""
    return np.array([spearman(np.abs(u), np.abs(v)) for u, v in zip(a, b)])


def nanmean_rows(rows: list[np.ndarray], n: int) -> np.ndarray:
    """Mean over the rows (layers) of (n,) scores ignoring NaN; NaN where no row has a value (or no rows)."""
    out = np.full(n, np.nan)
    if rows:
        r = np.stack(rows)
        ok = ~np.isnan(r).all(axis=0)
        out[ok] = r[:, ok].mean(axis=0, where=~np.isnan(r[:, ok]))
    return out


@metric(
    "mprt",
    "randomisation",
    higher_is_better=False,
    paper="Adebayo et al. 2018 (NeurIPS)",
    needs_explainer=True,
    random_baseline=False,
)
def mprt(batch: EvalBatch, *, granularity: str = "group", max_layers: int | None = None) -> np.ndarray:
    """Mean Spearman |map| vs |map with one layer randomised| over the layers, each alone; lower = depends more on
    the weights (with granularity="module": Quantus `MPRT(layer_order="independent")` averaged over its layers).

    `granularity`: "group" re-initialises a block with its normalisation, "module" every parameterised module
    alone (Quantus); `max_layers`: score that many evenly spaced layers only (None = all)."""
    steps = layers_to_randomise(batch.net, granularity)
    points = _points(len(steps), max_layers)
    rows: list[np.ndarray] = []
    for k, gi in enumerate(points):
        if batch.observer.should_stop():
            break
        net = clone_backbone(batch.net)
        randomise_modules(net, steps[gi][1], batch.seed)
        maps = explain_on(batch, net, obs=batch.observer.span(k / len(points), (k + 1) / len(points)))
        if maps is None:
            break
        rows.append(rank_similarity(batch.maps, maps))
    return nanmean_rows(rows, len(batch.x))


def smoothed(
    batch: EvalBatch, net: Backbone, samples: int, noise: float, obs: Observer = SILENT
) -> np.ndarray | None:
    """Maps (N,H,W) averaged over `samples` copies of each input with Gaussian noise of std noise x (max - min) of
    that input (the last copy clean, as Quantus does); the same noise on every model. None when stopped."""
    n = len(batch.x)
    x = batch.x
    std = noise * (x.reshape(n, -1).max(axis=1) - x.reshape(n, -1).min(axis=1))

    def make(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((hi - lo, *x.shape[1:]), np.float32)
        for j, idx in enumerate(range(lo, hi)):
            c, i = divmod(idx, n)
            out[j] = x[i]
            if c < samples - 1:
                out[j] += (seeded_rng(batch.seed, c, i).standard_normal(x.shape[1:]) * std[i]).astype(
                    np.float32
                )
        return out, batch.targets[np.arange(lo, hi) % n]

    maps, done = explain_batched(batch, net, make, n * samples, obs)
    if done < n * samples:
        return None
    return maps.reshape(samples, n, *maps.shape[1:]).mean(axis=0)


def _check_smooth(samples: int, noise: float, order: str) -> None:
    """BadInput for smooth_mprt options out of range."""
    if (
        isinstance(samples, bool)
        or not isinstance(samples, (int, np.integer))
        or not 1 <= samples <= MAX_SMOOTH_SAMPLES
    ):
        raise BadInput(f"samples must be a whole number in 1..{MAX_SMOOTH_SAMPLES}, got {samples!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.floating)) or not 0 <= noise < np.inf:
        raise BadInput(f"noise must be a number >= 0 (a fraction of the input's range), got {noise!r}")
    if order not in ORDERS:
        raise BadInput(f"order must be one of {', '.join(ORDERS)}, got {order!r}")


@metric(
    "smooth_mprt",
    "randomisation",
    higher_is_better=False,
    paper="Hedström et al. 2023 (XAI in Action, NeurIPS)",
    needs_explainer=True,
    random_baseline=False,
)
def smooth_mprt(
    batch: EvalBatch,
    *,
    samples: int = 50,
    noise: float = 0.1,
    order: str = "bottom_up",
    granularity: str = "group",
    max_layers: int | None = None,
) -> np.ndarray:
    """Mean Spearman of noise-averaged maps before and after cascading randomisation, over the cascade's steps;
    lower = depends more on the weights (with granularity="module": Quantus `SmoothMPRT` averaged over its layers).

    Maps are averaged over `samples` inputs with Gaussian noise (std `noise` x the input's range) on the original
    and on each randomised model, the same noise for all (Quantus draws fresh noise per model, which lowers every
    similarity by the noise alone); layers are randomised cumulatively from the input up (`order="bottom_up"`, the
    paper's advice) or from the logits down, by `granularity` as in `mprt`. The map under test is not used: its
    smoothed version is recomputed."""
    _check_smooth(samples, noise, order)
    steps = layers_to_randomise(batch.net, granularity)
    if order == "bottom_up":
        steps = steps[::-1]
    points = _points(len(steps), max_layers)
    obs, total = batch.observer, len(points) + 1
    original = smoothed(batch, batch.net, int(samples), float(noise), obs.span(0, 1 / total))
    rows: list[np.ndarray] = []
    work, done = clone_backbone(batch.net), 0
    for k, gi in enumerate(points):
        if original is None or obs.should_stop():
            break
        randomise_modules(work, [m for s in steps[done : gi + 1] for m in s[1]], batch.seed)
        done = gi + 1
        net = copy.copy(work)  # a fresh object per step: per-backbone caches never see stale weights
        net.weights_changed()
        maps = smoothed(batch, net, int(samples), float(noise), obs.span((k + 1) / total, (k + 2) / total))
        if maps is None:
            break
        rows.append(rank_similarity(original, maps))
    return nanmean_rows(rows, len(batch.x))


def histogram_entropy(maps: np.ndarray, bins: int) -> np.ndarray:
    """(N,) Shannon entropy (nats) of each map's histogram over `bins` equal bins spanning its own range."""
    from scipy.stats import entropy

    return np.array([float(entropy(np.histogram(m, bins=bins)[0])) for m in maps])


@metric(
    "efficient_mprt",
    "randomisation",
    higher_is_better=True,
    paper="Hedström et al. 2023 (XAI in Action, NeurIPS)",
    needs_explainer=True,
    random_baseline=False,
)
def efficient_mprt(batch: EvalBatch, *, bins: int = 100) -> np.ndarray:
    """Relative rise of the map's complexity when every layer is randomised, (H_random - H) / H with H the
    entropy of the map's `bins`-bin histogram; higher = the map loses its structure with the model (Quantus
    `EfficientMPRT`). A map with one value (H = 0) scores NaN."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 2 <= bins <= 10_000:
        raise BadInput(f"bins must be a whole number in 2..10000, got {bins!r}")
    net = clone_backbone(batch.net)
    randomise_modules(net, param_modules(net), batch.seed)
    maps = explain_on(batch, net, obs=batch.observer)
    if maps is None:
        return np.full(len(batch.x), np.nan)
    h0, h1 = histogram_entropy(batch.maps, int(bins)), histogram_entropy(maps, int(bins))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (h1 - h0) / h0
    out[h0 == 0] = np.nan
    return out


def other_classes(targets: np.ndarray, classes: int, seed: int) -> np.ndarray:
    """One class per target drawn uniformly among the other `classes` - 1, as Quantus's RandomLogit draws it
    (legacy RandomState(seed).randint over the remaining classes in ascending order), so seeds reproduce it."""
    r = np.random.RandomState(int(seed) & 0xFFFFFFFF).randint(0, classes - 1, len(targets))
    return np.where(r >= targets, r + 1, r).astype(np.int64)


def _ssim_joint(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two maps over their joint range (Quantus's convention); NaN when both are one constant value."""
    rng = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    return ssim(a, b, data_range=rng) if rng > 0 else float("nan")


@metric(
    "random_logit",
    "randomisation",
    higher_is_better=False,
    paper="Sixt et al. 2020 (ICML)",
    needs_explainer=True,
    random_baseline=False,
)
def random_logit(batch: EvalBatch, *, similarity: str = "ssim") -> np.ndarray:
    """Similarity of the map for the explained class and the map for a random other class (seeded); lower =
    the map depends on the class (Quantus `RandomLogit`, on the 2-D maps).

    Both maps are divided by their max |a| first; "ssim" over their joint range (Sixt et al.), or "spearman" of
    |maps|."""
    if similarity not in SIMILARITY:
        raise BadInput(f"similarity must be one of {', '.join(SIMILARITY)}, got {similarity!r}")
    classes = batch.net.num_classes
    if classes is None or classes < 2:
        raise BadInput(
            f"{batch.net.name!r} needs a classifier head with at least two classes for random_logit"
        )
    off = other_classes(batch.targets, classes, batch.seed)
    maps = explain_on(batch, batch.net, targets=off, obs=batch.observer)
    if maps is None:
        return np.full(len(batch.x), np.nan)
    if similarity == "spearman":
        return rank_similarity(batch.maps, maps)
    a, b = scale_by_max_abs(batch.maps), scale_by_max_abs(maps)
    return np.array([_ssim_joint(u, v) for u, v in zip(a, b)])
