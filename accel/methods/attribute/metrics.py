"""Trust checks for attribution maps: deletion/insertion curves (Petsiuk et al. 2018) and the cascading
model-randomisation sanity check (Adebayo et al. 2018).

Plain functions, not registered methods: they judge a map produced by any method. Deletion/insertion run as
one batched `Runner.sweep` over lazily built copies (ONNX Runtime by default); the sanity check re-runs a method
on deep copies of the backbone whose layers are re-initialised from the logits down, never touching `net`.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ...errors import BadInput
from ...result import Result
from ...runtime.sweep import Perturbation, Reveal

if TYPE_CHECKING:
    from ...runtime.runner import Runner
    from ...zoo import Backbone

Progress = Callable[[float, str], None]

DIRECTION = {"deletion": "lower is better", "insertion": "higher is better"}
BASELINES = ("petsiuk", "black", "mean", "blur")
SANITY_THRESHOLD = 0.5  # Spearman below this at full randomisation = the map depends on the weights
INSENSITIVE = 0.9  # Spearman at or above this after randomising a layer group = that group made no difference
MAX_STEPS = 1000

# ---------------------------------------------------------------------------------------------------------------
# deletion / insertion


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
        pieces = []
        for p, lo, hi in zip(self.parts, self.offsets[:-1], self.offsets[1:]):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                pieces.append(p.make(x0, a - lo, b - lo))
        return np.concatenate(pieces)


_RUNNERS: weakref.WeakKeyDictionary[Any, dict[tuple[str, int | None], Runner]] = weakref.WeakKeyDictionary()


def _logits_runner(net: Backbone, backend: str, batch_size: int | None) -> Runner:
    """A cached logits runner per backbone (the ONNX export and parity check happen once)."""
    from ...runtime.runner import runner

    per = _RUNNERS.setdefault(net, {})
    key = (backend, batch_size)
    if key not in per:
        per[key] = runner(net, ["logits"], backend=backend, batch_size=batch_size)
    return per[key]


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


def _as_map(net: Backbone, saliency_map: Any) -> np.ndarray:
    """A Result or array -> float32 HxW map matching the network input, refusing NaN and wrong shapes."""
    m = saliency_map.data if isinstance(saliency_map, Result) else saliency_map
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    m = np.asarray(m, dtype=np.float32)
    m = np.squeeze(m)
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


def deletion_insertion(
    net: Backbone,
    img: Any,
    saliency_map: Any,
    target: int | None = None,
    steps: int = 50,
    baseline: str | float | np.ndarray = "petsiuk",
    backend: str = "auto",
    progress: Progress | None = None,
    seed: int = 0,
    n_random: int = 1,
    random: str = "matched",
    batch_size: int | None = None,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Deletion and insertion curves + AUCs of a map, beside the same for seeded random maps (Petsiuk et al.).

    Deletion removes the most salient pixels first (towards the baseline): the target probability should fall
    fast (lower AUC is better). Insertion reveals them first on the baseline: it should rise fast (higher AUC is
    better). `baseline="petsiuk"` deletes to black and inserts onto a blurred copy; "black", "mean" (the
    normalisation mean), "blur" or a grey level in 0..1 apply to both. The random baseline (`n_random` seeded
    maps, averaged) is `random="matched"` (phase-randomised surrogates of the map: same smoothness, random
    location; see `random_baseline_map`) or "pixel" (i.i.d. pixels). All copies go through one batched sweep.
    """
    return deletion_insertion_many(
        net,
        img,
        [saliency_map],
        [target],
        steps,
        baseline,
        backend,
        progress,
        seed,
        n_random,
        random,
        batch_size,
        runner,
    )[0]


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
    if not net.has_head:
        raise BadInput(f"{net.name!r} has no classifier head: deletion/insertion needs class probabilities")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= MAX_STEPS:
        raise BadInput(f"steps must be an integer in 1..{MAX_STEPS}, got {steps!r}")
    if not isinstance(n_random, (int, np.integer)) or not 0 <= n_random <= 20:
        raise BadInput(f"n_random must be an integer in 0..20, got {n_random!r}")
    if random not in ("matched", "pixel"):
        raise BadInput(f"random must be 'matched' (surrogate of the map) or 'pixel' (i.i.d.), got {random!r}")
    if not maps:
        raise BadInput("deletion/insertion needs at least one map")
    targets = list(targets) if targets is not None else [None] * len(maps)
    if len(targets) != len(maps):
        raise BadInput(f"{len(maps)} maps but {len(targets)} targets")
    x = _input_array(net, img)
    bases = _baselines(net, x, baseline)
    plans = []
    parts: list[Reveal] = []
    for saliency_map, target in zip(maps, targets, strict=True):
        if target is None and isinstance(saliency_map, Result):
            target = saliency_map.meta.get("target")
            if isinstance(target, dict):  # methods record {"index", "label", "logit", "probability"}
                target = target.get("index")
        target = net.check_target(target)
        m = _as_map(net, saliency_map)
        hw = m.shape
        like = m if random == "matched" else None
        mm_list = [m] + [random_baseline_map(hw, seed + i, like) for i in range(n_random)]
        first = len(parts)
        for mm in mm_list:
            order = _order(mm)
            for mode in ("deletion", "insertion"):
                parts.append(Reveal(order, int(steps), mode, bases[mode]))
        plans.append((target, hw, first, len(parts)))
    chain = _Chain(parts)

    r = runner if runner is not None else _logits_runner(net, backend, batch_size)

    def reduce(outs: dict[str, np.ndarray]) -> np.ndarray:
        z = outs["logits"].astype(np.float64)
        z = z - z.max(1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(1, keepdims=True)).astype(np.float32)

    probs = r.sweep(x[None], chain, reduce=reduce, progress=progress)  # (n_total, classes)
    wall = time.perf_counter() - t0
    results = []
    for target, hw, first, last in plans:
        if target is None:
            target = int(np.argmax(probs[chain.offsets[first]]))  # the unperturbed image: first deletion copy
        fractions = np.asarray(parts[first].counts, np.float64) / (hw[0] * hw[1])
        curves = [
            probs[chain.offsets[k] : chain.offsets[k + 1], target].astype(np.float64)
            for k in range(first, last)
        ]
        out = _summarise(net, target, fractions, curves, n_random, random, seed)
        out["meta"] = {
            "steps": int(steps),
            "baseline": baseline if isinstance(baseline, (str, int, float)) else "array",
            "backend": r.backend,
            "passes": r.last_passes,  # this thread's sweep (pooled runners are shared)
            "perturbations": chain.n,
            "maps_in_sweep": len(maps),
            "seed": seed,
            "n_random": n_random,
            "random": random,
            "wall_s": wall,
        }
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
            "deletion": {
                **entry(rd, "deletion"),
                "aucs": [_auc(c, fractions) for c in curves[2::2]],
            },
            "insertion": {
                **entry(ri, "insertion"),
                "aucs": [_auc(c, fractions) for c in curves[3::2]],
            },
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


# ---------------------------------------------------------------------------------------------------------------
# model-randomisation sanity check


_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _param_modules(net: Backbone) -> list[str]:
    """Names of modules that own parameters or buffers directly, in forward execution order."""
    mod = net.require_module("the sanity check")
    owns = {
        n
        for n, m in mod.named_modules()
        if n
        and (any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False)))
    }
    executed = [li.name for li in net.layers() if li.name in owns]
    rest = [n for n, _ in mod.named_modules() if n in owns and n not in set(executed)]
    return executed + rest  # modules the hooks never saw (unused) go last, i.e. randomised first


def _group_key(name: str) -> str:
    """The block a module belongs to: the path up to the first numeric index ("_blocks.3._bn1" -> "_blocks.3")."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[: i + 1])
    return name


def layer_groups(net: Backbone) -> list[tuple[str, list[str]]]:
    """Parameterised modules grouped per block, from the top (logits) down: the randomisation cascade's steps.

    A normalisation layer joins the group of the layer before it, so conv+BN is one step.
    """
    mod = net.require_module("the sanity check")
    mods = dict(mod.named_modules())
    groups: list[tuple[str, list[str]]] = []
    for name in _param_modules(net):
        key = _group_key(name)
        if groups and (groups[-1][0] == key or isinstance(mods[name], _NORM_TYPES)):
            groups[-1][1].append(name)
        else:
            groups.append((key, [name]))
    return groups[::-1]


def _reinit(module: nn.Module, seed: int) -> None:
    """Re-initialise one module's own parameters (its reset_parameters, else N(0, 0.02)), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        elif hasattr(module, "_reset_parameters"):
            module._reset_parameters()
        else:
            with torch.no_grad():
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, 0.02)
    for p in module.parameters(recurse=False):
        p.requires_grad_(False)


def _clone(net: Backbone) -> Backbone:
    """A copy of the backbone with its own module (deep copy), so randomising it never touches `net`."""
    c = copy.copy(net)
    c.module = copy.deepcopy(net.require_module("the sanity check"))
    c._hash = None  # weights differ: exports and caches keyed on the hash must not be shared
    return c


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")  # a constant map has no ranking
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a.ravel(), b.ravel()).statistic)


def _unit(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    return float(structural_similarity(_unit(a), _unit(b), data_range=1.0, win_size=win))


def compare_maps(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Adebayo et al.'s similarities: Spearman on |maps| and on signed maps, SSIM on min-max normalised |maps|."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return {
        "spearman": _spearman(np.abs(a), np.abs(b)),
        "spearman_signed": _spearman(a, b),
        "ssim": _ssim(np.abs(a), np.abs(b)),
    }


MethodFn = Callable[["Backbone", Any, int], Any]


def _map_of(out: Any) -> np.ndarray:
    m = out.data if isinstance(out, Result) else out
    if isinstance(m, torch.Tensor):
        m = m.detach().cpu().numpy()
    m = np.squeeze(np.asarray(m, np.float64))
    if m.ndim != 2:
        raise BadInput(f"the sanity check needs a 2-D map, the method returned shape {m.shape}")
    return m


def _points(n: int, max_points: int | None) -> list[int]:
    """Which cascade depths to evaluate: all, or evenly spaced ones always including the first and the last."""
    if not max_points or n <= max_points:
        return list(range(n))
    return sorted({round(v) for v in np.linspace(0, n - 1, max_points)})


def sanity_check(
    net: Backbone,
    method_name: str | MethodFn,
    img: Any,
    target: int | None = None,
    layers: str = "cascade",
    seed: int = 0,
    max_points: int | None = 8,
    progress: Progress | None = None,
    keep_maps: bool = True,
    **method_params: Any,
) -> dict[str, Any]:
    """Cascading model-randomisation check (Adebayo et al. 2018): re-initialise layer groups from the logits
    down on a copy of the backbone, recompute the map and report Spearman/SSIM against the original per layer.

    A map that explains the model should change (Spearman falls towards 0). `passes` needs both checks: the map
    changes as soon as the top group (the logits layer) is randomised (Spearman < 0.9), and it is dissimilar after
    full randomisation (Spearman < 0.5). Guided backprop typically fails the first: randomising the classifier
    leaves it unchanged. `layers="independent"` randomises one group at a time instead of cumulatively.
    `method_name` is a registered method (run via `accel.run`) or a callable `fn(net, img, target) -> map`.
    """
    from ... import registry

    t0 = time.perf_counter()
    if layers not in ("cascade", "independent"):
        raise BadInput(f"layers must be 'cascade' or 'independent', got {layers!r}")
    if max_points is not None and (isinstance(max_points, bool) or int(max_points) < 2):
        raise BadInput(f"max_points must be >= 2 (or None for every layer group), got {max_points!r}")
    if not net.has_head:
        raise BadInput(f"{net.name!r} has no classifier head: the sanity check explains a class score")
    target = net.check_target(target)
    if target is None:
        if not isinstance(img, Image.Image):
            raise BadInput("pass target= when img is not a PIL image")
        with torch.no_grad():
            target = int(net.logits(net.preprocess(img)).argmax(1)[0])

    if isinstance(method_name, str):
        name = method_name
        registry.get(name)  # BadInput for unknown names before any work

        def compute(n: Backbone) -> np.ndarray:
            return _map_of(registry.run(name, n, img, target=target, **method_params))

    elif callable(method_name):
        name = getattr(method_name, "__name__", "callable")
        fn = method_name

        def compute(n: Backbone) -> np.ndarray:
            return _map_of(fn(n, img, target, **method_params))

    else:
        raise BadInput(f"method_name must be a method name or a callable, got {type(method_name).__name__}")

    original = compute(net)
    if not np.isfinite(original).all():
        raise BadInput(f"{name} produced a non-finite map on the original model")
    groups = layer_groups(net)
    if not groups:
        raise BadInput(f"{net.name!r} has no parameterised layers to randomise")
    points = _points(len(groups), max_points)

    rows: list[dict[str, Any]] = [
        {
            "step": 0,
            "layer": "original",
            "randomized": [],
            "spearman": 1.0,
            "spearman_signed": 1.0,
            "ssim": 1.0,
        }
    ]
    maps: list[np.ndarray] = [original]
    work = _clone(net) if layers == "cascade" else None
    done = 0  # cascade: groups[:done] already randomised in `work`
    for k, gi in enumerate(points):
        if layers == "cascade":
            assert work is not None
            mods = dict(work.module.named_modules())
            for g in range(done, gi + 1):
                for mn in groups[g][1]:
                    _reinit(mods[mn], _module_seed(seed, mn))
            done = gi + 1
            randomized = [mn for g in groups[:done] for mn in g[1]]
            n = copy.copy(work)  # a fresh object per step: per-backbone caches never see stale weights
            n._hash = None
        else:
            n = _clone(net)
            mods = dict(n.module.named_modules())
            for mn in groups[gi][1]:
                _reinit(mods[mn], _module_seed(seed, mn))
            randomized = list(groups[gi][1])
        m = compute(n)
        sims = (
            compare_maps(original, m)
            if np.isfinite(m).all()
            else dict.fromkeys(("spearman", "spearman_signed", "ssim"), float("nan"))
        )
        rows.append({"step": k + 1, "layer": groups[gi][0], "randomized": randomized, **sims})
        if keep_maps:
            maps.append(m.astype(np.float32))
        if progress is not None:
            progress((k + 1) / len(points), f"randomised down to {groups[gi][0]}")

    final, top = rows[-1], rows[1]
    decorrelates = bool(np.isfinite(final["spearman"]) and final["spearman"] < SANITY_THRESHOLD)
    unchanged = []  # leading groups whose randomisation leaves the map as it was (cascade: top layers)
    for r in rows[1:]:
        if not (np.isfinite(r["spearman"]) and r["spearman"] >= INSENSITIVE):
            break
        unchanged.append(r["layer"])
    top_sensitive = not unchanged
    ok = decorrelates and top_sensitive
    how = "full" if layers == "cascade" else "last-group"
    head = f"Spearman {final['spearman']:.2f}, SSIM {final['ssim']:.2f} after {how} randomisation"
    if ok:
        verdict = f"{name}: passes: the map changes with the weights ({head}; {top['spearman']:.2f} after {top['layer']})"
    else:
        why = []
        if not top_sensitive:
            why.append(
                f"the map stays the same (Spearman >= {INSENSITIVE}) when {', '.join(unchanged[:3])}"
                + (f" … {unchanged[-1]}" if len(unchanged) > 3 else "")
                + " are randomised"
            )
        if not decorrelates:
            why.append(f"it is still similar after {how} randomisation (>= {SANITY_THRESHOLD})")
        verdict = f"{name}: FAILS: {'; and '.join(why)} ({head}): it reflects the input more than the model"
    table = [{"layer": r["layer"], "spearman": r["spearman"], "ssim": r["ssim"]} for r in rows]
    return {
        "method": name,
        "model": net.name,
        "target": target,
        "mode": layers,
        "seed": seed,
        "groups": [g[0] for g in groups],
        "rows": rows,
        "table": table,
        "original": original.astype(np.float32),
        "maps": maps if keep_maps else [],
        "final": {"spearman": final["spearman"], "ssim": final["ssim"]},
        "top": {"layer": top["layer"], "spearman": top["spearman"], "ssim": top["ssim"]},
        "insensitive_to": unchanged,
        "checks": {"decorrelates_at_full": decorrelates, "sensitive_to_top_layer": top_sensitive},
        "passes": ok,
        "verdict": verdict,
        "meta": {"wall_s": time.perf_counter() - t0, "points": len(points), "layer_groups": len(groups)},
    }


def _module_seed(seed: int, module_name: str) -> int:
    """A per-module seed, so a module's random weights do not depend on which others were randomised first."""
    import zlib

    return (int(seed) * 1_000_003 + zlib.crc32(module_name.encode())) % (2**31 - 1)


def table_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table from a list of dicts (the `table` of either check)."""
    if not rows:
        return ""
    cols = list(columns or rows[0].keys())

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
