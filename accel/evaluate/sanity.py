"""The cascading model-randomisation sanity check (Adebayo et al. 2018): does a map depend on the weights?

The check re-runs a method on copies of the backbone whose layer groups are re-initialised from the logits down
(never touching `net`) and compares each map with the original (Spearman, SSIM).
"""

from __future__ import annotations

import copy
import time
import warnings
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import BadInput
from .faithfulness import map_array

if TYPE_CHECKING:
    from ..backbone import Backbone

Progress = Callable[[float, str], None]
MethodFn = Callable[..., Any]

SANITY_THRESHOLD = 0.5  # Spearman below this at full randomisation = the map depends on the weights
INSENSITIVE = 0.9  # Spearman at or above this after randomising a layer group = that group made no difference

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_SIMILARITIES = ("spearman", "spearman_signed", "ssim")


def param_modules(net: Backbone) -> list[str]:
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
    for name in param_modules(net):
        key = _group_key(name)
        if groups and (groups[-1][0] == key or isinstance(mods[name], _NORM_TYPES)):
            groups[-1][1].append(name)
        else:
            groups.append((key, [name]))
    return groups[::-1]


def _module_seed(seed: int, module_name: str) -> int:
    """A per-module seed, so a module's random weights do not depend on which others were randomised first."""
    return (int(seed) * 1_000_003 + zlib.crc32(module_name.encode())) % (2**31 - 1)


def _reinit(module: nn.Module, seed: int) -> None:
    """Re-initialise one module's own parameters (its reset_parameters, else N(0, 0.02)), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
        if callable(reset):
            reset()
        else:
            with torch.no_grad():
                for p in module.parameters(recurse=False):
                    p.normal_(0.0, 0.02)
    for p in module.parameters(recurse=False):
        p.requires_grad_(False)


def randomise_modules(net: Backbone, names: list[str], seed: int) -> None:
    """Re-initialise the named modules of `net` in place, each with its own seed."""
    mods = dict(net.require_module("the sanity check").named_modules())
    for mn in names:
        _reinit(mods[mn], _module_seed(seed, mn))


def clone_backbone(net: Backbone) -> Backbone:
    """A copy of the backbone with its own module (deep copy), so randomising it never touches `net`."""
    c = copy.copy(net)
    c.module = copy.deepcopy(net.require_module("the sanity check"))
    c.weights_changed()  # weights differ: exports and caches keyed on the hash must not be shared
    return c


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (NaN when one is constant: it has no ranking)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a.ravel(), b.ravel()).statistic)


def _unit(a: np.ndarray) -> np.ndarray:
    """Min-max scaling to 0..1 (a constant map becomes 0)."""
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float | None = None) -> float:
    """SSIM of two maps with the largest odd window up to 7 that fits (NaN below 3).

    `data_range=None`: both maps min-max normalised to 0..1 first (Adebayo et al.); a number: the maps as they are,
    over that range (Quantus's random-logit test passes the joint range of both)."""
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return float("nan")
    if data_range is None:
        a, b, data_range = _unit(a), _unit(b), 1.0
    return float(structural_similarity(a, b, data_range=data_range, win_size=win))


def compare_maps(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Adebayo et al.'s similarities: Spearman on |maps| and on signed maps, SSIM on min-max normalised |maps|."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return {
        "spearman": spearman(np.abs(a), np.abs(b)),
        "spearman_signed": spearman(a, b),
        "ssim": ssim(np.abs(a), np.abs(b)),
    }


def _map_of(out: Any) -> np.ndarray:
    """A method's output (Result, tensor or array) as a 2-D float64 map."""
    m = map_array(out).astype(np.float64)
    if m.ndim != 2:
        raise BadInput(f"the sanity check needs a 2-D map, the method returned shape {m.shape}")
    return m


def spread_points(n: int, max_points: int | None) -> list[int]:
    """Which cascade depths to evaluate: all, or evenly spaced ones always including the first and the last."""
    if not max_points or n <= max_points:
        return list(range(n))
    return sorted({round(v) for v in np.linspace(0, n - 1, max_points)})


def _explainer(
    method_name: str | MethodFn, img: Any, target: int, params: dict[str, Any]
) -> tuple[str, Callable[[Backbone], np.ndarray]]:
    """(display name, backbone -> map) for a registered method name (run via `accel.run`) or a callable."""
    from .. import registry

    if isinstance(method_name, str):
        name = method_name
        registry.get(name)  # BadInput for unknown names before any work

        def compute(n: Backbone) -> np.ndarray:
            return _map_of(registry.run(name, n, img, target=target, **params))

        return name, compute
    if callable(method_name):
        fn = method_name

        def call(n: Backbone) -> np.ndarray:
            return _map_of(fn(n, img, target, **params))

        return getattr(method_name, "__name__", "callable"), call
    raise BadInput(f"method_name must be a method name or a callable, got {type(method_name).__name__}")


def _predicted(net: Backbone, img: Any, target: int | None) -> int:
    """The class to explain: `target` validated, else the backbone's prediction for a PIL image."""
    t = net.check_target(target)
    if t is not None:
        return t
    if not isinstance(img, Image.Image):
        raise BadInput("pass target= when img is not a PIL image")
    with torch.no_grad():
        return int(net.logits(net.preprocess(img)).argmax(1)[0])


def _cascade(
    net: Backbone,
    groups: list[tuple[str, list[str]]],
    points: list[int],
    compute: Callable[[Backbone], np.ndarray],
    original: np.ndarray,
    cumulative: bool,
    seed: int,
    progress: Progress | None,
) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
    """Randomise down to each chosen depth (cumulatively, or one group at a time), recompute and compare.

    Returns one row per depth (layer, what was randomised, similarities) and the maps in the same order."""
    rows: list[dict[str, Any]] = []
    maps: list[np.ndarray] = []
    work = clone_backbone(net) if cumulative else None
    done = 0  # cumulative: groups[:done] already randomised in `work`
    for k, gi in enumerate(points):
        if work is not None:
            randomise_modules(work, [mn for g in groups[done : gi + 1] for mn in g[1]], seed)
            done = gi + 1
            randomized = [mn for g in groups[:done] for mn in g[1]]
            n = copy.copy(work)  # a fresh object per step: per-backbone caches never see stale weights
            n.weights_changed()
        else:
            n = clone_backbone(net)
            randomized = list(groups[gi][1])
            randomise_modules(n, randomized, seed)
        m = compute(n)
        sims = (
            compare_maps(original, m) if np.isfinite(m).all() else dict.fromkeys(_SIMILARITIES, float("nan"))
        )
        rows.append({"step": k + 1, "layer": groups[gi][0], "randomized": randomized, **sims})
        maps.append(m.astype(np.float32))
        if progress is not None:
            progress((k + 1) / len(points), f"randomised down to {groups[gi][0]}")
    return rows, maps


def _verdict(name: str, rows: list[dict[str, Any]], how: str) -> tuple[bool, bool, list[str], str]:
    """(decorrelates at the end, sensitive to the top group, groups that changed nothing, the sentence)."""
    final, top = rows[-1], rows[1]
    decorrelates = bool(np.isfinite(final["spearman"]) and final["spearman"] < SANITY_THRESHOLD)
    unchanged = []  # leading groups whose randomisation leaves the map as it was (cascade: top layers)
    for r in rows[1:]:
        if not (np.isfinite(r["spearman"]) and r["spearman"] >= INSENSITIVE):
            break
        unchanged.append(r["layer"])
    top_sensitive = not unchanged
    head = f"Spearman {final['spearman']:.2f}, SSIM {final['ssim']:.2f} after {how} randomisation"
    if decorrelates and top_sensitive:
        verdict = f"{name}: passes: the map changes with the weights ({head}; {top['spearman']:.2f} after {top['layer']})"
        return decorrelates, top_sensitive, unchanged, verdict
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
    return decorrelates, top_sensitive, unchanged, verdict


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
    t0 = time.perf_counter()
    if layers not in ("cascade", "independent"):
        raise BadInput(f"layers must be 'cascade' or 'independent', got {layers!r}")
    if max_points is not None and (isinstance(max_points, bool) or int(max_points) < 2):
        raise BadInput(f"max_points must be >= 2 (or None for every layer group), got {max_points!r}")
    if not net.has_head:
        raise BadInput(f"{net.name!r} has no classifier head: the sanity check explains a class score")
    target = _predicted(net, img, target)
    name, compute = _explainer(method_name, img, target, method_params)
    original = compute(net)
    if not np.isfinite(original).all():
        raise BadInput(f"{name} produced a non-finite map on the original model")
    groups = layer_groups(net)
    if not groups:
        raise BadInput(f"{net.name!r} has no parameterised layers to randomise")
    points = spread_points(len(groups), max_points)
    first = {"step": 0, "layer": "original", "randomized": [], **dict.fromkeys(_SIMILARITIES, 1.0)}
    steps, maps = _cascade(net, groups, points, compute, original, layers == "cascade", seed, progress)
    rows = [first, *steps]
    how = "full" if layers == "cascade" else "last-group"
    decorrelates, top_sensitive, unchanged, verdict = _verdict(name, rows, how)
    final, top = rows[-1], rows[1]
    return {
        "method": name,
        "model": net.name,
        "target": target,
        "mode": layers,
        "seed": seed,
        "groups": [g[0] for g in groups],
        "rows": rows,
        "table": [{"layer": r["layer"], "spearman": r["spearman"], "ssim": r["ssim"]} for r in rows],
        "original": original.astype(np.float32),
        "maps": [original, *maps] if keep_maps else [],
        "final": {"spearman": final["spearman"], "ssim": final["ssim"]},
        "top": {"layer": top["layer"], "spearman": top["spearman"], "ssim": top["ssim"]},
        "insensitive_to": unchanged,
        "checks": {"decorrelates_at_full": decorrelates, "sensitive_to_top_layer": top_sensitive},
        "passes": decorrelates and top_sensitive,
        "verdict": verdict,
        "meta": {"wall_s": time.perf_counter() - t0, "points": len(points), "layer_groups": len(groups)},
    }
