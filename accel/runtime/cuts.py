"""Where to cut a network for incremental occlusion: the declared decomposition, receptive-field geometry in
units of an earlier layer, the cost model, and the planners that choose the cuts.

An occluded copy differs from the original only inside the patch, so up to a cut only the units whose receptive
field touches the patch change. A cut is worth making where the crop those units need is a small share of the
work before it; `plan_stages` chooses several cuts by dynamic programming over the chain, `choose_split` one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from ..archs import Decomposition, decomposition
from ..errors import BadInput

if TYPE_CHECKING:
    from ..backbone import Backbone, LayerInfo
    from ..receptive import RF

STAGE_OVERHEAD = 0.005  # fixed cost of one more crop stage, as a share of the whole network's work

Span = tuple[int, int, int, int]


def supports_incremental(net: Backbone) -> bool:
    """Whether the backbone's architecture declares a decomposition (`accel.archs.Decomposition`: chain ->
    head -> pool -> fc), e.g. the features/pool backbones and EfficientNet-Lite (crop mode only)."""
    return decomposition(net.module) is not None


def decomposed(net: Backbone) -> Decomposition:
    """The backbone's declared decomposition, or BadInput when its architecture declares none."""
    dec = decomposition(net.module)
    if dec is None:
        raise BadInput(
            f"incremental occlusion needs an architecture that declares its decomposition (the features/pool "
            f"backbones, EfficientNet-Lite); {net.name!r} declares none"
        )
    return dec


@dataclass
class Geom:
    """The receptive field of a layer's units along one axis, in units of an earlier layer (or pixels)."""

    start: int
    stride: int
    size: int
    n: int  # units along this axis at the split layer


def span(g: Geom, lo: int, hi: int, limit: int) -> Span:
    """Units [u0,u1] whose field meets input [lo,hi), and the stride-aligned input crop [c0,c1) they need."""
    u0 = max(0, math.ceil((lo - g.start - g.size + 1) / g.stride))
    u1 = min(g.n - 1, (hi - 1 - g.start) // g.stride)
    need0 = max(0, g.start + u0 * g.stride)
    need1 = min(limit, g.start + u1 * g.stride + g.size)
    c0 = (need0 // g.stride) * g.stride  # aligned so the crop's unit grid coincides with the image's
    return u0, u1, c0, need1


def aligned(sp: Span, align: int, limit: int) -> Span:
    """Round a crop's length up to a multiple of the split's stride (clamped at the image edge), so every
    stride-2 layer sees an even size and TF-SAME padding falls where it falls on the whole image."""
    u0, u1, c0, c1 = sp
    return u0, u1, c0, min(limit, c0 + -(-(c1 - c0) // align) * align)


def relative(prev: RF | None, rf: RF, axis: int, n: int, name: str) -> Geom:
    """The field of `rf`'s units measured in units of the earlier layer whose field is `prev` (None: pixels)."""
    p_start, p_stride, p_size = (
        (0.0, 1.0, 1.0)
        if prev is None
        else (
            float(prev.start[axis]),
            float(prev.stride[axis]),
            float(prev.size[axis]),
        )
    )
    stride = rf.stride[axis] / p_stride
    start = (rf.start[axis] - p_start) / p_stride
    size = (rf.size[axis] - p_size) / p_stride + 1
    if any(abs(v - round(v)) > 1e-6 for v in (stride, start, size)) or stride < 1:
        raise BadInput(
            f"cannot cut a crop stage at {name!r}: its field is not a whole number of earlier units"
        )
    return Geom(int(round(start)), int(round(stride)), int(round(size)), n)


def chain_work(net: Backbone, volume: bool = False) -> list[tuple[str, float, LayerInfo]]:
    """Estimated cost of each chain element (multiply-accumulates of its convolutions), with its LayerInfo.
    `volume`: conv output volume instead, which ranks single vgg16 splits right (measured; MACs rank stages
    and EfficientNet-Lite splits right)."""
    layers = {li.name: li for li in net.layers()}
    names = {id(m): n for n, m in net.require_module("incremental occlusion").named_modules()}

    def work(name: str, mod: nn.Module) -> float:
        if volume:
            li = layers[name]
            return float(np.prod(li.out_shape)) if li.kind.startswith("conv") else 0.0
        macs = 0.0
        for sub in mod.modules():
            if not isinstance(sub, nn.Conv2d):
                continue
            info = layers.get(names.get(id(sub), ""))  # a conv's own layer name (chain elements may be built)
            if info is not None:
                kh, kw = sub.kernel_size
                macs += float(np.prod(info.out_shape)) * sub.in_channels / sub.groups * kh * kw
        return macs

    return [(name, work(name, mod), layers[name]) for name, mod in decomposed(net).chain]


def net_macs(net: Backbone) -> float:
    """Multiply-accumulates of the convolutions along the chain (what the incremental path can save)."""
    return float(sum(c for _, c, _ in chain_work(net)))


def choose_split(net: Backbone, window: int = 32) -> str:
    """The single split that minimises estimated work: prefix on a crop around the patch + full tail."""
    cost = chain_work(net, volume=decomposed(net).split_cost == "volume")
    h = net.pre.size
    total = sum(c for _, c, _ in cost)
    best, best_cost, acc = cost[0][0], float("inf"), 0.0
    for name, c, li in cost:
        acc += c
        if li.rf is None or li.rf.global_:
            continue
        frac = min(1.0, (window + li.rf.size[0] + li.rf.stride[0]) / h) ** 2
        est = acc * frac + (total - acc)
        if est < best_cost:
            best, best_cost = name, est
    return best


def _stage_share(
    cost: list[tuple[str, float, LayerInfo]], p: int, s: int, starts: list[int], window: int, height: int
) -> float | None:
    """Mean share of p's map (or the image, p = -1) that the stage p -> s computes per window (None: s's field
    is not a whole number of p's units, so no stage can end there)."""
    ls = cost[s][2]
    prev_rf = None if p < 0 else cost[p][2].rf
    try:
        g = relative(prev_rf, ls.rf, 0, ls.out_shape[1], ls.name)
    except BadInput:
        return None
    n_in = height if p < 0 else cost[p][2].out_shape[1]
    gp = (
        None
        if prev_rf is None
        else Geom(int(prev_rf.start[0]), int(prev_rf.stride[0]), int(prev_rf.size[0]), n_in)
    )
    tot = 0.0
    for r in starts:
        a0, a1 = r, r + window
        if gp is not None:  # the units of p that the window changes
            u0, u1, _, _ = span(gp, r, r + window, height)
            a0, a1 = u0, u1 + 1
        _, _, c0, c1 = aligned(span(g, a0, a1, n_in), g.stride, n_in)
        tot += (c1 - c0) / n_in
    return (tot / len(starts)) ** 2


def plan_stages(net: Backbone, window: int = 32, overhead: float = STAGE_OVERHEAD) -> tuple[list[str], float]:
    """Cuts for crop mode that minimise estimated work (dynamic programming over the chain), and the
    estimated speed-up over the plain sweep.

    A stage from cut p to cut s runs on the stride-aligned crop of p's activation that the changed units of
    s need (the same geometry the sweep uses, averaged over window positions); its cost is that crop's
    share of the stage's work plus a fixed `overhead` share of the whole network (crop and paste copies,
    one more graph call). The tail after the last cut runs whole."""
    cost = chain_work(net)
    _, H, W = net.input_shape
    total = sum(c for _, c, _ in cost) or 1.0
    cum = np.concatenate([[0.0], np.cumsum([c for _, c, _ in cost])])
    ok = [i for i, (_, _, li) in enumerate(cost) if li.rf is not None and not li.rf.global_]
    starts = sorted({min(v, H - window) for v in range(0, H, window)})  # sample window positions
    best: dict[int, tuple[float, list[int]]] = {-1: (0.0, [])}
    for s in ok:
        for p in [-1, *[c for c in ok if c < s]]:
            if p not in best:
                continue
            f = _stage_share(cost, p, s, starts, window, H)
            if f is None:
                continue
            c = best[p][0] + f * (cum[s + 1] - cum[p + 1]) + overhead * total
            if s not in best or c < best[s][0]:
                best[s] = (c, [*best[p][1], s])
    est, end = min((b[0] + cum[-1] - cum[s + 1], s) for s, b in best.items() if s >= 0)
    return [cost[i][0] for i in best[end][1]], float(cum[-1] / max(est, 1e-9))


def choose_stages(net: Backbone, window: int = 32, overhead: float = STAGE_OVERHEAD) -> list[str]:
    """Cuts for crop mode that minimise estimated work (see `plan_stages`)."""
    return plan_stages(net, window, overhead)[0]
