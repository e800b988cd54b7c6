"""Pixel-flipping (Bach et al. 2015) and region perturbation (Samek et al. 2016): remove what a map calls relevant,
most relevant first, and watch the explained class's probability fall.

Both are one cumulative removal per image: copy k replaces the first `counts[k]` pixels of an ordering with a
baseline, and every copy of one image goes through one batched `Runner.sweep` from the runner pool (never one
forward per step). Definitions follow Quantus 0.6 (`PixelFlipping`, `RegionPerturbation`) so that the numbers
agree with it on the same inputs: the baseline "black" is the smallest value of the preprocessed input, the
scores are softmax probabilities of the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import BadInput
from ..runtime.runner import Runner
from ..runtime.runner import runner as pooled_runner
from ..runtime.sweep import Perturbation
from .catalogue import EvalBatch, metric

FILL = ("black", "mean", "zero")


def fill_value(x: np.ndarray, baseline: str | float) -> float:
    """The value removed pixels take: "black" = the input's minimum (Quantus's "black"), "mean" = its mean,
    "zero" = 0 (the normalisation mean), or a number in the network's input units."""
    if isinstance(baseline, str):
        if baseline not in FILL:
            raise BadInput(f"baseline must be one of {list(FILL)} or a number, got {baseline!r}")
        return {"black": float(x.min()), "mean": float(x.mean()), "zero": 0.0}[baseline]
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not math.isfinite(baseline):
        raise BadInput(f"baseline must be one of {list(FILL)} or a finite number, got {baseline!r}")
    return float(baseline)


@dataclass
class Removal(Perturbation):
    """Copy k of an image (C,H,W) with its pixels `order[:counts[k]]` (flat HxW indices, all channels) set to
    `value`; cumulative, as pixel-flipping and region perturbation remove."""

    order: np.ndarray
    counts: list[int]
    value: float

    def __post_init__(self) -> None:
        self.n = len(self.counts)

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Copies [start, stop)."""
        c = x0.shape[0]
        out = np.repeat(x0.reshape(1, c, -1), stop - start, axis=0)
        for k in range(start, stop):
            out[k - start][:, self.order[: self.counts[k]]] = self.value
        return out.reshape(stop - start, *x0.shape)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (what the probability curves plot)."""
    z = logits.astype(np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def class_scores(
    run: Runner, x: np.ndarray, pert: Perturbation, target: int, score: str = "probability"
) -> np.ndarray:
    """The target's softmax probability ("probability"), logit ("logit") or correctness ("correct": 1.0 where the
    arg-max is the target) on every copy of `pert` of one image x (C,H,W), in one batched sweep."""
    if score not in ("probability", "logit", "correct"):
        raise BadInput(f"score must be 'probability', 'logit' or 'correct', got {score!r}")

    def reduce(outs: dict[str, np.ndarray]) -> np.ndarray:
        z = outs["logits"]
        if score == "logit":
            return z[:, target].astype(np.float64)
        if score == "correct":
            return (np.argmax(z, 1) == target).astype(np.float64)
        return softmax(z)[:, target]

    return np.asarray(run.sweep(x[None], pert, reduce=reduce), np.float64)


def batch_runner(batch: EvalBatch, backend: str) -> Runner:
    """The pooled logits runner every faithfulness metric of a batch sweeps with; BadInput for a headless net."""
    if not batch.net.has_head:
        raise BadInput(f"{batch.net.name!r} has no classifier head: faithfulness metrics need class scores")
    return pooled_runner(batch.net, ["logits"], backend=backend)


def per_image(batch: EvalBatch, what: str, fn: Callable[[int], float]) -> np.ndarray:
    """fn(i) for every image of the batch, reporting progress to the batch's observer; images left when the
    observer asks to stop score NaN."""
    n = len(batch.x)
    out = np.full(n, np.nan)
    for i in range(n):
        if batch.observer.should_stop():
            break
        out[i] = fn(i)
        batch.observer.progress((i + 1) / n, f"{what}: image {i + 1}/{n}")
    return out


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """`value` as an int in lo..hi, or BadInput naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= int(value) <= hi:
        raise BadInput(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    return int(value)


def flip_counts(n_pixels: int, pixels_per_step: int) -> list[int]:
    """Pixels removed after each step: pixels_per_step, 2*pixels_per_step, ..., all of them."""
    steps = math.ceil(n_pixels / pixels_per_step)
    return [min((k + 1) * pixels_per_step, n_pixels) for k in range(steps)]


def pixel_flipping_curves(
    batch: EvalBatch, pixels_per_step: int = 0, baseline: str | float = "black", backend: str = "auto"
) -> np.ndarray:
    """(N, S) target probabilities after each of the S removal steps (most relevant pixels first).

    `pixels_per_step` 0 means H*W/32 (rounded up): 32 steps. Quantus's `features_in_step` counts channel values,
    so Quantus with features_in_step = C * pixels_per_step computes the same curve."""
    h, w = batch.maps.shape[1:]
    pps = check_int("pixels_per_step", pixels_per_step, 0, h * w) or math.ceil(h * w / 32)
    counts = flip_counts(h * w, pps)
    if len(counts) < 2:
        raise BadInput(f"pixels_per_step {pps} removes the whole {h}x{w} image in one step: no curve")
    run = batch_runner(batch, backend)
    curves = np.full((len(batch.x), len(counts)), np.nan)

    def one(i: int) -> float:
        order = np.argsort(-batch.maps[i].ravel(), kind="stable")
        pert = Removal(order, counts, fill_value(batch.x[i], baseline))
        curves[i] = class_scores(run, batch.x[i], pert, int(batch.targets[i]))
        return 0.0

    per_image(batch, "pixel flipping", one)
    return curves


def unit_auc(curve: np.ndarray) -> float:
    """Trapezoid area under a curve of equally spaced steps, with the steps spanning [0, 1]."""
    return float(np.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


@metric("pixel_flipping", "faithfulness", higher_is_better=False, paper="Bach et al. 2015, PLoS ONE")
def pixel_flipping(
    batch: EvalBatch, pixels_per_step: int = 0, baseline: str | float = "black", backend: str = "auto"
) -> np.ndarray:
    """Area under the target probability as the most relevant pixels are removed (lower is better).

    AUC = trapezoid of the curve over steps spaced 1/(S-1), i.e. Quantus's per-sample AUC / (S-1)."""
    curves = pixel_flipping_curves(batch, pixels_per_step, baseline, backend)
    return np.array([unit_auc(c) if np.isfinite(c).all() else np.nan for c in curves])


def region_order(a: np.ndarray, patch: int, order: str) -> tuple[np.ndarray, list[int]]:
    """Pixels of an HxW map grouped by non-overlapping patch x patch regions (the grid padded on both sides as
    Quantus pads), regions sorted by their summed relevance (most first for "morf", least first for "lerf");
    returns the flat pixel order and the cumulative pixel count after each region."""
    h, w = a.shape
    top, left = (-h % patch) // 2, (-w % patch) // 2  # Quantus splits the padding, the smaller half first
    gh, gw = math.ceil(h / patch), math.ceil(w / patch)
    padded = np.zeros((gh * patch, gw * patch), np.float64)
    padded[top : top + h, left : left + w] = a
    sums = padded.reshape(gh, patch, gw, patch).sum((1, 3)).ravel()
    ranks = np.argsort(-sums if order == "morf" else sums, kind="stable")
    pixels, counts = [], []
    total = 0
    for r in ranks:
        gr, gc = divmod(int(r), gw)
        rows = np.arange(max(0, gr * patch - top), min(h, (gr + 1) * patch - top))
        cols = np.arange(max(0, gc * patch - left), min(w, (gc + 1) * patch - left))
        idx = (rows[:, None] * w + cols[None, :]).ravel()
        pixels.append(idx)
        total += len(idx)
        counts.append(total)
    return np.concatenate(pixels), counts


def region_curves(
    batch: EvalBatch,
    patch_size: int = 8,
    regions: int = 100,
    order: str = "morf",
    baseline: str | float = "black",
    backend: str = "auto",
) -> np.ndarray:
    """(N, L) drops f(x)_t - f(x_k)_t of the target probability after removing the first k = 1..L regions."""
    h, w = batch.maps.shape[1:]
    patch = check_int("patch_size", patch_size, 1, min(h, w))
    if order not in ("morf", "lerf"):
        raise BadInput(f"order must be 'morf' (most relevant first) or 'lerf' (least first), got {order!r}")
    n_regions = math.ceil(h / patch) * math.ceil(w / patch)
    steps = min(check_int("regions", regions, 1, 100_000), n_regions)
    run = batch_runner(batch, backend)
    curves = np.full((len(batch.x), steps), np.nan)

    def one(i: int) -> float:
        pix, counts = region_order(batch.maps[i], patch, order)
        pert = Removal(pix, [0, *counts[:steps]], fill_value(batch.x[i], baseline))
        p = class_scores(run, batch.x[i], pert, int(batch.targets[i]))
        curves[i] = p[0] - p[1:]
        return 0.0

    per_image(batch, "region perturbation", one)
    return curves


@metric("region_perturbation", "faithfulness", higher_is_better=True, paper="Samek et al. 2016, IEEE TNNLS")
def region_perturbation(
    batch: EvalBatch,
    patch_size: int = 8,
    regions: int = 100,
    order: str = "morf",
    baseline: str | float = "black",
    backend: str = "auto",
) -> np.ndarray:
    """AOPC: the mean drop of the target probability over the first L most relevant regions removed (higher is
    better).

    AOPC = (1/L) sum_k [f(x)_t - f(x_k)_t], x_k with the k most relevant patch_size^2 regions set to the baseline;
    the curve is Quantus's `RegionPerturbation` curve (the mean of it here)."""
    curves = region_curves(batch, patch_size, regions, order, baseline, backend)
    return curves.mean(1)
