"""Shared helpers of the inspect family: cached dataset features, layer lookup, tile drawing.

Dataset features are computed once per (model weights, dataset, tap) through the pooled batched runner (ONNX
Runtime when it works) and kept in a small in-process LRU, so t-SNE, neighbours and metric learning on the same
data share one forward pass.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import BadInput
from ...registry import SILENT, Observer
from ...runtime.runner import runner

if TYPE_CHECKING:
    from ...backbone import Backbone, LayerInfo
    from ...datasets import Dataset

_LOCK = threading.RLock()


class LRU(OrderedDict):
    """A tiny thread-safe LRU of computed values (dataset features, scans): `get_or(key, make)`."""

    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        """The value for `key`, computed by `make()` (outside the lock) when absent; the oldest entry goes."""
        with _LOCK:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()
        with _LOCK:
            self[key] = value
            self.move_to_end(key)
            while len(self) > self.maxsize:
                self.popitem(last=False)
        return value


_FEATURES = LRU(6)


def report(obs: Observer, frac: float, msg: str) -> None:
    """Tell the observer `frac` of the work is done, the fraction clipped to 0..1."""
    obs.progress(float(min(1.0, max(0.0, frac))), msg)


# ---------------------------------------------------------------------------------------------------------------
# datasets


def resolve_dataset(net: Backbone, spec: str, limit: int) -> Dataset:
    """The dataset named by `spec` ("auto" = the model's own), limited to `limit` images (0 = all)."""
    from ... import datasets

    s = datasets.default_spec(net) if spec in ("", "auto") else spec
    try:
        ds = datasets.get(s, limit or None)
    except (OSError, RuntimeError) as e:  # "~nobody/x" (no such home), a 300-character name, no permission
        raise BadInput(f"dataset {s!r} cannot be read as a folder of images: {e}") from None
    ds.check_size()  # ResourceLimit naming CONVLENS_MAX_DATASET, before any work
    return ds


def dataset_key(ds: Dataset) -> str:
    """A cache key for a dataset: its spec, plus a content fingerprint for folders."""
    fp = getattr(ds, "fingerprint", None)
    return f"{ds.spec}@{fp()}" if callable(fp) else ds.spec


@dataclass
class Features:
    """Vectors of one tap for every image of a dataset, with labels, ids and small thumbnails."""

    feats: np.ndarray  # (N, D) float32
    labels: np.ndarray  # (N,) int64, -1 = unknown
    ids: list[str]
    thumbs: np.ndarray  # (N, t, t, 3) uint8: the preprocessed input, denormalised and resized
    classes: list[str] | None
    spec: str
    tap: str
    meta: dict[str, Any] = field(default_factory=dict)

    def pixels(self) -> np.ndarray:
        """Pixel-space vectors (N, t*t*3) in 0..1, from the thumbnails (full resolution for 28x28 inputs)."""
        return self.thumbs.reshape(len(self.thumbs), -1).astype(np.float32) / np.float32(255.0)


def thumb_size(net: Backbone) -> int:
    """Side of the stored thumbnails: the input itself up to 48 px (28 for Fashion-MNIST nets)."""
    return int(min(net.pre.size, 48))


def to_thumbs(net: Backbone, x: np.ndarray, size: int) -> np.ndarray:
    """Network inputs (N,C,H,W) -> uint8 RGB thumbnails (N,size,size,3), area-averaged."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        x01 = net.denormalize(torch.from_numpy(np.ascontiguousarray(x))).clamp(0, 1)
        if x01.shape[-1] != size or x01.shape[-2] != size:
            x01 = F.interpolate(x01, size=(size, size), mode="area")
    return (x01.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


def vector_tap(net: Backbone, tap: str) -> str:
    """Check a tap usable as one vector per image: 'embedding', 'logits' or a layer (spatial maps are averaged)."""
    if tap == "embedding":
        if not net.embedding_layer:
            raise BadInput(f"{net.name!r} declares no embedding layer; pass a layer name as `tap`")
        return tap
    if tap == "logits":
        if not net.has_head:
            raise BadInput(f"{net.name!r} has no classifier head, so it has no 'logits' tap")
        return tap
    base, _, what = tap.partition(":")
    if what not in ("", "in"):
        raise BadInput(f"tap {tap!r}: only '<layer>' or '<layer>:in' are understood")
    try:
        net.layer(base)
    except BadInput as e:
        raise BadInput(f"tap {tap!r}: {e}") from None
    return tap


def dataset_features(
    net: Backbone,
    ds: Dataset,
    tap: str = "embedding",
    backend: str = "auto",
    obs: Observer = SILENT,
    batch_size: int = 256,
) -> Features:
    """Features of `tap` for every image of `ds`, computed once through the runner and cached (LRU)."""
    vector_tap(net, tap)
    key = (net.weights_hash(), dataset_key(ds), tap, thumb_size(net))

    def make() -> Features:
        t0 = time.perf_counter()
        r = runner(net, [tap], backend=backend)
        n = len(ds)
        ts = thumb_size(net)
        feats: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        ids: list[str] = []
        thumbs: list[np.ndarray] = []
        done = 0
        for x, lab, bid in ds.batches(net, batch_size):
            out = r.run(x)[tap]
            if out.ndim == 4:
                out = out.mean(axis=(2, 3))
            feats.append(out.reshape(len(out), -1).astype(np.float32, copy=False))
            labels.append(lab)
            ids.extend(bid)
            thumbs.append(to_thumbs(net, x, ts))
            done += len(x)
            report(obs, done / max(n, 1), f"features {done}/{n}")
        if not feats:
            extra = f" ({len(ds.errors)} unreadable files, e.g. {ds.errors[0]})" if ds.errors else ""
            raise BadInput(f"dataset {ds.spec} yielded no images{extra}")
        f = np.concatenate(feats)
        if not np.isfinite(f).all():
            raise BadInput(f"tap {tap!r} of {net.name!r} produced NaN/inf features on {ds.spec}")
        return Features(
            f,
            np.concatenate(labels),
            ids,
            np.concatenate(thumbs),
            ds.classes,
            ds.spec,
            tap,
            {
                "backend": r.backend,
                "features_s": round(time.perf_counter() - t0, 3),
                "n": len(f),
                "dim": int(f.shape[1]),
                "skipped": len(ds.errors),
            },
        )

    feats = _FEATURES.get_or(key, make)
    report(obs, 1.0, "features ready")
    return feats


# ---------------------------------------------------------------------------------------------------------------
# layers


def spatial_layer(
    net: Backbone, name: str, default: str | None = None, what: str = "this method"
) -> LayerInfo:
    """A layer with a (C,H,W) output by name ('' = `default`), or BadInput listing some that qualify."""
    name = name or default or ""
    if not name:
        raise BadInput(f"{what}: pass a `layer` (one of {[li.name for li in net.conv_layers()][:12]} ...)")
    return net.spatial_layer(
        name,
        lambda li, spatial: (
            f"{what}: layer {name!r} has output shape {li.out_shape}, not a (C,H,W) feature map; "
            f"choose one of {spatial[:8]} ... ({len(spatial)} spatial layers)"
        ),
    )


def default_activation_layer(net: Backbone) -> str:
    """The layer shown by default: the CAM layer, else the last spatial layer with more than 1x1 maps."""
    name = net.default_spatial_layer()
    if name is None:
        raise BadInput(f"{net.name!r} has no spatial layer")
    return name


def parse_int_list(text: str, what: str, upper: int) -> list[int]:
    """'3, 7,12' -> [3, 7, 12], each in 0..upper-1, no duplicates; BadInput otherwise."""
    out: list[int] = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = int(part)
        except ValueError:
            raise BadInput(f"{what}: {part!r} is not a whole number (expected e.g. '3,17,42')") from None
        if not 0 <= v < upper:
            raise BadInput(f"{what}: {v} is out of range 0..{upper - 1}")
        if v not in out:
            out.append(v)
    return out


# ---------------------------------------------------------------------------------------------------------------
# tiles


def check_canvas(pixels: float, what: str, lower: str) -> None:
    """ResourceLimit before drawing a picture of more than CONVLENS_MAX_PIXELS pixels (the opened-image cap):
    slider maxima multiply (4096 filters x 1024 inputs x zoom 64 would need ~30 GB), so check before allocating."""
    from ...errors import ResourceLimit
    from ...limits import CAPS, cap

    limit = cap("pixels")
    if pixels > limit:
        env = CAPS["pixels"].env
        raise ResourceLimit(
            f"{what}: the picture would have {pixels:,.0f} pixels, over the cap of {limit:,} ({env}); "
            f"lower {lower}, or raise the cap with the environment variable {env}"
        )


def upscale(a: np.ndarray, zoom: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an HxW(x3) array by an integer factor."""
    if zoom <= 1:
        return a
    return np.repeat(np.repeat(a, zoom, axis=0), zoom, axis=1)


def auto_zoom(side: int, target: int = 32) -> int:
    """Integer zoom that brings a tile of `side` pixels to about `target` pixels (at least 1)."""
    return int(max(1, round(target / max(side, 1))))


def minmax01(a: np.ndarray) -> np.ndarray:
    """Min-max scaling to 0..1 (a constant array maps to 0.5)."""
    a = np.asarray(a, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.full_like(a, 0.5)
    return (a - lo) / (hi - lo)


def rgb(a: np.ndarray) -> np.ndarray:
    """HxW or HxWx3 uint8 -> HxWx3 uint8."""
    return np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a


def label_strip(width: int, text: str, height: int = 11, fg: int = 255, bg: int = 0) -> np.ndarray:
    """A uint8 HxWx3 strip with `text` in PIL's default bitmap font (for values under tiles)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (int(width), int(height)), (bg, bg, bg))
    ImageDraw.Draw(im).text((1, 0), text, fill=(fg, fg, fg))
    return np.asarray(im)


def scatter_image(points: np.ndarray, labels: np.ndarray | None = None, size: int = 512) -> np.ndarray:
    """A plain scatter plot of 2-D points (coloured by label, tab10/tab20) as uint8 HxWx3, for CLI output."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    p = np.asarray(points, dtype=np.float64)
    lo, hi = p.min(0), p.max(0)
    u = (p - lo) / np.where(hi > lo, hi - lo, 1.0)
    margin = 8
    xy = margin + u * (size - 2 * margin)
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    labs = np.full(len(p), -1) if labels is None else np.asarray(labels)
    n_cls = int(labs.max()) + 1 if labs.size and labs.max() >= 0 else 0
    cmap = colormaps["tab10" if n_cls <= 10 else "tab20"]
    for (x, y), lab in zip(xy, labs):
        col = (90, 90, 90) if lab < 0 else tuple(int(255 * v) for v in cmap(int(lab) % cmap.N)[:3])
        d.ellipse((x - 1.5, size - y - 1.5, x + 1.5, size - y + 1.5), fill=col)
    return np.asarray(im)


class torch_threads:  # noqa: N801 - used like a function: `with torch_threads(1): ...`
    """Temporarily set torch's intra-op threads (small models on busy cores run faster on one thread)."""

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.old = 0

    def __enter__(self) -> None:
        import torch

        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.old)
