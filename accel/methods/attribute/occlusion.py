"""Occlusion (Zeiler & Fergus 2014): slide a baseline patch over the image and record the drop in the target's
probability. The occluded copies are built lazily and batched through `runner.sweep` (ONNX Runtime by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ... import settings
from ...errors import BadInput, ResourceLimit
from ...registry import BACKEND, TARGET, Observer, param, register
from ...result import Result
from ...runtime.cuts import net_macs, supports_incremental
from ...runtime.drill import DRILL_REFINE, drill_down
from ...runtime.incremental import INCREMENTAL_BATCH, IncrementalOcclusion, incremental
from ...runtime.runner import runner
from ...runtime.sweep import Occlusion
from ._base import MapRun, make_baseline, resolve_target

if TYPE_CHECKING:
    from ...zoo import Backbone

MAX_WINDOWS_VAR = "CONVLENS_MAX_WINDOWS"


def windows_planned(height: int, width: int, window: int, stride: int, engine: str, refine: float) -> int:
    """How many occluded copies a request will forward: the whole window grid, or for drill_down about
    `refine` of it (never fewer than one)."""
    rows = (height - window) // stride + 1
    cols = (width - window) // stride + 1
    n = max(0, rows) * max(0, cols)
    return max(1, int(round(refine * n))) if engine == "drill_down" and stride < window else n


def check_windows(height: int, width: int, p: OcclusionParams) -> int:
    """Refuse a request over CONVLENS_MAX_WINDOWS before any work (ResourceLimit naming the setting)."""
    n = windows_planned(height, width, p.window, p.stride, p.engine, p.refine)
    limit = int(settings.get(MAX_WINDOWS_VAR))
    if n > limit:
        raise ResourceLimit(
            f"occlusion: window {p.window} at stride {p.stride} on the {height}x{width} input means {n:,} "
            f"occluded copies, over the cap of {limit:,} per request; use a larger stride or window, "
            f"engine='drill_down' with a smaller refine, or raise the cap with the setting {MAX_WINDOWS_VAR} "
            f"(e.g. {MAX_WINDOWS_VAR}={n})"
        )
    return n


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def per_pixel(occ: Occlusion, drops: np.ndarray) -> np.ndarray:
    """Captum's form: each pixel gets the mean drop over the windows covering it (0 where none does)."""
    total = np.zeros((occ.height, occ.width), np.float64)
    wh, ww = occ.window
    for (r, c), d in zip(occ.positions, drops):
        total[r : r + wh, c : c + ww] += d
    cov = occ.coverage()
    return np.where(cov > 0, total / np.maximum(cov, 1), 0.0).astype(np.float32)


def grid_map(occ: Occlusion, grid: np.ndarray) -> np.ndarray:
    """The window grid (gh, gw) upsampled: bilinear between window centres, constant beyond the outer centres."""
    wh, ww = occ.window
    rows = np.array(sorted({r for r, _ in occ.positions}), np.float64) + wh / 2.0
    cols = np.array(sorted({c for _, c in occ.positions}), np.float64) + ww / 2.0
    ys = np.arange(occ.height) + 0.5
    xs = np.arange(occ.width) + 0.5
    g = grid.astype(np.float64)
    tmp = np.stack([np.interp(xs, cols, g[i]) for i in range(g.shape[0])])  # (gh, W)
    out = np.stack([np.interp(ys, rows, tmp[:, j]) for j in range(tmp.shape[1])], axis=1)  # (H, W)
    return out.astype(np.float32)


@dataclass
class OcclusionParams:
    target: int | None = TARGET()
    window: int = param(32, "side of the square occluding patch, in input pixels", min=1, max=4096)
    stride: int = param(16, "step between patch positions, in input pixels", min=1, max=4096)
    baseline: str = param(
        "zero",
        "what the patch shows: zero (network-input origin = dataset mean colour), black, mean (the image's mean "
        "colour) or blur (a blurred copy of the image)",
        choices=("zero", "black", "mean", "blur"),
    )
    blur_sigma: float = param(10.0, "Gaussian sigma in pixels for the blur baseline", min=0.1, max=200.0)
    score: str = param(
        "probability",
        "drop measured in the softmax probability or in the logit",
        choices=("probability", "logit"),
    )
    form: str = param(
        "per_pixel",
        "per_pixel: mean drop over the windows covering each pixel (Captum's form); grid: the window grid "
        "upsampled between window centres",
        choices=("per_pixel", "grid"),
    )
    engine: str = param(
        "auto",
        "auto: incremental when the backbone allows it and it is estimated faster, else plain; plain: every "
        "occluded copy through the whole network; incremental: recompute only what each patch changes (exact, "
        "after Krypton); drill_down: coarse windows everywhere, finer strides only where the map scores highest "
        "(approximate: about `refine` of the windows, chosen adaptively where the map scores highest)",
        choices=("auto", "plain", "incremental", "drill_down"),
    )
    refine: float = param(
        DRILL_REFINE,
        "drill_down: share of the fine grid's windows evaluated (the rest is interpolated); 1 = the full map",
        min=0.01,
        max=1.0,
    )
    backend: str = BACKEND()
    batch_size: int | None = param(
        None, "occluded copies per forward pass (default: from free memory)", min=1
    )


def _incremental_engine(net: Backbone, p: OcclusionParams, backend: str) -> IncrementalOcclusion | None:
    """The incremental engine when the parameters ask for it (or auto finds it worth it), else None."""
    if p.engine == "plain" or net.module is None or not supports_incremental(net):
        if p.engine == "incremental":
            raise BadInput(
                f"occlusion: engine='incremental' supports features/pool backbones and EfficientNet-Lite, not "
                f"{net.name!r}; use engine='plain' or 'auto'"
            )
        return None
    if p.engine == "auto":
        if backend != "onnxruntime":
            return None
        _, speedup = IncrementalOcclusion.plan_stages(net, p.window)
        if speedup < AUTO_MIN_SPEEDUP or net_macs(net) < AUTO_MIN_MACS:
            return None
    return incremental(
        net, ["logits"], p.window, batch_size=p.batch_size or INCREMENTAL_BATCH, backend=backend
    )


AUTO_MIN_SPEEDUP = 1.3  # estimated; the incremental path pays for its extra graph calls below that
AUTO_MIN_MACS = 1e8  # smaller networks (fashion_cnn: 28 px) run whole faster than a chain of small graphs


@register(
    "occlusion",
    "attribute",
    OcclusionParams,
    paper="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks",
    needs_grad=False,
)
def run(net: Backbone, img: Image.Image, p: OcclusionParams, obs: Observer) -> Result:
    """Drop in the target probability when each window is replaced by the baseline; both map forms in extras."""
    progress = obs.callback()  # a plain callable for the runtime layer
    run = MapRun(net, img, "occlusion", p.target)
    x = run.x
    if p.stride < 1:
        raise BadInput(f"occlusion: stride must be >= 1 pixel, got {p.stride}")
    _, h, w = net.input_shape
    if p.window > min(h, w):
        raise BadInput(
            f"occlusion: window {p.window} is larger than the {h}x{w} input of {net.name!r}; use window <= {min(h, w)}"
        )
    check_windows(h, w, p)
    base = make_baseline(net, x, p.baseline, p.blur_sigma)
    occ = Occlusion(h, w, (p.window, p.window), (p.stride, p.stride), baseline=base)
    r = runner(net, ["logits"], backend=p.backend, batch_size=p.batch_size)
    logits = r.run(x.numpy())["logits"]
    passes = r.last_passes  # this thread's passes (pooled runners and engines are shared)
    t = resolve_target(net, p.target, logits, "occlusion")

    def value(z: np.ndarray) -> np.ndarray:
        return _softmax(z)[:, t] if p.score == "probability" else z[:, t].astype(np.float64)

    ref = float(value(logits)[0])
    inc = _incremental_engine(net, p, r.backend)
    sweeper = inc if inc is not None else r
    xs = x.numpy()
    extra: dict = {}
    if p.engine == "drill_down" and p.stride < p.window:  # (at stride >= window there is nothing to refine)

        def score(o: Occlusion) -> np.ndarray:
            return ref - np.asarray(sweeper.sweep(xs, o, reduce=lambda out: value(out["logits"])), np.float64)

        calls: list[int] = []

        def counted(o: Occlusion) -> np.ndarray:
            out = score(o)
            calls.append(sweeper.last_passes)
            return out

        d = drill_down(counted, h, w, p.window, p.stride, refine=p.refine, baseline=base, progress=progress)
        passes += sum(calls)
        drops = d["map"].ravel().astype(np.float32)
        extra = {"windows_evaluated": d["windows"], "refined": d["refined"]}
    else:
        scores = sweeper.sweep(xs, occ, reduce=lambda o: value(o["logits"]), progress=progress)
        passes += sweeper.last_passes
        drops = (ref - np.asarray(scores, np.float64)).astype(np.float32)
    grid = drops.reshape(occ.grid)
    engine_used = "drill_down" if extra else ("incremental" if inc is not None else "plain")
    pix = per_pixel(occ, drops)
    gmap = grid_map(occ, grid)
    return run.result(
        pix if p.form == "per_pixel" else gmap,
        t,
        logits,
        passes=passes,
        backend=r.backend,
        extras={"grid": grid, "per_pixel": pix, "grid_map": gmap, "coverage": occ.coverage(), **extra},
        windows=occ.n,
        engine=engine_used,
        windows_evaluated=int(extra.get("windows_evaluated", occ.n)),
        stages=list(inc.cuts) if inc is not None else None,
        grid_shape=occ.grid,
        reference_score=ref,
        score=p.score,
        runner=dict(r.meta),
        form=p.form,
    )
