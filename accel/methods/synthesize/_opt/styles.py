"""Style and texture inputs: which layers carry style and content, and the style images themselves.

Gatys et al.'s layer choices on VGG (relu{1..5}_1 for style, relu4_2 for content) with a spread-over-the-depth
fallback for other backbones; style images by procedural name (generated from a seed, no files), packaged
sample name, or path.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ....errors import BadInput
from ....images import open_image, sample_image, sample_images

if TYPE_CHECKING:
    from ....backbone import Backbone

# VGG layer choices (Gatys et al. use conv/relu x_1 for style and relu4_2 for content).
_VGG19_STYLE = tuple(f"features.block{b}_relu1" for b in range(1, 6))
_VGG16_STYLE = ("features.1", "features.6", "features.11", "features.18", "features.25")


def _top_spatial(net: Backbone) -> list[str]:
    """Spatial layers, preferring top-level blocks (at most one dot in the name) over their inner modules."""
    spatial = [li.name for li in net.conv_layers() if li.out_shape[1] > 1]
    return [n for n in spatial if n.count(".") <= 1] or spatial


def default_style_layers(net: Backbone) -> list[str]:
    """Style/texture layers for a backbone: relu{1..5}_1 on VGG, else five spatial layers spread over the depth."""
    names = {li.name for li in net.layers()}
    for cand in (_VGG19_STYLE, _VGG16_STYLE):
        if all(c in names for c in cand):
            return list(cand)
    convs = _top_spatial(net)
    if not convs:
        raise BadInput(f"{net.name!r} has no spatial layers to compute Gram matrices on")
    idx = sorted({round(i * (len(convs) - 1) / 4 * 0.75) for i in range(5)})
    return [convs[i] for i in idx]


def default_content_layer(net: Backbone) -> str:
    """Content layer: relu4_2 on VGG, else a spatial layer about 60% of the way through the network."""
    names = {li.name for li in net.layers()}
    for cand in ("features.block4_relu2", "features.20"):
        if cand in names and (cand != "features.20" or "features.25" in names):
            return cand
    convs = _top_spatial(net)
    if not convs:
        raise BadInput(f"{net.name!r} has no spatial layers")
    return convs[int(0.6 * (len(convs) - 1))]


PROCEDURAL_STYLES = ("mosaic", "strokes")


def procedural_style(name: str, size: int = 512, seed: int = 0) -> Image.Image:
    """A painting-like style image generated from a seed (no files needed): "mosaic" or "strokes".

    "mosaic" is stained glass: Voronoi cells in saturated colours with dark lead lines; "strokes" is short curved
    brush strokes in blues and yellows following a swirling flow field (a nod to van Gogh)."""
    if name not in PROCEDURAL_STYLES:
        raise BadInput(f"unknown procedural style {name!r}; choose one of {PROCEDURAL_STYLES}")
    if not 16 <= int(size) <= 4096:
        raise BadInput(f"procedural style size must lie in 16..4096, got {size}")
    return _procedural(name, int(size), int(seed)).copy()


@functools.lru_cache(maxsize=8)
def _procedural(name: str, size: int, seed: int) -> Image.Image:
    """Generated once per (name, size, seed): "strokes" at 512 px takes about a second (callers get copies)."""
    rng = np.random.default_rng(seed)
    return _mosaic(size, rng) if name == "mosaic" else _strokes(size, rng)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV arrays in 0..1 -> RGB (..., 3) in 0..1."""
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros((*h.shape, 3))
    for k, (r, g, b) in enumerate(table):
        m = i == k
        out[m] = np.stack([r[m], g[m], b[m]], -1)
    return out


def _mosaic(size: int, rng: np.random.Generator) -> Image.Image:
    """Stained glass: Voronoi cells in saturated colours, shaded towards their borders, with dark lead lines."""
    from scipy.spatial import cKDTree

    n = max(8, int(170 * (size / 512) ** 2))
    seeds = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    pts = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
    d, idx = cKDTree(seeds).query(pts, k=2)
    hue = rng.choice([0.0, 0.08, 0.15, 0.33, 0.55, 0.62, 0.75, 0.9], n) + rng.normal(0, 0.02, n)
    colors = _hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 1.0, n), rng.uniform(0.55, 1.0, n))
    img = colors[idx[:, 0]].reshape(size, size, 3)
    shade = 1.0 - 0.25 * (d[:, 0] / (d[:, 0] + d[:, 1] + 1e-9)).reshape(size, size)
    img = img * shade[..., None] * rng.uniform(0.92, 1.0, (size, size, 1))
    edge = ((d[:, 1] - d[:, 0]) < max(1.5, 3.0 * size / 512)).reshape(size, size)
    img[edge] = (0.08, 0.07, 0.06)
    out = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(0.6 * size / 512))


def _strokes(size: int, rng: np.random.Generator) -> Image.Image:
    """Short curved brush strokes in blues and yellows following a swirling, seeded flow field."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=(size, size)), size / 10, mode="wrap")
    field = (field - field.mean()) / (field.std() + 1e-9)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = field * 2.2 + 3.0 * np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * yy)
    palette = np.array(
        [
            (20, 40, 110),
            (35, 70, 160),
            (60, 110, 190),
            (110, 160, 210),
            (235, 205, 70),
            (245, 230, 140),
            (250, 250, 235),
            (15, 25, 60),
            (90, 140, 80),
        ],
        dtype=np.float64,
    )
    probs = np.array([0.2, 0.2, 0.15, 0.1, 0.12, 0.08, 0.05, 0.07, 0.03])
    img = Image.new("RGB", (size, size), (30, 50, 120))
    draw = ImageDraw.Draw(img)
    scale = size / 512
    for _ in range(int(9000 * scale**2)):
        y, x = rng.uniform(0, size, 2)
        col = palette[rng.choice(len(palette), p=probs)] * rng.uniform(0.85, 1.15)
        col_t = tuple(int(c) for c in np.clip(col, 0, 255))
        width = max(1, int(round(rng.uniform(2.5, 5.0) * scale)))
        pts = [(x, y)]
        for _ in range(int(rng.integers(4, 9))):
            a = angle[int(y) % size, int(x) % size]
            x, y = x + 4.0 * scale * np.cos(a), y + 4.0 * scale * np.sin(a)
            pts.append((x, y))
        draw.line(pts, fill=col_t, width=width, joint="curve")
    return img.filter(ImageFilter.GaussianBlur(0.5 * scale))


def load_style_image(style: str) -> Image.Image:
    """A style image by procedural name ("mosaic", "strokes"), packaged sample name ("hubble_deep_field"), or path."""

    s = str(style).strip()
    if not s:
        raise BadInput(
            "style is empty: give a procedural style (mosaic, strokes), a sample name, or a file path"
        )
    if s in PROCEDURAL_STYLES:
        return procedural_style(s, 512, seed=0)
    if s.lower() in sample_images():
        return sample_image(s.lower())
    try:
        path = Path(s).expanduser()
        exists = path.is_file()
    except (OSError, RuntimeError, ValueError):  # "~nosuchuser/x" (no home), a 300-character name
        exists = False
    if not exists:
        raise BadInput(
            f"style {s!r} is not a procedural style {PROCEDURAL_STYLES}, a sample image "
            f"({', '.join(sample_images())}), nor an existing image file"
        )
    return open_image(path)
