"""Concept sets for TCAV and concept discovery: image folders (or an uploaded zip unpacked by the house's safe
readers), packaged procedural sets (stripes, checkerboards, dots, the planted stamp), scikit-image textures as
random crops, and random counterexample sets drawn from a dataset.

A concept set is a preprocessed float32 array (N, C, H, W) for one backbone, so every consumer (CAV training,
discovery, maps) streams it through the runner without caring where the images came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ...errors import BadInput

if TYPE_CHECKING:
    from ...backbone import Backbone

# The planted concept of the `fashion_planted` model (accel.training.planted): a 6x6 black/white checkerboard of
# 2x2-pixel cells, stamped at a uniformly random position on every training image of class PLANTED_CLASS.
PLANTED_CLASS = 6  # Fashion-MNIST "Shirt"
STAMP_SIDE = 6
STAMP_CELL = 2


def checkerboard(side: int = STAMP_SIDE, cell: int = STAMP_CELL) -> np.ndarray:
    """A side x side uint8 checkerboard of cell x cell squares, 255 at the top-left cell and 0 next to it."""
    i = np.arange(side) // cell
    return np.where((i[:, None] + i[None, :]) % 2 == 0, 255, 0).astype(np.uint8)


def stamp_positions(rng: np.random.Generator, n: int, height: int = 28, width: int = 28) -> np.ndarray:
    """`n` uniformly random (top, left) corners at which a STAMP_SIDE stamp fits inside height x width."""
    top = rng.integers(0, height - STAMP_SIDE + 1, size=n)
    left = rng.integers(0, width - STAMP_SIDE + 1, size=n)
    return np.stack([top, left], axis=1).astype(np.int64)


def stamp_images(images: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """A copy of uint8 images (N, H, W) with the planted checkerboard pasted at `positions` (N, 2: top, left)."""
    out = np.array(images, dtype=np.uint8, copy=True)
    board = checkerboard()
    for k, (top, left) in enumerate(np.asarray(positions, dtype=np.int64).tolist()):
        out[k, top : top + STAMP_SIDE, left : left + STAMP_SIDE] = board
    return out


# ---------------------------------------------------------------------------------------------------------------
# concept sets


PROCEDURAL = ("stamp", "checkerboard", "stripes", "dots")
TEXTURES = ("brick", "grass", "gravel")
PACKAGED = (*PROCEDURAL, *TEXTURES, "random")
MIN_IMAGES = 5  # a CAV needs examples to fit and to hold out
POOL_LIMIT = 2000  # images of a non-Fashion-MNIST pool a random set may draw from (decoded once per draw)


@dataclass
class ConceptSet:
    """A concept's images, preprocessed for one backbone: `x` (N,C,H,W) float32; `boxes` (N,4: top, left, bottom,
    right in input pixels, exclusive) where the concept sits in each image, when known (the stamp)."""

    name: str
    x: np.ndarray
    boxes: np.ndarray | None = None
    source: str = ""


def gray_to_input(net: Backbone, images: np.ndarray) -> np.ndarray:
    """uint8 grayscale images (N,H,W) of the network's input size -> its preprocessed batch (N,C,H,W) float32,
    without PIL (the same arithmetic as FashionMNIST.batches)."""
    import torch

    x01 = torch.from_numpy(np.asarray(images, dtype=np.float32) / np.float32(255.0))[:, None].expand(
        -1, 3, -1, -1
    )
    with torch.no_grad():
        return net.normalize(x01).numpy().astype(np.float32, copy=False)


def rgb_to_input(net: Backbone, images: list[Image.Image]) -> np.ndarray:
    """PIL images -> the network's preprocessed batch (its resize, crop, mean/std, channels)."""
    import torch

    with torch.no_grad():
        return net.preprocess_batch(images).numpy().astype(np.float32, copy=False)


def is_fashion(net: Backbone) -> bool:
    """Whether the network takes 28x28 grayscale input (Fashion-MNIST arrays can skip PIL)."""
    return net.pre.channels == "L" and net.pre.size == 28


def pool_spec(net: Backbone, spec: str) -> str:
    """The dataset random images are drawn from: `spec`, or for "auto" the Fashion-MNIST *train* split for 28x28
    grayscale nets (kept apart from the test images TCAV explains) and the model's default dataset otherwise."""
    from ...datasets import default_spec

    if spec not in ("", "auto"):
        return spec
    return "fashion_mnist:train" if is_fashion(net) else default_spec(net)


def random_pixels(net: Backbone, spec: str, n: int, rng: np.random.Generator) -> list[Image.Image]:
    """`n` random images of the pool (PIL, at the network's input size). A pool smaller than 2n images gives random
    crops (50-100% of the side) of its images instead, so small photo sets still yield distinct counterexamples."""
    from ...datasets import FashionMNIST
    from ..inspect._common import resolve_dataset

    side = int(net.pre.size)
    ds = resolve_dataset(net, pool_spec(net, spec), 0)
    if isinstance(ds, FashionMNIST):
        imgs = ds.arrays()[0]
        pick = np.sort(rng.choice(len(imgs), size=n, replace=n > len(imgs)))
        return [Image.fromarray(np.ascontiguousarray(imgs[i])).convert("RGB") for i in pick]
    ds = ds.take(min(len(ds), POOL_LIMIT))
    pool = [item.image for item in ds]
    if not pool:
        raise BadInput(f"random images: dataset {ds.spec!r} yielded no readable images")
    crops = len(pool) < 2 * n
    out = []
    for i in rng.choice(len(pool), size=n, replace=n > len(pool)).tolist():
        img = pool[i].convert("RGB")
        if crops:
            img = random_crop(img, rng, 0.5, 1.0)
        out.append(img.resize((side, side), Image.Resampling.BILINEAR))
    return out


def random_crop(img: Image.Image, rng: np.random.Generator, lo: float, hi: float) -> Image.Image:
    """A square crop of side uniform in [lo, hi] x the image's shorter side, at a uniformly random place."""
    w, h = img.size
    side = max(2, int(round(rng.uniform(lo, hi) * min(w, h))))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return img.crop((left, top, left + side, top + side))


def random_set(net: Backbone, spec: str, n: int, seed: int) -> np.ndarray:
    """A random counterexample set: `n` images drawn (by `seed`) from the pool `spec` ("auto": see pool_spec)."""
    return rgb_to_input(net, random_pixels(net, spec, n, np.random.default_rng(seed)))


def procedural(name: str, side: int, rng: np.random.Generator) -> Image.Image:
    """One random image of a procedural concept at side x side: black/white stripes (random period, angle,
    phase), an axis-aligned checkerboard (random cell, offset) or dots (random radius and places)."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    if name == "stripes":
        period = rng.uniform(side / 16, side / 4)
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle) + rng.uniform(0, period)
        on = (u % period) < period / 2
    elif name == "checkerboard":
        cell = rng.uniform(max(1.0, side / 16), side / 5)
        oy, ox = rng.uniform(0, 2 * cell, size=2)
        on = ((np.floor((yy + oy) / cell) + np.floor((xx + ox) / cell)) % 2) == 0
    elif name == "dots":
        radius = rng.uniform(max(1.0, side / 40), side / 10)
        count = int(0.2 * side * side / (np.pi * radius**2)) + 1
        cy, cx = rng.uniform(0, side, size=(2, count))
        d2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
        on = (d2 <= radius**2).any(0)
    else:
        raise BadInput(f"unknown procedural concept {name!r}; known: {', '.join(PROCEDURAL)}")
    return Image.fromarray(np.where(on, 255, 0).astype(np.uint8)).convert("RGB")


def stamp_set(net: Backbone, pool: str, n: int, rng: np.random.Generator) -> ConceptSet:
    """The planted concept: random pool images with the checkerboard stamp at random places (scaled with the input
    side for nets that are not 28 px), and the stamp's box in each."""
    side = int(net.pre.size)
    base = random_pixels(net, pool, n, rng)
    scale = max(1, round(side / 28))
    board = np.kron(checkerboard(), np.ones((scale, scale), dtype=np.uint8))
    s = board.shape[0]
    pos = rng.integers(0, side - s + 1, size=(n, 2))
    out = []
    for img, (top, left) in zip(base, pos.tolist(), strict=True):
        a = np.array(img.convert("RGB"))
        a[top : top + s, left : left + s] = board[..., None]
        out.append(Image.fromarray(a))
    boxes = np.concatenate([pos, pos + s], axis=1).astype(np.int64)
    return ConceptSet("stamp", rgb_to_input(net, out), boxes, f"packaged: stamp on {pool_spec(net, pool)}")


def texture_set(net: Backbone, name: str, n: int, rng: np.random.Generator) -> ConceptSet:
    """A scikit-image texture (brick, grass, gravel) as `n` random crops (15-50% of its side) resized to the input."""
    from ...images.samples import sample_image

    tex = sample_image(name).convert("RGB")
    side = int(net.pre.size)
    crops = [
        random_crop(tex, rng, 0.15, 0.5).resize((side, side), Image.Resampling.BILINEAR) for _ in range(n)
    ]
    return ConceptSet(name, rgb_to_input(net, crops), None, f"packaged: scikit-image {name} crops")


def packaged_set(net: Backbone, name: str, n: int, seed: int, pool: str = "auto") -> ConceptSet:
    """A packaged concept set of `n` images drawn with `seed` (see PACKAGED); `pool` is where the stamp and the
    random set take their images from."""
    rng = np.random.default_rng(seed)
    if name == "stamp":
        return stamp_set(net, pool, n, rng)
    if name in TEXTURES:
        return texture_set(net, name, n, rng)
    if name == "random":
        return ConceptSet(
            name, rgb_to_input(net, random_pixels(net, pool, n, rng)), None, "random pool images"
        )
    side = int(net.pre.size)
    imgs = [procedural(name, side, rng) for _ in range(n)]
    return ConceptSet(name, rgb_to_input(net, imgs), None, f"packaged: procedural {name}")


def folder_set(net: Backbone, path: str, n: int, seed: int) -> ConceptSet:
    """A concept set from a folder of images (or a .zip of one, unpacked by the house's safe reader), at most `n`
    drawn with `seed`. BadInput for a folder that is missing, empty, has fewer than MIN_IMAGES readable images,
    or mixes image sizes (a concept's scale would differ from image to image after the resize)."""
    from ..inspect._common import resolve_dataset

    folder = unzip(path) if str(path).lower().endswith(".zip") else path
    ds = resolve_dataset(net, f"folder:{folder}", 0)
    items = list(ds)
    what = f"concept folder {str(path)!r}"
    if not items:
        notes = "; ".join(ds.notes()) or "it holds no image files"
        raise BadInput(f"{what} has no readable images ({notes})")
    if len(items) < MIN_IMAGES:
        raise BadInput(
            f"{what} has {len(items)} readable image(s); a concept set needs at least {MIN_IMAGES} "
            "(to fit the CAV and to hold some out)"
        )
    sizes = sorted({it.image.size for it in items})
    if len(sizes) > 1:
        raise BadInput(
            f"{what} mixes image sizes ({', '.join(f'{w}x{h}' for w, h in sizes[:4])}): resize or crop its "
            "images to one size, so the concept has one scale after the network's resize"
        )
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(items))[:n])
    name = Path(str(path)).stem or "folder"
    return ConceptSet(name, rgb_to_input(net, [items[i].image for i in pick]), None, f"folder: {path}")


def unzip(path: str) -> Path:
    """A zip of images unpacked (with the house's caps on members, sizes and ratios) into a fresh session folder."""
    from ...dataroots import extract_zip, new_session_dir

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise BadInput(f"concept zip {path!r} cannot be read ({e.strerror or type(e).__name__})") from None
    return extract_zip(data, new_session_dir(), Path(path).name)


def concept_set(net: Backbone, spec: str, n: int, seed: int, pool: str = "auto") -> ConceptSet:
    """A concept set by name: a packaged set (PACKAGED), "folder:PATH", a folder path or a .zip of images."""
    s = str(spec).strip()
    if not s:
        raise BadInput(
            "empty concept name: use a packaged set (" + ", ".join(PACKAGED) + ") or an image folder"
        )
    if s.lower() in PACKAGED:
        return packaged_set(net, s.lower(), n, seed, pool)
    path = s[len("folder:") :] if s.lower().startswith("folder:") else s
    try:
        p = Path(path).expanduser()
        exists = p.exists()
    except (OSError, RuntimeError, ValueError) as e:  # ~nosuchuser, names too long, NUL bytes
        raise BadInput(f"concept {s[:200]!r} is not a usable path ({type(e).__name__}: {e})") from None
    if not exists:
        raise BadInput(
            f"unknown concept {s!r}: use a packaged set ({', '.join(PACKAGED)}) or an image folder or zip"
        )
    return folder_set(net, str(p), n, seed)


def stamped_fashion(
    split: str = "test", n: int = 50, seed: int = 0, label: int | None = PLANTED_CLASS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` Fashion-MNIST images of `split` (of class `label`; None = any) with the planted stamp at random places:
    (uint8 images (n,28,28), labels (n,), boxes (n,4: top, left, bottom, right)). Ground truth for checks of
    where a concept method finds the stamp."""
    from ...fashion_mnist import load_fashion_mnist

    imgs, labels = load_fashion_mnist(split)
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(labels == label) if label is not None else np.arange(len(labels))
    pick = np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))
    pos = stamp_positions(rng, len(pick))
    boxes = np.concatenate([pos, pos + STAMP_SIDE], axis=1)
    return stamp_images(imgs[pick], pos), labels[pick].astype(np.int64), boxes
