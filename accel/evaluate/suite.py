"""The evaluation suite: score chosen attribution methods on chosen metrics over a list of photos or a dataset; the
one entry point the dashboard's Evaluate page, the CLI, the bench and scripts/eval_table.py call.

For every method the maps are computed once (`Explainer`, through `accel.registry.run` on the preprocessed
inputs), then every metric of the catalogue scores them; for metrics with a random baseline the same metric also
scores seeded random maps (`random_baseline_map`, phase-randomised surrogates of each map), the reference a method
has to beat. The result is plain JSON-able data (lists, floats, None for a missing score) with a tidy table
(metric, family, direction, method, mean, sd, random mean) and a Markdown rendering of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import BadInput
from ..registry import SILENT, Observer
from ..registry import get as get_method
from ..registry import run as run_method
from .catalogue import EvalBatch, Metric, get_metric, list_metrics
from .faithfulness import map_array, random_baseline_map

if TYPE_CHECKING:
    from ..backbone import Backbone

MAX_RANDOM = 20


@dataclass
class Explainer:
    """A registered attribution method as the catalogue's explainer: (net, x (N,C,H,W), targets (N,)) -> maps
    (N,H,W) float32, one `accel.registry.run` per input (the preprocessed array is the image, so nothing is
    re-quantised), with fixed extra parameters."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse unknown methods and methods that do not produce attribution maps."""
        spec = get_method(self.method)
        if spec.family != "attribute":
            raise BadInput(f"{self.method!r} is a {spec.family} method; the suite scores attribution methods")
        if "target" in self.params:
            raise BadInput("the suite sets target per image; do not pass it in the method's parameters")

    def __call__(self, net: Backbone, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Maps (N,H,W) of the method for each input and its target."""
        hw = tuple(x.shape[2:])
        maps = []
        for xi, t in zip(np.asarray(x, np.float32), np.asarray(targets).reshape(-1)):
            m = map_array(run_method(self.method, net, xi[None], target=int(t), **self.params))
            if m.shape != hw:
                raise BadInput(f"{self.method} gave a map of shape {m.shape}, not the input's {hw}")
            maps.append(m.astype(np.float32))
        return np.stack(maps)


@dataclass
class Inputs:
    """The photos under evaluation: preprocessed (N,C,H,W), their labels (-1 unknown), ids and original sizes."""

    x: np.ndarray
    labels: np.ndarray
    ids: list[str]
    sizes: list[tuple[int, int]]


def load_inputs(net: Backbone, images: Any, limit: int | None = None) -> Inputs:
    """A list of PIL images or (image, label) pairs, a dataset spec string (accel.datasets.get) or a dataset
    or an already preprocessed (N,C,H,W) array -> preprocessed inputs; `limit` keeps the first images."""
    if isinstance(images, np.ndarray):
        x = np.asarray(images[:limit], np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(net.input_shape) or not len(x):
            raise BadInput(f"{net.name} expects inputs of shape (N,{net.input_shape}), got {images.shape}")
        n = len(x)
        return Inputs(x, np.full(n, -1, np.int64), [f"image{k}" for k in range(n)], [(0, 0)] * n)
    if isinstance(images, str):
        from ..datasets import get as get_dataset

        images = get_dataset(images)
    pics, labels, ids = [], [], []
    for k, item in enumerate(images):
        if limit is not None and k >= limit:
            break
        img, lab, key = (item, None, f"image{k}") if isinstance(item, Image.Image) else (*item, None)[:3]
        if not isinstance(img, Image.Image):
            raise BadInput(f"image {k} is a {type(img).__name__}, not a PIL image")
        pics.append(img)
        labels.append(-1 if lab is None else int(lab))
        ids.append(str(key) if key is not None else f"image{k}")
    if not pics:
        raise BadInput("no images to evaluate")
    x = np.concatenate([net.preprocess(p).numpy() for p in pics]).astype(np.float32)
    return Inputs(x, np.asarray(labels, np.int64), ids, [p.size for p in pics])


def choose_targets(net: Backbone, inp: Inputs, targets: Any, backend: str) -> np.ndarray:
    """Targets per image: "predicted" (arg-max of the network), "label" (the dataset's labels) or explicit ints."""
    if targets is None or targets == "predicted":
        from ..runtime.runner import runner

        return np.argmax(runner(net, ["logits"], backend=backend).run(inp.x)["logits"], 1).astype(np.int64)
    if isinstance(targets, str):
        if targets != "label":
            raise BadInput(
                f"targets must be 'predicted', 'label' or one class index per image, got {targets!r}"
            )
        if (inp.labels < 0).any():
            raise BadInput("targets='label' needs a label for every image")
        t = inp.labels
    else:
        t = np.asarray(list(targets)).reshape(-1)
        if len(t) != len(inp.x):
            raise BadInput(f"need one target per image ({len(inp.x)}), got {len(t)}")
    return np.array([net.check_target(int(v)) for v in t], np.int64)


def floats(a: np.ndarray) -> list[float | None]:
    """A score vector as JSON-able floats, None where a score is missing (NaN)."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(a, np.float64).reshape(-1)]


def random_scores(
    m: Metric, batch: EvalBatch, n_random: int, options: Mapping[str, Any], observer: Observer = SILENT
) -> np.ndarray:
    """The metric on `n_random` seeded random surrogates of each map (seeds batch.seed .. +n_random-1), averaged;
    the observer's progress runs 0..1 over the `n_random` runs. Each surrogate keeps its map's mean (the spectrum's
    DC term, which `random_baseline_map` leaves out): a zero-sum surrogate would make ratio metrics such as
    relevance_mass_accuracy divide by about zero instead of scoring the region's share (their chance level)."""
    runs = []
    for r in range(n_random):
        maps = np.stack(
            [
                random_baseline_map(mm.shape, batch.seed + r, like=mm) + mm.mean(dtype=np.float64)
                for mm in batch.maps
            ]
        ).astype(np.float32)
        span = observer.span(r / n_random, (r + 1) / n_random)
        rb = EvalBatch(batch.net, batch.x, batch.targets, maps, batch.explain, batch.masks, batch.seed, span)
        runs.append(m(rb, **options))
    return np.mean(runs, axis=0)


def resolve_metrics(metrics: Sequence[str] | None) -> list[Metric]:
    """Metric objects by name (every registered metric when None)."""
    return list_metrics() if metrics is None else [get_metric(n) for n in metrics]


@dataclass
class Plan:
    """What one `evaluate` call does, in the order it does it."""

    methods: list[Explainer]
    metrics: list[Metric]
    options: Mapping[str, Mapping[str, Any]]
    n_random: int

    def units(self) -> int:
        """Progress units: per method its maps, then per metric one run plus its random runs."""
        per = 1 + sum(1 + (self.n_random if m.random_baseline else 0) for m in self.metrics)
        return max(1, len(self.methods) * per)


def score_method(
    ex: Explainer, plan: Plan, base: EvalBatch, obs: Observer, out: dict[str, Any], done: int
) -> int:
    """Maps of one method, then every metric (and its random baseline) on them; fills `out`; returns units done."""
    total = plan.units()
    t0 = time.perf_counter()
    n = len(base.x)
    parts = []
    try:
        for i in range(n):  # one image at a time: progress and Stop while the maps are made
            if obs.should_stop():
                out["stopped"] = True
                return done
            parts.append(ex(base.net, base.x[i : i + 1], base.targets[i : i + 1]))
            obs.progress((done + (i + 1) / n) / total, f"{ex.method}: maps {i + 1}/{n}")
        maps = np.concatenate(parts)
    except Exception as e:  # noqa: BLE001 - one method failing must not sink the table
        out["errors"][ex.method] = f"{type(e).__name__}: {e}"
        return done + 1 + sum(1 + (plan.n_random if m.random_baseline else 0) for m in plan.metrics)
    out["timings"][ex.method] = {"maps_s": time.perf_counter() - t0}
    done += 1
    batch = EvalBatch(base.net, base.x, base.targets, maps, ex, base.masks, base.seed, base.observer)
    for m in plan.metrics:
        n_units = 1 + (plan.n_random if m.random_baseline else 0)
        if obs.should_stop():
            out["stopped"] = True
            return done
        if m.needs_masks and batch.masks is None:
            out["skipped"][f"{ex.method}/{m.name}"] = "needs ground-truth masks or boxes"
            done += n_units
            continue
        batch.observer = obs.span(done / total, (done + 1) / total)
        opts = dict(plan.options.get(m.name, {}))
        t1 = time.perf_counter()
        try:
            s = m(batch, **opts)
            out["scores"][ex.method][m.name] = floats(s)
            if m.random_baseline and plan.n_random:
                rest = obs.span((done + 1) / total, (done + n_units) / total)
                out["random"][ex.method][m.name] = floats(random_scores(m, batch, plan.n_random, opts, rest))
        except BadInput as e:
            out["skipped"][f"{ex.method}/{m.name}"] = str(e)
        except Exception as e:  # noqa: BLE001 - recorded beside the table, the other metrics still run
            out["errors"][f"{ex.method}/{m.name}"] = f"{type(e).__name__}: {e}"
        out["timings"][ex.method][m.name] = time.perf_counter() - t1
        done += n_units
        obs.progress(done / total, f"{ex.method}: {m.name} done")
    return done


def evaluate(
    net: Backbone,
    images: Any,
    methods: Sequence[str | Explainer],
    metrics: Sequence[str] | None = None,
    *,
    targets: Any = None,
    masks: np.ndarray | None = None,
    regions: Sequence[Any] | None = None,
    method_params: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    n_random: int = 1,
    seed: int = 0,
    limit: int | None = None,
    backend: str = "auto",
    observer: Observer | None = None,
) -> dict[str, Any]:
    """Score `methods` (registered attribution method names or Explainers) on `metrics` (catalogue names; all when
    None) over `images` (PIL images, (image, label) pairs, a dataset or a dataset spec string).

    `targets`: "predicted" (default), "label" or one class per image. Ground truth for localisation: `masks`
    (N,H,W) aligned with the input, or `regions` (per photo a box list or a mask image, in the photo's pixels).
    `n_random` seeded random maps per image give each metric's random baseline (0: none). The observer sees
    progress and may stop between images; the result then holds what was scored, with "stopped": True.
    """
    obs = observer if observer is not None else SILENT
    if isinstance(n_random, bool) or not isinstance(n_random, int) or not 0 <= n_random <= MAX_RANDOM:
        raise BadInput(f"n_random must be an integer in 0..{MAX_RANDOM}, got {n_random!r}")
    if not methods:
        raise BadInput("choose at least one method")
    params = method_params or {}
    exs = [m if isinstance(m, Explainer) else Explainer(m, dict(params.get(m, {}))) for m in methods]
    plan = Plan(exs, resolve_metrics(metrics), metric_options or {}, n_random)
    if not plan.metrics:
        raise BadInput("choose at least one metric")
    inp = load_inputs(net, images, limit)
    if regions is not None:
        from .localisation import region_masks

        masks = region_masks(net, regions, inp.sizes)
    t = choose_targets(net, inp, targets, backend)
    base = EvalBatch(net, inp.x, t, np.zeros((len(t), *inp.x.shape[2:]), np.float32), masks=masks, seed=seed)
    out: dict[str, Any] = {
        "model": net.name,
        "n_images": len(inp.x),
        "image_ids": inp.ids,
        "targets": [int(v) for v in t],
        "seed": seed,
        "n_random": n_random,
        "methods": [e.method for e in exs],
        "method_params": {e.method: e.params for e in exs},
        "metrics": [metric_info(m) for m in plan.metrics],
        "scores": {e.method: {} for e in exs},
        "random": {e.method: {} for e in exs},
        "skipped": {},
        "errors": {},
        "timings": {},
        "stopped": False,
    }
    t0 = time.perf_counter()
    done = 0
    for ex in exs:
        if obs.should_stop():
            out["stopped"] = True
            break
        obs.progress(done / plan.units(), f"{ex.method}: maps of {len(inp.x)} images")
        done = score_method(ex, plan, base, obs, out, done)
    out["wall_s"] = time.perf_counter() - t0
    out["table"] = tidy_table(out)
    return out


def metric_info(m: Metric) -> dict[str, Any]:
    """A metric's declaration as plain data."""
    return {
        "name": m.name,
        "family": m.family,
        "direction": "higher" if m.higher_is_better else "lower",
        "summary": m.summary,
        "paper": m.paper,
        "random_baseline": m.random_baseline,
    }


def _stats(v: list[float | None] | None) -> tuple[float | None, float | None, int]:
    """Mean, sample sd and count of the present scores."""
    a = np.array([x for x in (v or []) if x is not None], np.float64)
    if not len(a):
        return None, None, 0
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0, len(a)


def tidy_table(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (metric, method): metric, family, direction, method, mean, sd, n, random mean."""
    rows = []
    for info in result["metrics"]:
        for meth in result["methods"]:
            mean, sd, n = _stats(result["scores"].get(meth, {}).get(info["name"]))
            if n == 0:
                continue
            rmean = _stats(result["random"].get(meth, {}).get(info["name"]))[0]
            rows.append(
                {
                    "metric": info["name"],
                    "family": info["family"],
                    "direction": info["direction"],
                    "method": meth,
                    "mean": mean,
                    "sd": sd,
                    "n": n,
                    "random_mean": rmean,
                }
            )
    return rows


def markdown(result: Mapping[str, Any], digits: int = 3) -> str:
    """The result as a Markdown table: a row per method, a column per metric ("mean ± sd"), a last row with
    the random-map baseline averaged over methods; the header says each metric's direction."""
    names = [i["name"] for i in result["metrics"] if any(r["metric"] == i["name"] for r in result["table"])]
    arrows = {i["name"]: "↑" if i["direction"] == "higher" else "↓" for i in result["metrics"]}
    cell = {(r["method"], r["metric"]): r for r in result["table"]}
    lines = [
        "| method | " + " | ".join(f"{n} {arrows[n]}" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for meth in result["methods"]:
        row = [
            f"{cell[meth, n]['mean']:.{digits}f} ± {cell[meth, n]['sd']:.{digits}f}"
            if (meth, n) in cell
            else "–"
            for n in names
        ]
        lines.append(f"| {meth} | " + " | ".join(row) + " |")
    rand = []
    for n in names:
        vals = [
            r["random_mean"] for r in result["table"] if r["metric"] == n and r["random_mean"] is not None
        ]
        rand.append(f"{np.mean(vals):.{digits}f}" if vals else "–")
    lines.append("| *random map* | " + " | ".join(rand) + " |")
    return "\n".join(lines) + "\n"
