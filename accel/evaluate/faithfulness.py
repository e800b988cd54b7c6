"""Faithfulness of an attribution map: deletion and insertion curves (Petsiuk et al. 2018) beside random maps.

Deletion removes the most salient pixels first and insertion reveals them first; every perturbed copy of every
map (and of its seeded random controls) goes through one batched `Runner.sweep` from the runner pool, so a
whole comparison costs one sweep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import numpy as np
import torch
from PIL import Image

from ..errors import BadInput
from ..result import Result
from ..runtime.runner import runner as pooled_runner
from ..runtime.sweep import Perturbation, Reveal
from .catalogue import EvalBatch, metric
from .flipping import batch_runner, per_image

if TYPE_CHECKING:
    from ..backbone import Backbone
    from ..runtime.runner import Runner

Progress = Callable[[float, str], None]

DIRECTION = {"deletion": "lower is better", "insertion": "higher is better"}
BASELINES = ("petsiuk", "black", "mean", "blur")
MAX_STEPS = 1000


def random_baseline_map(shape: tuple[int, int], seed: int = 0, like: np.ndarray | None = None) -> np.ndarray:
    """A seeded random map (float32 HxW) carrying no information about the image or the model.

    Without `like`: i.i.d. uniform pixels. With `like`: a phase-randomised surrogate of that map: the same
    spatial power spectrum (so the same smoothness and blob size) with random phases (so the blobs land at
    random places). The surrogate is the fair control for deletion/insertion: deleting i.i.d. random pixels
    sprinkles out-of-distribution noise that destroys any prediction faster than removing a contiguous region,
    so a smooth map (Grad-CAM) would "lose" to pixel noise for reasons unrelated to where it points.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise BadInput(f"random map shape must be (H, W) with positive sides, got {shape}")
    rng = np.random.default_rng(seed)
    if like is not None:
        a = np.asarray(like, np.float64)
        if a.shape != tuple(shape):
            raise BadInput(f"like= must have shape {tuple(shape)}, got {a.shape}")
        spec = np.abs(np.fft.fft2(a - a.mean()))
        # phases of real white noise are Hermitian-symmetric, so the surrogate is real with exactly `spec`
        phase = np.exp(1j * np.angle(np.fft.fft2(rng.standard_normal(a.shape))))
        sur = np.fft.ifft2(spec * phase).real
        if np.ptp(sur) > 1e-12 * max(1.0, float(np.abs(a).max())):
            return sur.astype(np.float32)
        # a constant map has no spectrum to copy: fall back to pixels
    return rng.random(tuple(shape), dtype=np.float32)


@dataclass
class _Chain(Perturbation):
    """Several perturbations of the same image forwarded as one sweep (so every batch is full)."""

    parts: Sequence[Perturbation]
    offsets: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = [0]
        for p in self.parts:
            self.offsets.append(self.offsets[-1] + p.n)
        self.n = self.offsets[-1]

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Copies [start, stop) of the concatenated perturbations."""
        pieces = []
        for p, lo, hi in zip(self.parts, self.offsets[:-1], self.offsets[1:]):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                pieces.append(p.make(x0, a - lo, b - lo))
        return np.concatenate(pieces)


@dataclass
class _Ends(Perturbation):
    """The three images every deletion/insertion curve of one image starts or ends on, whatever the map: the
    image itself (deletion step 0, insertion step S), the deletion baseline (step S) and the insertion baseline
    (step 0). Forwarded once for all the curves of a sweep."""

    deletion: np.ndarray
    insertion: np.ndarray
    n: int = 3

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:
        return np.stack([x0, self.deletion, self.insertion][start:stop]).astype(np.float32, copy=False)


@dataclass
class _Inner(Perturbation):
    """Steps 1..S-1 of a Reveal: the copies that depend on the map's order."""

    reveal: Reveal

    def __post_init__(self) -> None:
        self.n = self.reveal.n - 2

    def make(self, x0: np.ndarray, start: int, stop: int) -> np.ndarray:
        return self.reveal.make(x0, start + 1, stop + 1)


def _input_array(net: Backbone, img: Any) -> np.ndarray:
    """PIL image or preprocessed (1,C,H,W)/(C,H,W) array/tensor -> network input (C,H,W) float32."""
    if isinstance(img, Image.Image):
        x = net.preprocess(img).numpy()
    elif isinstance(img, (np.ndarray, torch.Tensor)):
        x = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        x = x.astype(np.float32)
        if x.ndim == 3:
            x = x[None]
    else:
        raise BadInput(f"img must be a PIL image or a preprocessed (1,C,H,W) array, got {type(img).__name__}")
    if x.ndim != 4 or len(x) != 1 or tuple(x.shape[1:]) != tuple(net.input_shape):
        raise BadInput(f"{net.name} expects one input of shape (1,{net.input_shape}), got {x.shape}")
    if not np.isfinite(x).all():
        raise BadInput("input contains NaN or inf")
    return x[0]


def map_array(saliency_map: Any) -> np.ndarray:
    """A Result, tensor or array -> the map as a squeezed numpy array (what both trust checks judge)."""
    m = saliency_map.data if isinstance(saliency_map, Result) else saliency_map
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    return np.squeeze(np.asarray(m))


def _as_map(net: Backbone, saliency_map: Any) -> np.ndarray:
    """A Result or array -> float32 HxW map matching the network input, refusing NaN and wrong shapes."""
    m = map_array(saliency_map).astype(np.float32)
    hw = tuple(net.input_shape[1:])
    if m.shape != hw:
        raise BadInput(f"saliency map must have the input's shape {hw} (H, W), got {m.shape}")
    if not np.isfinite(m).all():
        raise BadInput("saliency map contains NaN or inf")
    return m


def _baselines(net: Backbone, x: np.ndarray, baseline: Any) -> dict[str, np.ndarray]:
    """The (C,H,W) input each curve moves towards/from: deletion fills removed pixels, insertion starts from it."""
    c, h, w = x.shape

    def black() -> np.ndarray:
        return net.normalize(torch.zeros(1, 3, h, w))[0].numpy().astype(np.float32)

    def blur() -> np.ndarray:
        from scipy.ndimage import gaussian_filter

        sigma = max(1.0, 5.0 * h / 224.0)  # Petsiuk et al.: sigma 5 at 224 px; scaled for small inputs
        return np.stack([gaussian_filter(ch, sigma, mode="reflect") for ch in x]).astype(np.float32)

    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise BadInput(
                f"baseline must be one of {list(BASELINES)} or a grey level in 0..1, got {baseline!r}"
            )
        if baseline == "petsiuk":
            return {"deletion": black(), "insertion": blur()}
        b = {"black": black, "blur": blur, "mean": lambda: np.zeros_like(x)}[baseline]()
        return {"deletion": b, "insertion": b}
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        v = float(baseline)
        if not 0.0 <= v <= 1.0:
            raise BadInput(f"a numeric baseline is a grey level in 0..1 pixel units, got {v}")
        b = net.normalize(torch.full((1, 3, h, w), v))[0].numpy().astype(np.float32)
        return {"deletion": b, "insertion": b}
    b = np.asarray(baseline, dtype=np.float32)
    if b.shape != x.shape or not np.isfinite(b).all():
        raise BadInput(f"an array baseline must be a finite network input of shape {x.shape}, got {b.shape}")
    return {"deletion": b, "insertion": b}


def _order(m: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first (stable, so ties keep raster order)."""
    return np.argsort(-m.ravel(), kind="stable")


def _auc(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid area under y(x) over x in [0, 1]."""
    return float(np.trapezoid(y, x))


def _softmax(outs: dict[str, np.ndarray]) -> np.ndarray:
    """Class probabilities of one batch's logits (what every curve plots), float32."""
    z = outs["logits"].astype(np.float64)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


class CurveOptions(TypedDict, total=False):
    """Sweep options of `deletion_insertion`; their defaults are `deletion_insertion_many`'s (declared once)."""

    steps: int
    baseline: str | float | np.ndarray
    backend: str
    progress: Progress | None
    seed: int
    n_random: int
    random: str
    batch_size: int | None
    runner: Runner | None


def deletion_insertion(
    net: Backbone, img: Any, saliency_map: Any, target: int | None = None, **opts: Unpack[CurveOptions]
) -> dict[str, Any]:
    """Deletion and insertion curves + AUCs of a map, beside the same for seeded random maps (Petsiuk et al.).

    Deletion removes the most salient pixels first (towards the baseline): the target probability should fall
    fast (lower AUC is better). Insertion reveals them first on the baseline: it should rise fast (higher AUC is
    better). `baseline="petsiuk"` deletes to black and inserts onto a blurred copy; "black", "mean" (the
    normalisation mean), "blur" or a grey level in 0..1 apply to both. The random baseline (`n_random` seeded
    maps, averaged) is `random="matched"` (phase-randomised surrogates of the map: same smoothness, random
    location; see `random_baseline_map`) or "pixel" (i.i.d. pixels). All copies go through one batched sweep.
    """
    return deletion_insertion_many(net, img, [saliency_map], [target], **opts)[0]


def _check_options(net: Backbone, steps: int, n_random: int, random: str) -> None:
    """BadInput for a headless network or out-of-range sweep options, before any work."""
    if not net.has_head:
        raise BadInput(f"{net.name!r} has no classifier head: deletion/insertion needs class probabilities")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise BadInput(f"steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    if not isinstance(n_random, (int, np.integer)) or not 0 <= n_random <= 20:
        raise BadInput(f"n_random must be an integer in 0..20, got {n_random!r}")
    if random not in ("matched", "pixel"):
        raise BadInput(f"random must be 'matched' (surrogate of the map) or 'pixel' (i.i.d.), got {random!r}")


def _map_target(net: Backbone, saliency_map: Any, target: int | None) -> int | None:
    """The class a map explains: `target`, else the one a Result records, validated against the head."""
    if target is None and isinstance(saliency_map, Result):
        recorded = saliency_map.meta.get("target")
        # methods record {"index", "label", "logit", "probability"}
        target = recorded.get("index") if isinstance(recorded, dict) else recorded
    return net.check_target(target)


def deletion_insertion_many(
    net: Backbone,
    img: Any,
    maps: Sequence[Any],
    targets: Sequence[int | None] | None = None,
    steps: int = 50,
    baseline: str | float | np.ndarray = "petsiuk",
    backend: str = "auto",
    progress: Progress | None = None,
    seed: int = 0,
    n_random: int = 1,
    random: str = "matched",
    batch_size: int | None = None,
    runner: Runner | None = None,
) -> list[dict[str, Any]]:
    """`deletion_insertion` for several maps of one image in a single batched sweep (what Compare scores):
    every batch is full and the runner is started once. Returns one result dict per map, in order."""
    t0 = time.perf_counter()
    _check_options(net, steps, n_random, random)
    if not maps:
        raise BadInput("deletion/insertion needs at least one map")
    targets = list(targets) if targets is not None else [None] * len(maps)
    if len(targets) != len(maps):
        raise BadInput(f"{len(maps)} maps but {len(targets)} targets")
    x = _input_array(net, img)
    bases = _baselines(net, x, baseline)
    plans = []
    reveals: list[Reveal] = []
    for saliency_map, target in zip(maps, targets, strict=True):
        t = _map_target(net, saliency_map, target)
        m = _as_map(net, saliency_map)
        like = m if random == "matched" else None
        first = len(reveals)
        for mm in [m] + [random_baseline_map(m.shape, seed + i, like) for i in range(n_random)]:
            order = _order(mm)
            for mode in ("deletion", "insertion"):
                reveals.append(Reveal(order, int(steps), mode, bases[mode]))
        plans.append((t, m.shape, first, len(reveals)))
    # every curve starts or ends on the image or a baseline: those three copies are forwarded once, not per curve
    chain = _Chain([_Ends(bases["deletion"], bases["insertion"]), *(_Inner(r) for r in reveals)])
    r = (
        runner
        if runner is not None
        else pooled_runner(net, ["logits"], backend=backend, batch_size=batch_size)
    )
    probs = r.sweep(x[None], chain, reduce=_softmax, progress=progress)  # (n_total, classes)
    p_image, p_deleted, p_base = probs[0], probs[1], probs[2]
    meta = {
        "steps": int(steps),
        "baseline": baseline if isinstance(baseline, (str, int, float)) else "array",
        "backend": r.backend,
        "passes": r.last_passes,  # this thread's sweep (pooled runners are shared)
        "perturbations": chain.n,
        "maps_in_sweep": len(maps),
        "seed": seed,
        "n_random": n_random,
        "random": random,
        "wall_s": time.perf_counter() - t0,
    }

    def curve(k: int) -> np.ndarray:
        """Curve k in full: its shared end points around its own inner steps."""
        lo, hi = chain.offsets[k + 1], chain.offsets[k + 2]
        start, end = (p_image, p_deleted) if reveals[k].mode == "deletion" else (p_base, p_image)
        return np.concatenate([start[None], probs[lo:hi], end[None]])

    results = []
    for t, hw, first, last in plans:
        if t is None:
            t = int(np.argmax(p_image))  # the class the unperturbed image is predicted as
        fractions = np.asarray(reveals[first].counts, np.float64) / (hw[0] * hw[1])
        curves = [curve(k)[:, t].astype(np.float64) for k in range(first, last)]
        out = _summarise(net, t, fractions, curves, n_random, random, seed)
        out["meta"] = dict(meta)
        results.append(out)
    return results


def _summarise(
    net: Backbone,
    target: int,
    fractions: np.ndarray,
    curves: list[np.ndarray],
    n_random: int,
    random: str,
    seed: int,
) -> dict[str, Any]:
    """AUCs, the random baseline and the summary table of one map's curves (map first, then random maps)."""

    def entry(curve: np.ndarray, mode: str) -> dict[str, Any]:
        return {"curve": curve, "auc": _auc(curve, fractions), "direction": DIRECTION[mode]}

    out: dict[str, Any] = {
        "target": target,
        "label": net.labels[target] if net.labels else str(target),
        "fractions": fractions,
        "deletion": entry(curves[0], "deletion"),
        "insertion": entry(curves[1], "insertion"),
        "direction": dict(DIRECTION),
    }
    if n_random:
        rd = np.mean(curves[2::2], axis=0)
        ri = np.mean(curves[3::2], axis=0)
        out["random"] = {
            "kind": random,
            "seeds": list(range(seed, seed + n_random)),
            "deletion": {**entry(rd, "deletion"), "aucs": [_auc(c, fractions) for c in curves[2::2]]},
            "insertion": {**entry(ri, "insertion"), "aucs": [_auc(c, fractions) for c in curves[3::2]]},
        }
        out["beats_random"] = {
            "deletion": out["deletion"]["auc"] < out["random"]["deletion"]["auc"],
            "insertion": out["insertion"]["auc"] > out["random"]["insertion"]["auc"],
        }
    out["table"] = [
        {
            "curve": mode,
            "auc": out[mode]["auc"],
            "random_auc": out["random"][mode]["auc"] if n_random else float("nan"),
            "better": DIRECTION[mode],
        }
        for mode in ("deletion", "insertion")
    ]
    out["summary"] = " · ".join(
        f"{row['curve']} AUC {row['auc']:.3f} (random {row['random_auc']:.3f}; {row['better']})"
        for row in out["table"]
    )
    return out


def curve_aucs(
    batch: EvalBatch, mode: str, steps: int = 50, baseline: str | float = "petsiuk", backend: str = "auto"
) -> np.ndarray:
    """Deletion or insertion AUC of every map of a metric batch: the same curve as `deletion_insertion` (no random
    maps: the evaluation suite scores its own), sweeping only the copies of the asked `mode`."""
    _check_options(batch.net, steps, 0, "matched")
    run = batch_runner(batch, backend)
    h, w = batch.maps.shape[1:]

    def one(i: int) -> float:
        x, t = batch.x[i], int(batch.targets[i])
        pert = Reveal(_order(batch.maps[i]), int(steps), mode, _baselines(batch.net, x, baseline)[mode])
        curve = np.asarray(run.sweep(x[None], pert, reduce=lambda o: _softmax(o)[:, t]), np.float64)
        return _auc(curve, np.asarray(pert.counts, np.float64) / (h * w))

    return per_image(batch, mode, one)


@metric("deletion", "faithfulness", higher_is_better=False, paper="Petsiuk et al. 2018, BMVC")
def deletion_metric(
    batch: EvalBatch, steps: int = 50, baseline: str | float = "petsiuk", backend: str = "auto"
) -> np.ndarray:
    """Deletion AUC: target probability as the most salient pixels are removed (lower is better)."""
    return curve_aucs(batch, "deletion", steps, baseline, backend)


@metric("insertion", "faithfulness", higher_is_better=True, paper="Petsiuk et al. 2018, BMVC")
def insertion_metric(
    batch: EvalBatch, steps: int = 50, baseline: str | float = "petsiuk", backend: str = "auto"
) -> np.ndarray:
    """Insertion AUC: target probability as the most salient pixels are revealed (higher is better)."""
    return curve_aucs(batch, "insertion", steps, baseline, backend)
