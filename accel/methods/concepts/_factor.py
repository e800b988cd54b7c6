"""Shared pieces of concept discovery and concept maps: random crops, the NMF basis, coefficients against a fixed
basis, the network's rest run on edited activations, and layer maps placed on input pixels by their exact fields.

A concept basis W (k, C) factorises non-negative activations A ~ U W (Lee & Seung 1999; CRAFT, Fel et al. 2023):
the coefficients U >= 0 of an activation vector against a fixed W are the non-negative least-squares solution
argmin_{U>=0} ||A - U W||_F^2, solved by scikit-learn's coordinate descent with W held fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import BadInput
from ...taps import resolve

if TYPE_CHECKING:
    from ...backbone import Backbone, LayerInfo
    from ...receptive import RF


def random_boxes(rng: np.random.Generator, n: int, height: int, width: int, frac: float) -> np.ndarray:
    """`n` square crop boxes (top, left, bottom, right; bottom/right exclusive) of side round(frac * min(H, W)),
    uniformly placed inside a height x width input."""
    side = int(max(2, min(height, width, round(frac * min(height, width)))))
    top = rng.integers(0, height - side + 1, size=n)
    left = rng.integers(0, width - side + 1, size=n)
    return np.stack([top, left, top + side, left + side], axis=1).astype(np.int64)


def crops_to_input(x: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Cut each box out of its preprocessed image (x: (N,C,H,W), boxes: (N,4)) and resize it back to H x W
    (bilinear, half-pixel centres); resizing is linear, so doing it after normalisation equals doing it on pixels."""
    h, w = x.shape[-2:]
    t = torch.from_numpy(np.ascontiguousarray(x))
    out = []
    for i, (a, b, c, d) in enumerate(boxes.tolist()):
        crop = t[i : i + 1, :, a:c, b:d]
        out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=False))
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def cell_ranges(rf: RF, h: int, w: int, boxes: np.ndarray) -> np.ndarray:
    """For each pixel box (top, left, bottom, right; exclusive), the block of layer cells (i0, i1, j0, j1; exclusive)
    whose exact receptive-field centres lie inside it, or the cell nearest its centre when none does."""
    cy = rf.start[0] + np.arange(h) * rf.stride[0] + (rf.size[0] - 1) / 2.0
    cx = rf.start[1] + np.arange(w) * rf.stride[1] + (rf.size[1] - 1) / 2.0
    out = np.zeros((len(boxes), 4), dtype=np.int64)
    for n, (t, left, b, r) in enumerate(np.asarray(boxes).tolist()):
        for axis, (lo, hi, c) in enumerate(((t, b, cy), (left, r, cx))):
            inside = np.flatnonzero((c >= lo - 0.5) & (c <= hi - 0.5))
            if len(inside) == 0:
                inside = np.array([int(np.argmin(np.abs(c - (lo + hi - 1) / 2.0)))])
            out[n, 2 * axis], out[n, 2 * axis + 1] = inside[0], inside[-1] + 1
    return out


def pooled_cells(maps: np.ndarray, src: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """(n, C) means of maps[src[n]] over the cell block ranges[n] (from `cell_ranges`)."""
    out = np.empty((len(src), maps.shape[1]), dtype=np.float32)
    for n, (s, (i0, i1, j0, j1)) in enumerate(zip(src.tolist(), ranges.tolist())):
        out[n] = maps[s, :, i0:i1, j0:j1].mean(axis=(1, 2))
    return out


def check_nonnegative(acts: np.ndarray, layer: str) -> None:
    """BadInput unless `acts` are non-negative (NMF needs them: choose a post-ReLU layer)."""
    lo = float(acts.min()) if acts.size else 0.0
    if lo < -1e-6:
        raise BadInput(
            f"layer {layer!r} has negative activations (min {lo:.3g}); concept factorisation (NMF) needs a "
            "non-negative layer: choose a post-ReLU layer (e.g. a relu after the last conv)"
        )


def fit_basis(
    acts: np.ndarray, k: int, seed: int, max_iter: int = 400
) -> tuple[np.ndarray, np.ndarray, float]:
    """NMF of (N, C) non-negative activations into k concepts: (U (N,k), W (k,C), relative reconstruction error
    ||A - U W||_F / ||A||_F). nndsvda initialisation and the seed make it deterministic."""
    import warnings

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    a = np.maximum(acts.astype(np.float32), 0.0)
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter)
    # one BLAS thread: on busy cores the threaded small matmuls of coordinate descent ran 20-40x slower (measured)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        u = model.fit_transform(a)
    w = model.components_
    err = float(np.linalg.norm(a - u @ w)) / max(float(np.linalg.norm(a)), 1e-12)
    return u.astype(np.float32), w.astype(np.float32), err


def coefficients(acts: np.ndarray, basis: np.ndarray, max_iter: int = 400) -> np.ndarray:
    """Non-negative coefficients (N, k) of activation vectors (N, C) against the fixed basis (k, C): the NNLS
    solution of min_{U>=0} ||A - U W||^2 (scikit-learn coordinate descent with W fixed)."""
    import warnings

    from sklearn.decomposition import non_negative_factorization
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    a = np.maximum(np.asarray(acts, dtype=np.float32), 0.0)
    w = np.asarray(basis, dtype=np.float32)
    if a.shape[0] == 0:
        return np.zeros((0, len(w)), dtype=np.float32)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        u, _, _ = non_negative_factorization(
            a, H=w, n_components=len(w), update_H=False, max_iter=max_iter, solver="cd"
        )
    return np.asarray(u, dtype=np.float32)


def map_coefficients(fmap: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Per-position coefficients of a (C,h,w) activation map against the basis (k,C) -> (k,h,w)."""
    c, h, w = fmap.shape
    u = coefficients(fmap.reshape(c, -1).T, basis)
    return np.ascontiguousarray(u.T.reshape(len(basis), h, w))


def interp_matrix(n_out: int, n_cells: int, start: float, stride: float, size: int) -> np.ndarray:
    """(n_out, n_cells) linear interpolation weights placing cell t at its field's centre start + t*stride +
    (size-1)/2 (input pixels), constant beyond the first and last centres."""
    centres = start + np.arange(n_cells) * stride + (size - 1) / 2.0
    m = np.zeros((n_out, n_cells), dtype=np.float64)
    if n_cells == 1 or stride <= 0:
        m[:, :] = 1.0 / n_cells
        return m
    pos = np.clip((np.arange(n_out) - centres[0]) / stride, 0.0, n_cells - 1.0)
    lo = np.minimum(np.floor(pos).astype(int), n_cells - 2)
    frac = pos - lo
    rows = np.arange(n_out)
    m[rows, lo] = 1.0 - frac
    m[rows, lo + 1] += frac
    return m


def cells_to_input(maps: np.ndarray, rf: RF, height: int, width: int) -> np.ndarray:
    """Layer maps (..., h, w) -> input pixels (..., H, W): each cell's value sits at the centre of its exact
    receptive field (accel.receptive RF: start, stride, size) and pixels between centres interpolate linearly."""
    h, w = maps.shape[-2:]
    ry = interp_matrix(height, h, rf.start[0], rf.stride[0], rf.size[0])
    rx = interp_matrix(width, w, rf.start[1], rf.stride[1], rf.size[1])
    out = np.einsum("Yh,...hw,Xw->...YX", ry, maps.astype(np.float64), rx)
    return out.astype(np.float32)


def local_layer(net: Backbone, name: str, what: str) -> LayerInfo:
    """The spatial layer `name` ('' = the backbone's CAM / last spatial layer) with a local receptive field and
    more than one cell, or BadInput saying why it cannot hold a concept map."""
    from ..inspect._common import default_activation_layer, spatial_layer

    li = spatial_layer(net, name, default_activation_layer(net), what)
    if li.rf is None or li.rf.global_ or li.out_shape[1] * li.out_shape[2] < 2:
        raise BadInput(
            f"{what}: layer {li.name!r} (output {li.out_shape}) has no spatial extent (a 1x1 map or a global "
            "field); choose a convolutional layer with a spatial map"
        )
    return li


@contextmanager
def replaced_output(net: Backbone, layer: str, value: torch.Tensor) -> Iterator[None]:
    """Inside the block, the module `layer` outputs `value` instead of what it computed (an intervention: the rest
    of the network runs on edited activations)."""
    mod = resolve(net.require_module("running the network on edited activations"), layer)

    def hook(_m: torch.nn.Module, _a: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        return value.to(out.dtype)

    h = mod.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


def tail(net: Backbone, layer: str) -> torch.nn.Module | None:
    """The rest of the network after `layer` as one module (activations -> (logits,)), when the architecture
    declares a decomposition whose chain holds `layer` (accel.runtime.stages.Tail); None otherwise."""
    from ...archs import decomposition
    from ...runtime.stages import Tail

    dec = decomposition(net.module)
    names = [n for n, _ in dec.chain] if dec is not None else []
    return Tail(net, names.index(layer), ["logits"]) if layer in names else None


@torch.no_grad()
def logits_with(
    net: Backbone,
    layer: str,
    x: torch.Tensor,
    acts: torch.Tensor,
    rest: torch.nn.Module | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """Class scores when `layer` outputs `acts` (B,C,h,w) for inputs `x` (1 or B images), in chunks of `chunk`:
    through `rest` (the network after the layer, see `tail`) when given, else the whole network with the layer's
    output replaced by a forward hook."""
    module = net.require_module("running the network on edited activations")
    out = []
    for s in range(0, len(acts), chunk):
        a = acts[s : s + chunk]
        if rest is not None:
            out.append(rest(a)[0].float())
            continue
        xi = x.expand(len(a), *x.shape[1:]) if len(x) == 1 else x[s : s + chunk]
        with replaced_output(net, layer, a):
            out.append(module(xi).float())
    return torch.cat(out).numpy()


def sobol_total(
    f: Callable[[np.ndarray], np.ndarray], k: int, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Total Sobol indices (Jansen estimator) of f: [0,1]^k masks -> scores, with n base samples: matrices A, B and
    A_B^i (A with column i from B); ST_i = mean((f(A) - f(A_B^i))^2) / (2 Var f). Costs n * (k + 2) evaluations."""
    a = rng.random((n, k))
    b = rng.random((n, k))
    designs = [a, b] + [np.where(np.arange(k) == i, b, a) for i in range(k)]
    y = f(np.concatenate(designs))
    ya, yb = y[:n], y[n : 2 * n]
    var = float(np.var(np.concatenate([ya, yb])))
    if var <= 1e-12:
        return np.zeros(k, dtype=np.float64)
    return np.asarray(
        [np.mean((ya - y[(2 + i) * n : (3 + i) * n]) ** 2) / (2 * var) for i in range(k)], dtype=np.float64
    )
