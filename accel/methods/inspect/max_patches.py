"""Maximally activating patches: the dataset crops that excite one channel most, cut to the unit's exact field.

Pass 1 streams the dataset through the batched runner (ONNX Runtime when it works) and keeps, per channel, a
running top-k of (per-image maximum, image id, position): memory is O(channels * k), never O(dataset). Pass 2
reloads only the winning images, crops each winner's receptive field (`net.layer(layer).rf.box`) from the
preprocessed input, and draws the k best per unit with their activation values, as in the lecture's figure
(Zeiler & Fergus 2014; Girshick et al. 2014). Per image only its strongest position counts, so the k patches of
a unit come from k different images.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ...errors import BadInput
from ...registry import BACKEND, DATASET, LAYER, SILENT, Observer, param, register
from ...result import Result
from ...runtime.runner import runner
from ._common import (
    LRU,
    check_canvas,
    dataset_key,
    default_activation_layer,
    parse_int_list,
    report,
    resolve_dataset,
    spatial_layer,
)

if TYPE_CHECKING:
    from ...datasets import Dataset
    from ...zoo import Backbone, LayerInfo


@dataclass
class MaxPatchesParams:
    layer: str = LAYER("", "layer whose channels to explain ('' = the CAM layer / last spatial layer)")
    channels: str = param(
        "", "comma-separated channel indices, e.g. '3,17'; '' = the `top_channels` most selective channels"
    )
    top_channels: int = param(
        8, "when `channels` is empty: how many of the most selective channels", min=1, max=256
    )
    k: int = param(9, "patches per channel (the best k images)", min=1, max=64)
    dataset: str = DATASET()
    limit: int = param(2000, "stream at most this many images (0 = the whole dataset)", min=0, max=100_000)
    batch_size: int = param(128, "images per streamed batch", min=1, max=4096)
    tile: int = param(0, "display size of each patch in pixels (0 = auto)", min=0, max=512)
    backend: str = BACKEND()


@dataclass
class TopK:
    """Running top-k per channel of per-image maxima, plus moments of those maxima for selectivity."""

    k: int
    channels: int
    vals: np.ndarray = field(init=False)
    ids: np.ndarray = field(init=False)
    pos: np.ndarray = field(init=False)
    seen: int = 0
    s1: np.ndarray = field(init=False)
    s2: np.ndarray = field(init=False)
    active: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.vals = np.full((self.channels, 0), -np.inf, dtype=np.float32)
        self.ids = np.empty((self.channels, 0), dtype=object)
        self.pos = np.zeros((self.channels, 0), dtype=np.int64)
        self.s1 = np.zeros(self.channels, dtype=np.float64)
        self.s2 = np.zeros(self.channels, dtype=np.float64)
        self.active = np.zeros(self.channels, dtype=np.int64)

    def update(self, acts: np.ndarray, ids: list[str]) -> None:
        """Merge one batch of activations (B,C,H,W); ties keep the earlier image (deterministic)."""
        b, c = acts.shape[:2]
        flat = acts.reshape(b, c, -1)
        pos = flat.argmax(2)  # (B,C): first maximal position per image and channel
        val = np.take_along_axis(flat, pos[..., None], 2)[..., 0].astype(np.float32)
        self.s1 += val.sum(0, dtype=np.float64)
        self.s2 += np.square(val, dtype=np.float64).sum(0)
        self.active += (val > 0).sum(0)
        self.seen += b
        cand_v = np.concatenate([self.vals, val.T], axis=1)
        cand_i = np.concatenate([self.ids, np.broadcast_to(np.asarray(ids, dtype=object), (c, b))], axis=1)
        cand_p = np.concatenate([self.pos, pos.T], axis=1)
        order = np.argsort(-cand_v, axis=1, kind="stable")[:, : self.k]
        self.vals = np.take_along_axis(cand_v, order, 1)
        self.ids = np.take_along_axis(cand_i, order, 1)
        self.pos = np.take_along_axis(cand_p, order, 1)

    def selectivity(self) -> np.ndarray:
        """(mean of the top-k maxima - mean over all images) / std over all images; -inf for silent channels."""
        n = max(self.seen, 1)
        mean = self.s1 / n
        std = np.sqrt(np.maximum(self.s2 / n - mean**2, 0.0))
        top = self.vals.mean(1)
        sel = (top - mean) / (std + 1e-6 * (1.0 + np.abs(mean)))
        sel[~(self.vals[:, 0] > 0)] = -np.inf
        return sel


_PASSES = LRU(8)


def scan(
    net: Backbone,
    ds: Dataset,
    layer: str,
    k: int,
    batch_size: int = 128,
    backend: str = "auto",
    obs: Observer = SILENT,
) -> tuple[TopK, dict[str, Any]]:
    """Pass 1: stream `ds` through the runner and keep the top-k per channel of `layer` (cached per inputs)."""
    key = (net.weights_hash(), dataset_key(ds), layer, k)

    def make() -> tuple[TopK, dict[str, Any]]:
        t0 = time.perf_counter()
        r = runner(net, [layer], backend=backend)
        n = len(ds)
        top = TopK(k, int(net.layer(layer).out_shape[0]))
        for x, _labels, ids in ds.batches(net, batch_size):
            top.update(r.run(x)[layer], ids)
            report(obs, 0.9 * top.seen / max(n, 1), f"{top.seen}/{n} images")
        if top.seen == 0:
            extra = f" ({len(ds.errors)} unreadable files, e.g. {ds.errors[0]})" if ds.errors else ""
            raise BadInput(f"dataset {ds.spec} yielded no images{extra}")
        info = {
            "images": top.seen,
            "skipped": len(ds.errors),
            "backend": r.backend,
            "scan_s": round(time.perf_counter() - t0, 3),
        }
        return top, info

    return _PASSES.get_or(key, make)


def _tile_side(size: int) -> int:
    if size < 48:
        return size * math.ceil(48 / size)
    return min(size, 128)


def _canvas(
    crop01: np.ndarray, box: tuple[int, int, int, int], unclipped: tuple[int, int], side: tuple[int, int]
) -> np.ndarray:
    """Place a clipped crop (h,w,3 in 0..1) where it sits inside its full field; outside the image is gray."""
    out = np.full((*side, 3), 0.5, dtype=np.float32)
    h, w = crop01.shape[:2]
    oy = min(box[0] - unclipped[0], side[0] - h)
    ox = min(box[1] - unclipped[1], side[1] - w)
    out[oy : oy + h, ox : ox + w] = crop01
    return out


def crop_unit(
    li: LayerInfo, x: np.ndarray, pos: int
) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """The network-input crop (C,h,w) of the field of flat position `pos` of `li`, its box and its (i, j)."""
    if li.rf is None or li.rf.global_:
        raise BadInput(f"layer {li.name!r} has no local receptive field, so it has no patches to crop")
    hl, wl = li.out_shape[1], li.out_shape[2]
    i, j = divmod(int(pos), wl)
    if not (0 <= i < hl):
        raise BadInput(f"position {pos} is outside the {hl}x{wl} map of {li.name!r}")
    box = li.rf.box(i, j, x.shape[-2], x.shape[-1])
    t, left, b, r = box
    return x[:, t:b, left:r], box, (i, j)


@register(
    "max_patches",
    "inspect",
    MaxPatchesParams,
    paper="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks; Girshick et al. 2014 (R-CNN)",
    needs_image=False,
    page="patches",
)
def run(net: Backbone, img: Any, p: MaxPatchesParams, obs: Observer) -> Result:
    """The k dataset patches (exact receptive fields) that activate chosen channels most, with their values."""
    import torch

    li = spatial_layer(net, p.layer, default_activation_layer(net), "max_patches")
    if li.rf is None or li.rf.global_:
        raise BadInput(
            f"max_patches: layer {li.name!r} has no local receptive field (it sees the whole image); "
            "choose an earlier convolutional layer"
        )
    n_ch = int(li.out_shape[0])
    chosen = parse_int_list(p.channels, "max_patches: channels", n_ch) if p.channels.strip() else []
    ds = resolve_dataset(net, p.dataset, p.limit)
    t0 = time.perf_counter()
    top, info = scan(net, ds, li.name, p.k, p.batch_size, p.backend, obs)
    sel = top.selectivity()
    if not chosen:
        ranked = [int(c) for c in np.argsort(-sel, kind="stable") if np.isfinite(sel[c])]
        chosen = ranked[: p.top_channels]
        if not chosen:
            raise BadInput(f"max_patches: no channel of {li.name!r} is ever positive on {ds.spec}")
    k_eff = int(min(p.k, top.seen))
    size = (min(li.rf.size[0], net.pre.size), min(li.rf.size[1], net.pre.size))
    side = p.tile or _tile_side(max(size))
    # per unit and image: its patch, or its tile in the mosaic with the value strip and gap (the larger)
    tile_px = max(size[0] * size[1], (side + 13) * (side + 2))
    check_canvas(len(chosen) * k_eff * tile_px, "max_patches", "top_channels / channels, k or tile")

    # pass 2: reload only the winning images and crop their fields
    win_ids = list(dict.fromkeys(top.ids[c, j] for c in chosen for j in range(k_eff)))
    report(obs, 0.9, f"cropping {len(win_ids)} images")
    xs: dict[str, np.ndarray] = {}
    for x, _lab, ids in ds.subset(win_ids).batches(net, p.batch_size):
        for i, key in enumerate(ids):
            xs[key] = x[i]
    missing = [i for i in win_ids if i not in xs]
    if missing:
        raise BadInput(
            f"max_patches: {len(missing)} winning image(s) could not be reloaded, e.g. {missing[0]!r}"
        )

    patches = np.zeros((len(chosen), k_eff, *size, 3), dtype=np.uint8)
    values = np.zeros((len(chosen), k_eff), dtype=np.float32)
    boxes = np.zeros((len(chosen), k_eff, 4), dtype=np.int64)
    units = np.zeros((len(chosen), k_eff, 2), dtype=np.int64)
    ids_out: list[list[str]] = []
    crops: list[list[np.ndarray]] = []
    for u, c in enumerate(chosen):
        row_ids, row_crops = [], []
        for j in range(k_eff):
            key = str(top.ids[c, j])
            crop, box, (i0, j0) = crop_unit(li, xs[key], int(top.pos[c, j]))
            with torch.no_grad():
                c01 = net.denormalize(torch.from_numpy(np.ascontiguousarray(crop))[None])[0].clamp(0, 1)
            unclipped = (
                math.floor(li.rf.start[0] + i0 * li.rf.stride[0]),
                math.floor(li.rf.start[1] + j0 * li.rf.stride[1]),
            )
            canvas = _canvas(c01.permute(1, 2, 0).numpy(), box, unclipped, size)
            patches[u, j] = (canvas * 255 + 0.5).astype(np.uint8)
            values[u, j] = top.vals[c, j]
            boxes[u, j] = box
            units[u, j] = (i0, j0)
            row_ids.append(key)
            row_crops.append(crop.copy())
        ids_out.append(row_ids)
        crops.append(row_crops)
    mosaic = draw_mosaic(patches, values, chosen, side)
    report(obs, 1.0, "done")
    return Result(
        "patches",
        patches,
        meta={
            "layer": li.name,
            "channels": chosen,
            "k": k_eff,
            "dataset": ds.spec,
            "receptive_field": [int(li.rf.size[0]), int(li.rf.stride[0])],
            "patch_size": list(size),
            **info,
            "total_s": round(time.perf_counter() - t0, 3),
        },
        extras={
            "image": Image.fromarray(mosaic),
            "values": values,
            "ids": ids_out,
            "boxes": boxes,
            "units": units,
            "crops": crops,
            "channels": np.asarray(chosen, dtype=np.int64),
            "selectivity": sel.astype(np.float32),
            "top_values": top.vals.copy(),
        },
    )


def draw_mosaic(patches: np.ndarray, values: np.ndarray, channels: list[int], side: int) -> np.ndarray:
    """One block per unit (ceil(sqrt(k)) columns of tiles, each with its value underneath), blocks in a grid."""
    from ._common import label_strip

    n_units, k = patches.shape[:2]
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    pad, strip, head = 2, 11, 12
    bw = cols * (side + pad) + pad
    bh = head + rows * (side + strip + pad) + pad
    blocks = []
    for u in range(n_units):
        block = np.full((bh, bw, 3), 255, dtype=np.uint8)
        block[:head] = label_strip(bw, f"channel {channels[u]}", head, fg=0, bg=255)
        for j in range(k):
            r, c = divmod(j, cols)
            y = head + r * (side + strip + pad)
            x = pad + c * (side + pad)
            tile = Image.fromarray(patches[u, j])
            resample = Image.Resampling.NEAREST if side >= tile.width else Image.Resampling.BILINEAR
            block[y : y + side, x : x + side] = np.asarray(tile.resize((side, side), resample))
            block[y + side : y + side + strip, x : x + side] = label_strip(side, f"{values[u, j]:.3g}", strip)
        blocks.append(block)
    ucols = math.ceil(math.sqrt(n_units))
    urows = math.ceil(n_units / ucols)
    gap = 8
    out = np.full((urows * (bh + gap) + gap, ucols * (bw + gap) + gap, 3), 235, dtype=np.uint8)
    for u, block in enumerate(blocks):
        r, c = divmod(u, ucols)
        out[
            gap + r * (bh + gap) : gap + r * (bh + gap) + bh, gap + c * (bw + gap) : gap + c * (bw + gap) + bw
        ] = block
    return out
