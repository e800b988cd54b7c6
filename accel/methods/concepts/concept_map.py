"""Concept maps: where a concept is in an image, and how much it adds to a class there.

A concept is a direction at a layer: a discovered NMF concept (a row W_c of the basis from `discover`, or of a
basis file), a concept activation vector v from a file, or a CAV fitted here for a concept set ("set:<name>": the
set's and a random set's spatially averaged activations, accel.methods.concepts.sets and tcav.fit_cav). Its presence
at cell (i, j) of the layer's activation map a(i, j) (C,) is, for an NMF concept, its non-negative coefficient
U_c(i, j) solving min_{U >= 0} ||a(i, j) - U W||^2 against the whole fixed basis, and for a CAV the projection
<a(i, j), v>/||v||; a flattened (C*h*w) CAV, as TCAV fits them, gives each cell its own slice:
<a(i, j), v(:, i, j)>/||v||, and the cells sum to the whole projection.
The gradient-weighted variant for class t multiplies presence by the derivative of the class logit along the
concept at that cell, <d logit_t / d a(i, j), d> (d = W_c, or v/||v||): the first-order share of the logit that the
concept carries there. Cell values are placed on input pixels by the layer's exact receptive fields (each cell at
its field's centre, linear in between), so the map is float32 HxW aligned with the preprocessed input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...errors import BadInput
from ...registry import BACKEND, DATASET, LAYER, SEED, TARGET, Observer, param, register
from ...result import Result
from ...runtime.runner import runner
from ...taps import capture
from ..attribute._base import MapRun
from ..inspect._common import LRU, resolve_dataset
from ._factor import cells_to_input, check_nonnegative, local_layer, map_coefficients
from .discover import DiscoverParams, default_target, discover

if TYPE_CHECKING:
    from ...backbone import Backbone

WEIGHTING = ("presence", "gradient")


@dataclass
class ConceptMapParams:
    target: int | None = TARGET(
        help="class for the gradient weighting and, when discovering, whose concepts (default: the prediction)"
    )
    layer: str = LAYER("", "the concept's layer ('' = the concept file's layer, else the CAM layer)")
    concepts: str = param(
        "",
        "where the concept comes from: '' = discover the class's concepts now (k, dataset, limit, seed); "
        "set:NAME = a CAV fitted now for a concept set (packaged name, folder or zip) against random images; or a "
        "file: .npy basis (k, C) or CAV (C or C*h*w), or .npz with 'basis' or 'cav' (and optionally 'layer')",
        kind="file",
    )
    index: int = param(
        0, "which concept: its importance rank (discovered) or row of the file's basis", min=0, max=63
    )
    weighting: str = param(
        "presence",
        "presence: where the concept is; gradient: presence x the class logit's derivative along the concept",
        choices=WEIGHTING,
    )
    k: int = param(8, "when discovering: number of concepts", min=2, max=64)
    dataset: str = DATASET()
    limit: int = param(2000, "when discovering: dataset images streamed (0 = all)", min=0, max=100_000)
    seed: int = SEED("discovery: crops, NMF, Sobol masks")
    backend: str = BACKEND()


@dataclass
class Concept:
    """One concept direction at a layer: an NMF basis with the chosen row, or a CAV."""

    layer: str
    basis: np.ndarray | None  # (k, C): the chosen concept is row `index`
    index: int
    cav: np.ndarray | None  # (C,) or, flattened by TCAV, (C, h, w)
    source: str

    @property
    def direction(self) -> np.ndarray:
        """The concept's direction d in activation space (W_c, or the unit CAV)."""
        if self.basis is not None:
            return self.basis[self.index]
        assert self.cav is not None
        return self.cav / max(float(np.linalg.norm(self.cav)), 1e-12)


def read_concept_file(path: str) -> tuple[np.ndarray, str, bool]:
    """(array, layer or '', is_cav) from a .npy (2-D basis, 1-D CAV) or .npz ('basis' or 'cav', optional 'layer');
    arrays only, never pickles."""
    try:
        f = Path(path).expanduser()
        found = f.is_file()
    except (
        OSError,
        RuntimeError,
        ValueError,
    ):  # "~nobody/x" (no such home), a NUL byte, a 300-character name
        found = False
    if not found:
        raise BadInput(f"concept_map: concept file {path!r} does not exist (or is not a file)")
    try:
        loaded = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise BadInput(f"concept_map: {f.name} is not a .npy/.npz array file: {e}") from None
    layer = ""
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            names = set(loaded.files)
            key = "basis" if "basis" in names else "cav" if "cav" in names else None
            if key is None:
                raise BadInput(
                    f"concept_map: {f.name} holds {sorted(names)}; expected an array 'basis' or 'cav'"
                )
            arr = np.asarray(loaded[key])
            if "layer" in names:
                layer = str(loaded["layer"])
    else:
        arr = np.asarray(loaded)
    if arr.ndim not in (1, 2) or arr.size == 0 or arr.dtype.kind not in "fiu" or not np.isfinite(arr).all():
        raise BadInput(
            f"concept_map: {f.name} must hold a finite (k, C) basis or (C,) CAV, got {arr.dtype} {arr.shape}"
        )
    return arr.astype(np.float32), layer, arr.ndim == 1


def load_concept(
    net: Backbone, img: Any, p: ConceptMapParams, obs: Observer
) -> tuple[Concept, int, dict[str, Any]]:
    """The concept named by the parameters, the class it is explained for, and meta about where it came from."""
    t = default_target(net, img, p.target, "concept_map")
    # the dataset is only read when discovering, but one the user named is still checked, not silently ignored
    named = p.concepts.strip() and p.dataset.strip() not in ("", "auto")
    if named and not len(resolve_dataset(net, p.dataset, 1)):
        raise BadInput(f"concept_map: dataset {p.dataset!r} holds no images")
    if not p.concepts.strip():
        dp = DiscoverParams(t, p.layer, p.k, p.dataset, limit=p.limit, seed=p.seed, backend=p.backend)
        con = discover(net, t, dp, obs.span(0.0, 0.8))
        if p.index >= len(con.basis):
            raise BadInput(f"concept_map: index {p.index} >= k={len(con.basis)} discovered concepts")
        info = {"source": "discover", "importance": float(con.importance[p.index]), "discovery": con.info}
        return Concept(con.layer, con.basis, p.index, None, "discover"), t, info
    if p.concepts.strip().lower().startswith("set:"):
        li = local_layer(net, p.layer, "concept_map")
        cav, acc, source = set_cav(net, li.name, p.concepts.strip()[4:], p.seed, p.backend)
        info = {"source": source, "kind": "cav", "cav_accuracy": acc}
        return Concept(li.name, None, 0, cav, source), t, info
    arr, layer, is_cav = read_concept_file(p.concepts)
    if p.layer and layer and p.layer != layer:
        raise BadInput(f"concept_map: the concept file is for layer {layer!r}, not {p.layer!r}")
    li = local_layer(net, p.layer or layer, "concept_map")
    c, h, w = (int(v) for v in li.out_shape)
    name = Path(p.concepts).name
    if is_cav and arr.size == c * h * w and arr.size != c:
        return (
            Concept(li.name, None, 0, arr.reshape(c, h, w), name),
            t,
            {"source": name, "kind": "cav (flat)"},
        )
    if arr.shape[-1] != c:
        raise BadInput(
            f"concept_map: the concept has {arr.shape[-1]} channels but layer {li.name!r} has {c} (or {c * h * w} "
            "flattened); pass the layer it was computed at"
        )
    if is_cav:
        return Concept(li.name, None, 0, arr, name), t, {"source": name, "kind": "cav"}
    if p.index >= len(arr):
        raise BadInput(f"concept_map: index {p.index} >= the {len(arr)} concepts in {name}")
    return Concept(li.name, arr, p.index, None, name), t, {"source": name, "kind": "nmf"}


def cell_presence(con: Concept, fmap: np.ndarray) -> np.ndarray:
    """Presence (h, w) of the concept in a (C, h, w) activation map (NMF coefficient, or CAV projection)."""
    if con.basis is not None:
        check_nonnegative(fmap, con.layer)
        return map_coefficients(fmap, con.basis)[con.index]
    return along(fmap, con)


def along(t: np.ndarray, con: Concept) -> np.ndarray:
    """Per-cell dot product (h, w) of a (C, h, w) map with the concept's direction (per cell for a flat CAV)."""
    d = con.direction
    if d.ndim == 3:
        return np.asarray((t * d).sum(0), dtype=np.float32)
    return np.einsum("chw,c->hw", t, d).astype(np.float32)


SET_SIZE = 64  # images in a concept set and its random counterexamples when fitting a CAV here


def set_cav(net: Backbone, layer: str, spec: str, seed: int, backend: str) -> tuple[np.ndarray, float, str]:
    """A unit CAV (C,) at `layer` for the concept set `spec` against random images (SET_SIZE each), fitted on the
    spatially averaged activations (a direction usable at every cell), with its held-out accuracy and source."""
    from .sets import PACKAGED, concept_set, pool_spec, random_set
    from .tcav import fit_cav

    def make() -> tuple[np.ndarray, float, str]:
        cs = concept_set(net, spec, SET_SIZE, seed)
        neg = random_set(net, pool_spec(net, "auto"), SET_SIZE, seed + 1)
        r = runner(net, [layer], backend=backend)
        pos_a, neg_a = (r.run(x)[layer].mean(axis=(2, 3)) for x in (cs.x, neg))
        cav, acc = fit_cav(pos_a, neg_a, "linear", seed)
        return cav, acc, cs.source or spec

    if spec.strip().lower() not in PACKAGED:
        return make()  # a folder or zip may change between runs: fitted afresh
    out: tuple[np.ndarray, float, str] = _CAVS.get_or(
        (net.weights_hash(), layer, spec.strip().lower(), seed), make
    )
    return out


_CAVS = LRU(16)  # CAVs of packaged concept sets


def layer_pass(
    net: Backbone, x: torch.Tensor, layer: str, t: int, grad: bool, backend: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(activation map (C,h,w), logits (1,K), d logit_t / d map (C,h,w) or None, backend) for one input."""
    if not grad:
        r = runner(net, [layer, "logits"], backend=backend)
        out = r.run(x.numpy())
        return out[layer][0], out["logits"], None, r.backend
    mod = net.require_module("the gradient-weighted concept map")
    with torch.enable_grad(), capture(mod, [layer]) as store:
        logits = mod(x.detach().clone().float().requires_grad_(True))
        a = store[layer]
        (g,) = torch.autograd.grad(logits[:, t].sum(), a)
    return a.detach()[0].numpy(), logits.detach().numpy(), g[0].numpy(), "torch"


@register(
    "concept_map",
    "concepts",
    ConceptMapParams,
    paper="Fel et al. 2023 (CRAFT concept attribution maps); Kim et al. 2018 (TCAV concept activation vectors)",
    needs_grad=True,
)
def run(net: Backbone, img: Any, p: ConceptMapParams, obs: Observer) -> Result:
    """Where a discovered concept or a CAV is in the image (optionally weighted by its gradient for a class)."""
    mr = MapRun(net, img, "concept_map", p.target)
    con, t, info = load_concept(net, img, p, obs)
    li = net.layer(con.layer)
    grad = p.weighting == "gradient"
    fmap, logits, g, backend = layer_pass(net, mr.x, li.name, t, grad, p.backend)
    cells = cell_presence(con, fmap)
    if g is not None:
        cells = cells * along(g, con)
    h, w = mr.x.shape[-2:]
    data = cells_to_input(cells, li.rf, int(h), int(w))
    obs.progress(1.0, "done")
    return mr.result(
        data,
        t,
        logits,
        passes=1,
        backend=backend,
        extras={"cells": cells.astype(np.float32), "direction": con.direction.astype(np.float32)},
        layer=li.name,
        concept=p.index if con.basis is not None else "cav",
        weighting=p.weighting,
        **info,
    )
