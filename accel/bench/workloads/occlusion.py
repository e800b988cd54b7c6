"""Occlusion on the engine: efficientnet_lite0 maps from `accel.run("occlusion", ...)` and from the runtime's
sweep / incremental / drill-down engines the method itself uses, against Captum's `Occlusion` (the reference);
incremental occlusion on vgg16; opt-in INT8; the peak memory of a sweep process."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ...backbone import Backbone
from ..harness import compare, in_child, peak_rss_mb

WINDOW = 32  # the window every occlusion row uses (the method's default)
MODEL = "efficientnet_lite0"
PHOTO = "chelsea"


@dataclass
class Setup:
    """One photo, one network and one window grid shared by every engine of the sweep workload."""

    net: Backbone
    img: Any
    x: np.ndarray
    occ: Any  # accel.runtime.sweep.Occlusion
    target: int
    ref: float  # probability of the target on the unoccluded photo (ONNX Runtime)
    stride: int
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)

    def probability(self, out: dict[str, np.ndarray]) -> np.ndarray:
        """The reduce of the runtime engines: softmax probability of the target, as the method scores."""
        return torch.softmax(torch.from_numpy(out["logits"]).double(), 1)[:, self.target].numpy()

    def drops(self, sweeper: Any, occ: Any) -> np.ndarray:
        """Drop in the target probability for each window of `occ`, on one of the runtime's sweepers."""
        return self.ref - np.asarray(sweeper.sweep(self.x, occ, reduce=self.probability), np.float64)


def setup(stride: int) -> Setup:
    """efficientnet_lite0, the chelsea photo, its predicted class and the window-32 grid at `stride`."""
    from ...images import sample_image
    from ...runtime.runner import runner
    from ...runtime.sweep import Occlusion
    from ...zoo import load

    net = load(MODEL)
    img = sample_image(PHOTO)
    x = net.preprocess(img).numpy()
    s = net.pre.size
    logits = runner(net, ["logits"], backend="onnxruntime").run(x)["logits"]
    target = int(np.argmax(logits[0]))
    probe = Setup(
        net, img, x, Occlusion(s, s, (WINDOW, WINDOW), (stride, stride), baseline=0.0), target, 0.0, stride
    )
    probe.ref = float(probe.probability({"logits": logits})[0])
    return probe


def method_row(su: Setup, key: str, **params: Any) -> Callable[[], None]:
    """A row that runs the registered method, `accel.run("occlusion", ...)`, as every front end does."""
    from ...registry import run

    def go() -> None:
        res = run(
            "occlusion",
            su.net,
            su.img,
            target=su.target,
            window=WINDOW,
            stride=su.stride,
            baseline="zero",
            score="probability",
            form="per_pixel",
            **params,
        )
        su.maps[key] = res.data
        su.maps[key + "_grid"] = res.extras["grid"]
        su.metas[key] = res.meta

    return go


def full_row(su: Setup, sweeper: Any, key: str) -> Callable[[], None]:
    """A row that sweeps every window on one of the runtime's sweepers (INT8 runners and engines)."""
    from ...methods.attribute.occlusion import per_pixel

    def go() -> None:
        su.maps[key] = per_pixel(su.occ, su.drops(sweeper, su.occ))

    return go


def drill_row(su: Setup, sweeper: Any, key: str, refine: float) -> Callable[[], None]:
    """A row of the runtime's adaptive drill-down on `sweeper` (the plain ONNX Runtime runner or an engine)."""
    from ...runtime.drill import drill_down

    def go() -> None:
        s = su.net.pre.size
        d = drill_down(lambda o: su.drops(sweeper, o), s, s, WINDOW, su.stride, refine=refine)
        su.maps[key + "_grid"] = d["map"]
        su.maps[key + "_windows"] = np.array([d["windows"], d["full_windows"], d["coarse_stride"]])

    return go


def captum_rows(su: Setup, captum_default: bool) -> dict[str, Callable[[], None]]:
    """Captum's `Occlusion` (the reference) at its default one perturbation per pass and at 64; {} without Captum."""
    try:
        from captum.attr import Occlusion as CaptumOcclusion
    except ImportError:
        return {}
    module = su.net.require_module("this bench workload")

    def fwd(t: torch.Tensor) -> torch.Tensor:
        return torch.softmax(module(t), 1)

    cap = CaptumOcclusion(fwd)
    xt = torch.from_numpy(su.x)

    def row(ppe: int) -> Callable[[], None]:
        def go() -> None:
            with torch.no_grad():
                a = cap.attribute(
                    xt,
                    sliding_window_shapes=(3, WINDOW, WINDOW),
                    strides=(3, su.stride, su.stride),
                    baselines=0.0,
                    target=su.target,
                    perturbations_per_eval=ppe,
                )
            su.maps[f"captum_ppe{ppe}"] = a[0].sum(0).numpy() / 3.0

        return go

    rows = {"captum_ppe1": row(1)} if captum_default else {}
    return rows | {"captum_ppe64": row(64)}


def lite0_rows(su: Setup, int8: bool, captum_default: bool) -> tuple[dict[str, Callable[[], None]], dict]:
    """Every efficientnet_lite0 engine, in the order they alternate; also the INT8 runner and engine used."""
    from ...runtime.drill import DRILL_REFINE
    from ...runtime.incremental import incremental
    from ...runtime.runner import runner

    ort = runner(su.net, ["logits"], backend="onnxruntime")  # the automatic batch, as users get it
    fns: dict[str, Callable[[], None]] = {
        "torch_sweep": method_row(su, "torch", engine="plain", backend="torch"),
        "ort_sweep": method_row(su, "onnxruntime", engine="plain", backend="onnxruntime"),
    }
    fns |= captum_rows(su, captum_default)
    int8_engines: dict[str, Any] = {}
    if int8:
        int8_engines["runner"] = runner(su.net, ["logits"], backend="onnxruntime", precision="int8")
        fns["ort_int8_sweep"] = full_row(su, int8_engines["runner"], "int8")
    fns["ort_drill_down"] = drill_row(su, ort, "drill", DRILL_REFINE)
    fns["ort_drill_down_refine20"] = drill_row(su, ort, "drill_20", 0.2)
    fns["ort_incremental"] = method_row(su, "incremental", engine="incremental", backend="onnxruntime")
    fns["ort_drill_down_incremental"] = method_row(
        su, "drill_incremental", engine="drill_down", refine=DRILL_REFINE, backend="onnxruntime"
    )
    if int8:
        inc_q = incremental(su.net, ["logits"], WINDOW, precision="int8")
        int8_engines["incremental"] = inc_q
        fns["ort_int8_incremental"] = full_row(su, inc_q, "int8_incremental")
        fns["ort_int8_drill_down_incremental"] = drill_row(su, inc_q, "int8_drill_incremental", DRILL_REFINE)
    return fns, int8_engines


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b))[0])


def agreement(su: Setup, key: str) -> dict[str, float]:
    """How a drill-down map agrees with the full fine-grid map: rank correlation and top-10 overlap."""
    m, fine = su.maps[key + "_grid"].ravel(), su.maps["onnxruntime_grid"].ravel()
    top = set(np.argsort(-m)[:10].tolist()) & set(np.argsort(-fine)[:10].tolist())
    w = su.maps[key + "_windows"]
    return {
        "windows": int(w[0]),
        "full_windows": int(w[1]),
        "coarse_stride": int(w[2]),
        "spearman_vs_full": spearman(m, fine),
        "top10_overlap": len(top) / 10,
    }


def map_diffs(su: Setup) -> dict[str, dict[str, float]]:
    """Max abs difference of each exact per-pixel map from the reference (Captum's default, else ppe=64, else
    torch), under the key max_abs_diff_vs_<reference>."""
    maps = su.maps
    ref_key = next(k for k in ("captum_ppe1", "captum_ppe64", "torch") if k in maps)
    return {
        "max_abs_diff_vs_" + ref_key: {
            k: float(np.abs(maps[k] - maps[ref_key]).max())
            for k in ("torch", "onnxruntime", "captum_ppe64", "incremental")
            if k in maps
        }
    }


def int8_summary(su: Setup, engines: dict[str, Any]) -> dict[str, Any]:
    """INT8 sweep and INT8 incremental maps against fp32, with the accuracy cost each engine recorded."""
    maps, fp32 = su.maps, su.maps["onnxruntime"]
    return {
        "int8": {
            "spearman_vs_fp32": spearman(maps["int8"], fp32),
            **engines["runner"].meta.get("accuracy_cost", {}),
        },
        "int8_incremental": {
            "stages": engines["incremental"].cuts,
            "spearman_vs_fp32": spearman(maps["int8_incremental"], fp32),
            "drill_spearman_vs_full_fp32": spearman(
                maps["int8_drill_incremental_grid"], maps["onnxruntime_grid"]
            ),
            **engines["incremental"].meta.get("accuracy_cost", {}),
        },
    }


def captum_speedups(engines: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each engine's speed-up over Captum's default and over Captum at 64 perturbations per pass (where measured)."""
    out = {}
    for cap, name in (
        ("captum_ppe1", "speedups_vs_captum_default"),
        ("captum_ppe64", "speedups_vs_captum_ppe64"),
    ):
        if cap in engines:
            out[name] = {k: engines[cap]["median_s"] / v["median_s"] for k, v in engines.items()}
    return out


def bench_occlusion(stride: int, repeats: int, int8: bool, captum_default: bool) -> dict[str, Any]:
    """(b) the occlusion sweep of efficientnet_lite0 (window 32) across engines, plus vgg16 incremental."""
    from ...runtime.drill import DRILL_REFINE

    su = setup(stride)
    fns, int8_engines = lite0_rows(su, int8, captum_default)
    res = compare(fns, repeats, warmup=0)
    out: dict[str, Any] = {"masks": su.occ.n, "window": WINDOW, "stride": stride, "target": su.target}
    out["engines"] = res
    out |= map_diffs(su)
    out["drill_down"] = agreement(su, "drill") | {
        "incremental_max_abs_diff": float(
            np.abs(su.maps["drill_incremental_grid"] - su.maps["drill_grid"]).max()
        ),
        "refine": DRILL_REFINE,
    }
    out["drill_down_refine20"] = agreement(su, "drill_20") | {"refine": 0.2}
    if int8:
        out |= int8_summary(su, int8_engines)
    out["incremental_stages"] = su.metas["incremental"]["stages"]
    out |= bench_vgg16_incremental(su, repeats, int8)
    return out | captum_speedups(res)


def bench_vgg16_incremental(su: Setup, repeats: int, int8: bool) -> dict[str, Any]:
    """Incremental occlusion on vgg16 (a features/pool backbone, no classifier head): same window and stride,
    score = the strongest embedding unit, on the runtime's plain and incremental engines (fp32, opt-in INT8)."""
    from ...methods.attribute.occlusion import per_pixel
    from ...runtime.incremental import incremental
    from ...runtime.runner import runner
    from ...zoo import load

    vgg = load("vgg16")
    xv = vgg.preprocess(su.img).numpy()
    plain = runner(vgg, ["embedding"], backend="onnxruntime")  # the automatic batch
    inc = incremental(vgg, ["embedding"], WINDOW)
    unit = int(np.argmax(plain.run(xv)["embedding"][0]))
    vm: dict[str, np.ndarray] = {}

    def sweep(sweeper: Any, key: str) -> Callable[[], None]:
        return lambda: vm.__setitem__(
            key, sweeper.sweep(xv, su.occ, reduce=lambda o: o["embedding"][:, unit])
        )

    fns = {"vgg16_ort_sweep": sweep(plain, "plain"), "vgg16_incremental": sweep(inc, "inc")}
    if int8:  # a dense-convolution network: where INT8 (VNNI) pays most
        plain_q = runner(vgg, ["embedding"], backend="onnxruntime", precision="int8")
        inc_q = incremental(vgg, ["embedding"], WINDOW, precision="int8")
        fns |= {
            "vgg16_int8_sweep": sweep(plain_q, "int8"),
            "vgg16_int8_incremental": sweep(inc_q, "int8_inc"),
        }
    rv = compare(fns, repeats, warmup=0)
    out: dict[str, Any] = {
        "vgg16_incremental": {
            "split": inc.split,
            "stages": inc.cuts,
            "engines": rv,
            "speedup": rv["vgg16_ort_sweep"]["median_s"] / rv["vgg16_incremental"]["median_s"],
            "max_abs_diff": float(np.abs(vm["plain"] - vm["inc"]).max()),
        }
    }
    if int8:
        pix = {k: per_pixel(su.occ, np.asarray(v)) for k, v in vm.items()}
        out["vgg16_int8"] = {
            "unit": unit,
            "speedup_sweep": rv["vgg16_ort_sweep"]["median_s"] / rv["vgg16_int8_sweep"]["median_s"],
            "speedup_incremental": rv["vgg16_incremental"]["median_s"]
            / rv["vgg16_int8_incremental"]["median_s"],
            "spearman_vs_fp32": spearman(pix["int8"], pix["plain"]),
            "incremental_spearman_vs_fp32": spearman(pix["int8_inc"], pix["plain"]),
            **plain_q.meta.get("accuracy_cost", {}),
        }
    return out


def sweep_rss_child(stride: int, q: Any) -> None:
    """In a fresh process: load efficientnet_lite0, run the method's plain ONNX Runtime sweep, report peak RSS."""
    from ...images import sample_image
    from ...registry import run
    from ...zoo import load

    net = load(MODEL)
    run(
        "occlusion",
        net,
        sample_image(PHOTO),
        window=WINDOW,
        stride=stride,
        engine="plain",
        backend="onnxruntime",
    )
    q.put(peak_rss_mb())


def sweep_peak_rss_mb(stride: int = 8) -> float:
    """Peak RSS (MiB) of a process that loads efficientnet_lite0 and runs the occlusion sweep on ONNX Runtime."""
    got = in_child(sweep_rss_child, (stride,), timeout=600)
    return float(got) if got is not None else float("nan")
