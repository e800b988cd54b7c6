"""Concept discovery (after CRAFT, Fel et al. 2023): which parts of its images a network uses for a class.

1. Crops: `crops` random square crops (side `crop` x the input side) of each image of the class; each crop's
   activation vector at a non-negative (post-ReLU) layer is a row of A (n_crops, C). crop_mode "cells" (default)
   averages the whole image's map over the cells whose exact receptive fields are centred in the crop, so a part
   keeps the scale it has in whole images (one pass per image); "resize" (CRAFT's way) resizes each crop to the
   input and averages its map, which enlarges parts 1/crop times: on the planted model that scale change hid the
   2x-enlarged stamp from the maps of whole images (measured, scripts/eval_concepts_discovery.py). Batches stream
   through the one runner; only A, the crop boxes and image ids are kept, and collection stops at `max_crops`, so
   memory stays bounded whatever the dataset size.
2. Factorisation: NMF A ~ U W with k concepts (scikit-learn, nndsvda init, seeded): W (k, C) is the concept basis,
   U >= 0 each crop's concept coefficients; a concept's top crops are those with the largest coefficient.
3. Importance for the class, on up to `importance_images` class images: their activation maps A(i,j) are split as
   A = sum_c U_c(i,j) W_c + R (coefficients against the fixed W at every position, R the residual), and the rest of
   the network runs on edited maps (the architecture's declared tail after the layer, else the whole network with a
   forward hook replacing the layer's output).
   "sobol" (CRAFT's choice): total Sobol indices of the class logit under random masks m in [0,1]^k scaling each
   concept's coefficients, A(m) = sum_c m_c U_c W_c + R (Jansen estimator, `designs` base samples per image),
   averaged over images. "occlusion": the mean drop of the class logit when one concept's coefficients are
   removed, logit(A) - logit(A - U_c W_c). Keeping R means the unmasked map is exactly the original.
4. With an image, each concept's map on it: its coefficient at every cell, placed on input pixels by the exact
   receptive fields (accel.methods.concepts.concept_map draws one concept, gradient-weighted if asked).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ...errors import BadInput
from ...registry import BACKEND, DATASET, LAYER, SEED, TARGET, Observer, param, register
from ...result import Result
from ...runtime.runner import Runner, runner
from ..inspect._common import LRU, dataset_key, label_strip, report, resolve_dataset
from ._factor import (
    cell_ranges,
    cells_to_input,
    check_nonnegative,
    coefficients,
    crops_to_input,
    fit_basis,
    local_layer,
    logits_with,
    map_coefficients,
    pooled_cells,
    random_boxes,
    sobol_total,
    tail,
)

if TYPE_CHECKING:
    from ...backbone import Backbone
    from ...datasets import Dataset

SELECT = ("auto", "label", "prediction", "all")
IMPORTANCE = ("sobol", "occlusion")
CROP_MODES = ("resize", "cells")


@dataclass
class DiscoverParams:
    target: int | None = TARGET(
        help="class whose concepts to discover (default: the image's predicted class)"
    )
    layer: str = LAYER("", "non-negative (post-ReLU) layer to factorise ('' = the CAM layer)")
    k: int = param(8, "number of concepts (NMF components)", min=2, max=64)
    dataset: str = DATASET()
    select: str = param(
        "auto",
        "which dataset images belong to the class: by dataset label, by the network's prediction, all of them, "
        "or auto (labels when the dataset has them, else predictions)",
        choices=SELECT,
    )
    limit: int = param(
        2000, "stream at most this many dataset images (0 = the whole dataset)", min=0, max=100_000
    )
    crops: int = param(8, "random crops per class image", min=1, max=64)
    crop: float = param(0.5, "crop side as a fraction of the input side", min=0.1, max=1.0)
    crop_mode: str = param(
        "cells",
        "resize: each crop resized to the input and run (CRAFT); cells: the mean of the whole image's map over the "
        "cells whose receptive fields are centred in the crop (keeps the scale; one pass per image)",
        choices=CROP_MODES,
    )
    max_crops: int = param(20_000, "stop collecting at this many crops (bounds memory)", min=8, max=200_000)
    top: int = param(20, "top crops shown per concept", min=1, max=64)
    importance: str = param(
        "sobol",
        "concept importance: total Sobol indices (CRAFT) or occlusion of each concept",
        choices=IMPORTANCE,
    )
    importance_images: int = param(32, "class images on which importance is measured", min=1, max=256)
    designs: int = param(32, "Sobol base samples per image (n x (k+2) passes each)", min=4, max=512)
    batch_size: int = param(128, "images per streamed batch", min=1, max=4096)
    backend: str = BACKEND()
    seed: int = SEED("crop positions, NMF initialisation, Sobol masks")


@dataclass
class Crops:
    """What the streaming pass keeps: crop activations (n, C), their boxes (n, 4) and image ids, and the first class
    images (preprocessed) with their layer maps for importance."""

    acts: np.ndarray
    boxes: np.ndarray
    ids: list[str]
    images: np.ndarray
    maps: np.ndarray
    seen: int = 0
    chosen: int = 0
    stopped: bool = False
    backend: str = ""


@dataclass
class Concepts:
    """A discovery: the basis W (k, C) in importance order, importances, each crop's coefficients U (n, k) in the
    same order, the crops, and the numbers behind them."""

    layer: str
    target: int
    basis: np.ndarray
    importance: np.ndarray
    coef: np.ndarray
    crops: Crops
    error: float
    info: dict[str, Any] = field(default_factory=dict)


def class_mask(
    p: DiscoverParams, ds: Dataset, labels: np.ndarray, logits: np.ndarray | None, t: int
) -> np.ndarray:
    """Which images of a batch are the class's, by `p.select` ("auto": labels when the dataset is labelled)."""
    how = p.select
    if how == "auto":
        how = "label" if ds.labelled else "prediction"
    if how == "label":
        if not ds.labelled:
            raise BadInput(
                f"discover: select='label' but dataset {ds.spec!r} has no labels; use 'prediction'"
            )
        return labels == t
    if how == "prediction":
        assert logits is not None
        return logits.argmax(1) == t
    return np.ones(len(labels), dtype=bool)


def crop_activations(
    net: Backbone,
    r: Runner,
    layer: str,
    xs: np.ndarray,
    src: np.ndarray,
    boxes: np.ndarray,
    maps: np.ndarray | None,
) -> np.ndarray:
    """(n, C) mean activations of the crops `boxes` of images xs[src]: of each crop resized to the input (no `maps`,
    "resize"), or of the whole images' `maps` over the cells centred in the crop ("cells")."""
    if maps is None:
        a = r.run(crops_to_input(xs[src], boxes))[layer]
        check_nonnegative(a, layer)
        return a.reshape(len(a), a.shape[1], -1).mean(2).astype(np.float32)
    rf = net.layer(layer).rf
    return pooled_cells(maps, src, cell_ranges(rf, int(maps.shape[2]), int(maps.shape[3]), boxes))


def collect(net: Backbone, ds: Dataset, layer: str, t: int, p: DiscoverParams, obs: Observer) -> Crops:
    """Stream `ds`: keep the class's images, crop and resize them, and keep the crops' mean activations."""
    h, w = net.input_shape[1:]
    predict = p.select == "prediction" or (p.select == "auto" and not ds.labelled)
    r = runner(net, [layer, "logits"] if predict else [layer], backend=p.backend)
    rng = np.random.default_rng(p.seed)
    acts: list[np.ndarray] = []
    boxes: list[np.ndarray] = []
    ids: list[str] = []
    images: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    out = Crops(np.zeros((0, 0), np.float32), np.zeros((0, 4), np.int64), [], np.zeros(0), np.zeros(0))
    n_total = max(len(ds), 1)
    for x, labels, bid in ds.batches(net, p.batch_size):
        if obs.should_stop():
            out.stopped = True
            break
        logits = r.run(x)["logits"] if predict else None
        keep = np.flatnonzero(class_mask(p, ds, labels, logits, t))
        out.seen += len(x)
        if len(keep):
            xs = x[keep]
            room = p.importance_images - sum(len(i) for i in images)
            whole = xs if p.crop_mode == "cells" else xs[: max(room, 0)]  # images whose whole map is needed
            full = r.run(whole)[layer] if len(whole) else None
            if full is not None:
                check_nonnegative(full, layer)
                if room > 0:
                    images.append(xs[:room])
                    maps.append(full[:room])
            n = min(len(xs) * p.crops, p.max_crops - len(ids))
            bx = random_boxes(rng, len(xs) * p.crops, h, w, p.crop)[:n]
            src = np.repeat(np.arange(len(xs)), p.crops)[:n]
            cells = full if p.crop_mode == "cells" else None
            acts.append(crop_activations(net, r, layer, xs, src, bx, cells))
            boxes.append(bx)
            ids.extend(bid[keep[i]] for i in src)
            out.chosen += len(xs)
        report(obs, 0.6 * out.seen / n_total, f"{out.seen}/{n_total} images, {len(ids)} crops")
        if len(ids) >= p.max_crops:
            break
    out.backend = r.backend
    if acts:
        out.acts, out.boxes, out.ids = np.concatenate(acts), np.concatenate(boxes), ids
        out.images, out.maps = np.concatenate(images), np.concatenate(maps)
    return out


def importance(
    net: Backbone, layer: str, t: int, basis: np.ndarray, cr: Crops, p: DiscoverParams
) -> np.ndarray:
    """Each concept's importance for class `t` on the kept class images (see the module docstring)."""
    m, c, h, w = cr.maps.shape
    k = len(basis)
    flat = cr.maps.transpose(0, 2, 3, 1).reshape(-1, c)
    u = coefficients(flat, basis).reshape(m, h, w, k).transpose(0, 3, 1, 2)  # (m, k, h, w)
    wt = torch.from_numpy(basis.astype(np.float32))
    parts = torch.einsum("mkhw,kc->mkchw", torch.from_numpy(u), wt)  # each concept's share of the map
    full = torch.from_numpy(cr.maps.astype(np.float32))
    resid = full - parts.sum(1)
    x = torch.from_numpy(cr.images)
    rest = tail(net, layer)
    if p.importance == "occlusion":
        base = logits_with(net, layer, x, full, rest)[:, t]
        drops = [base - logits_with(net, layer, x, full - parts[:, i], rest)[:, t] for i in range(k)]
        return np.asarray([float(np.mean(d)) for d in drops])
    rng = np.random.default_rng(p.seed + 1)
    total = np.zeros(k)
    for j in range(m):

        def f(masks: np.ndarray, j: int = j) -> np.ndarray:
            mk = torch.from_numpy(masks.astype(np.float32))
            acts = torch.einsum("nk,kchw->nchw", mk, parts[j]) + resid[j]
            return logits_with(net, layer, x[j : j + 1], acts, rest)[:, t]

        total += sobol_total(f, k, p.designs, rng)
    return total / m


@torch.no_grad()
def crop_tiles(
    net: Backbone, ds: Dataset, ids: list[str], boxes: np.ndarray, batch_size: int
) -> list[np.ndarray]:
    """The pixels (h, w, 3 uint8) of each (image id, box), reloading only those images."""
    wanted = list(dict.fromkeys(ids))
    xs: dict[str, np.ndarray] = {}
    for x, _lab, bid in ds.subset(wanted).batches(net, batch_size):
        for i, key in enumerate(bid):
            xs[key] = x[i]
    missing = [i for i in wanted if i not in xs]
    if missing:
        raise BadInput(f"discover: {len(missing)} image(s) could not be reloaded, e.g. {missing[0]!r}")
    tiles = []
    for key, (a, b, c, d) in zip(ids, boxes.tolist()):
        t01 = net.denormalize(torch.from_numpy(np.ascontiguousarray(xs[key][:, a:c, b:d]))[None])[0].clamp(
            0, 1
        )
        arr = (t01.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        tiles.append(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr)
    return tiles


def draw_concepts(
    patches: np.ndarray, values: np.ndarray, importance: np.ndarray, side: int = 48
) -> np.ndarray:
    """One row per concept (most important first): a label strip with its importance, then its top crops, each
    with its coefficient underneath."""
    k, top = patches.shape[:2]
    pad, strip, head = 2, 11, 12
    row_h = head + side + strip + pad
    width = top * (side + pad) + pad
    out = np.full((k * row_h + pad, width, 3), 255, dtype=np.uint8)
    for i in range(k):
        y = i * row_h
        out[y : y + head] = label_strip(
            width, f"concept {i}: importance {importance[i]:.3g}", head, fg=0, bg=255
        )
        for j in range(top):
            x0 = pad + j * (side + pad)
            tile = Image.fromarray(patches[i, j]).resize((side, side), Image.Resampling.NEAREST)
            out[y + head : y + head + side, x0 : x0 + side] = np.asarray(tile)
            out[y + head + side : y + head + side + strip, x0 : x0 + side] = label_strip(
                side, f"{values[i, j]:.2g}", strip
            )
    return out


_BASES = LRU(4)  # crops and NMF, per weights, dataset, layer, class and crop parameters
_SCORES = LRU(8)  # importances, per basis and importance parameters


def forget() -> None:
    """Drop the cached crops, bases and importances (to measure a cold run, or free their memory)."""
    _BASES.clear()
    _SCORES.clear()


def factorise(
    net: Backbone, ds: Dataset, layer: str, t: int, p: DiscoverParams, obs: Observer, key: tuple[Any, ...]
) -> tuple[Any, ...]:
    """Collect the crops and factorise them: (Crops, U, W, relative error, seconds); cached under `key` unless
    stopped early."""

    def make() -> tuple[Any, ...]:
        t0 = time.perf_counter()
        cr = collect(net, ds, layer, t, p, obs)
        need = 4 * p.k
        if len(cr.ids) < need:
            extra = " (stopped early)" if cr.stopped else ""
            raise BadInput(
                f"discover: only {len(cr.ids)} crops from {cr.chosen} image(s) of class {t} in {cr.seen} streamed"
                f"{extra}; k={p.k} concepts need at least {need} crops: raise `limit` or `crops`, lower `k`, or "
                "choose a dataset with more images of the class"
            )
        report(obs, 0.65, f"NMF of {len(cr.ids)} crops into {p.k} concepts")
        u, w, err = fit_basis(cr.acts, p.k, p.seed)
        return cr, u, w, err, time.perf_counter() - t0

    out: tuple[Any, ...] = _BASES.get_or(key, make)
    if out[0].stopped:
        _BASES.pop(key, None)  # a partial collection answers this run only
    return out


def discover(net: Backbone, t: int, p: DiscoverParams, obs: Observer) -> Concepts:
    """Collect crops, factorise, score: the discovery for class `t`, concepts in decreasing importance."""
    li = local_layer(net, p.layer, "discover")
    ds = resolve_dataset(net, p.dataset, p.limit)
    key: tuple[Any, ...] = (
        net.weights_hash(),
        dataset_key(ds),
        li.name,
        t,
        p.k,
        p.select,
        p.crops,
        p.crop,
        p.crop_mode,
    )
    key += (p.max_crops, p.importance_images, p.seed)
    cr, u, w, err, secs = factorise(net, ds, li.name, t, p, obs, key)
    report(obs, 0.75, f"importance ({p.importance}) on {len(cr.images)} images")
    t0 = time.perf_counter()
    key += (p.importance, p.designs)
    imp: np.ndarray = _SCORES.get_or(key, lambda: importance(net, li.name, t, w, cr, p))
    if cr.stopped:
        _SCORES.pop(key, None)
    order = np.argsort(-imp, kind="stable")
    info: dict[str, Any] = {
        "images_seen": cr.seen,
        "class_images": cr.chosen,
        "crops": len(cr.ids),
        "importance_images": len(cr.images),
        "stopped": cr.stopped,
        "backend": cr.backend,
        "reconstruction_error": round(err, 4),
        "factorise_s": round(secs, 3),
        "importance_s": round(time.perf_counter() - t0, 3),
    }
    return Concepts(li.name, t, w[order], imp[order], u[:, order], cr, err, info)


def default_target(net: Backbone, img: Any, target: int | None, what: str) -> int:
    """`target` checked against the head, else the image's predicted class; BadInput when there is neither."""
    from ..attribute._base.targets import input_tensor, require_head, torch_logits

    require_head(net, what)
    t = net.check_target(target)
    if t is not None:
        return t
    if img is None:
        raise BadInput(f"{what}: pass a `target` class (or an image, whose predicted class is used)")
    return int(np.argmax(torch_logits(net, input_tensor(net, img))))


@register(
    "discover",
    "concepts",
    DiscoverParams,
    paper="Fel et al. 2023, CRAFT: Concept Recursive Activation FacTorization for Explainability (CVPR)",
    needs_image=False,
    needs_grad=True,
    stoppable=True,
)
def run(net: Backbone, img: Any, p: DiscoverParams, obs: Observer) -> Result:
    """The k concepts a class uses at a layer (NMF of crop activations), ranked by importance, with top crops."""
    t0 = time.perf_counter()
    t = default_target(net, img, p.target, "discover")
    con = discover(net, t, p, obs)
    cr = con.crops
    top = min(p.top, len(cr.ids))
    report(obs, 0.9, "cropping the top crops")
    idx = np.argsort(-con.coef, axis=0, kind="stable")[:top].T  # (k, top)
    side = int(cr.boxes[0, 2] - cr.boxes[0, 0])
    tiles = crop_tiles(
        net,
        resolve_dataset(net, p.dataset, p.limit),
        [cr.ids[i] for i in idx.ravel()],
        cr.boxes[idx.ravel()],
        p.batch_size,
    )
    patches = np.stack(tiles).reshape(p.k, top, side, side, 3)
    values = np.take_along_axis(con.coef, idx.T, 0).T
    extras: dict[str, Any] = {
        "image": Image.fromarray(draw_concepts(patches, values, con.importance, max(48, side))),
        "importance": con.importance.astype(np.float32),
        "basis": con.basis,
        "top_values": values.astype(np.float32),
        "top_boxes": cr.boxes[idx],
        "top_ids": [[cr.ids[i] for i in row] for row in idx],
    }
    shown = None
    if img is not None:
        from ..attribute._base.targets import input_tensor

        li = net.layer(con.layer)
        x = input_tensor(net, img)
        fmap = runner(net, [li.name], backend=p.backend).run(x.numpy())[li.name][0]
        check_nonnegative(fmap, li.name)
        extras["maps"] = cells_to_input(map_coefficients(fmap, con.basis), li.rf, *x.shape[-2:])
        shown = net.deprocess(x)
    label = net.labels[t] if net.labels and t < len(net.labels) else str(t)
    report(obs, 1.0, "done")
    return Result(
        "patches",
        patches,
        meta={
            "layer": con.layer,
            "target": {"index": t, "label": label},
            "importance_method": p.importance,
            "k": p.k,
            **con.info,
            "total_s": round(time.perf_counter() - t0, 3),
        },
        image=shown,
        extras=extras,
    )
