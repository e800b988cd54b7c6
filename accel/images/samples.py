"""Packaged photos: sample images shipped inside scikit-image, scikit-learn and matplotlib, and foolbox's labelled
photos, found on disk without importing those packages (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..errors import BadInput
from .open import open_image

__all__ = ["FOOLBOX_KINDS", "foolbox_imagenet", "foolbox_photos", "sample_image", "sample_images"]

FOOLBOX_KINDS: tuple[str, ...] = ("imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST")


_SKIMAGE_SAMPLES = (
    "chelsea.png",
    "coffee.png",
    "astronaut.png",
    "rocket.jpg",
    "horse.png",
    "coins.png",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
)
_SKLEARN_SAMPLES = ("china.jpg", "flower.jpg")
_MATPLOTLIB_SAMPLES = ("grace_hopper.jpg",)


def _package_dirs(pkg: str) -> list[Path]:
    """Directories of an installed package, found without importing it (empty if it is not installed)."""
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    return [Path(spec.origin).parent] if spec.origin else []


def _find_files(pkg: str, subdir: str, names: Sequence[str]) -> dict[str, Path]:
    """Which of `names` exist in `subdir` of an installed package, keyed by file stem."""
    found: dict[str, Path] = {}
    for base in _package_dirs(pkg):
        for name in names:
            path = base / subdir / name
            key = Path(name).stem
            if key not in found and path.is_file():
                found[key] = path
    return found


def sample_images() -> dict[str, Path]:
    """Sample photos shipped inside installed packages (scikit-image, scikit-learn, matplotlib), name -> path.

    Only files already on disk are listed; nothing is downloaded and the packages are not imported."""
    found: dict[str, Path] = {}
    for pkg, subdir, names in (
        ("skimage", "data", _SKIMAGE_SAMPLES),
        ("sklearn", "datasets/images", _SKLEARN_SAMPLES),
        ("matplotlib", "mpl-data/sample_data", _MATPLOTLIB_SAMPLES),
    ):
        for key, path in _find_files(pkg, subdir, names).items():
            found.setdefault(key, path)
    return {key: found[key] for key in sorted(found)}


def sample_image(name: str) -> Image.Image:
    """Open a packaged sample photo by name (e.g. "chelsea", "china", "grace_hopper") as an RGB image."""
    available = sample_images()
    key = Path(str(name)).stem.lower()
    if key not in available:
        known = ", ".join(available) or "none (install scikit-image, scikit-learn or matplotlib)"
        raise BadInput(f"unknown sample image {name!r}; available: {known}")
    return open_image(available[key])


def foolbox_photos(kind: str = "imagenet") -> list[tuple[Path, int]]:
    """Labelled sample photos from the foolbox package's data folder, as (path, label) sorted by index.

    `kind` is one of imagenet, cifar10, cifar100, mnist, fashionMNIST; [] if foolbox is not installed."""
    canonical = {k.lower(): k for k in FOOLBOX_KINDS}.get(str(kind).lower())
    if canonical is None:
        raise BadInput(f"unknown foolbox sample kind {kind!r}; choose one of {', '.join(FOOLBOX_KINDS)}")
    pattern = re.compile(rf"^{re.escape(canonical)}_(\d+)_(\d+)\.(?:png|jpe?g)$")
    found: dict[int, tuple[Path, int]] = {}
    for base in _package_dirs("foolbox"):
        folder = base / "data"
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            m = pattern.match(path.name)
            if m and path.is_file():
                found.setdefault(int(m.group(1)), (path, int(m.group(2))))
    return [found[i] for i in sorted(found)]


def foolbox_imagenet() -> list[tuple[Path, int]]:
    """The 20 labelled ImageNet photos shipped with foolbox, as (path, ImageNet class index); [] if absent."""
    return foolbox_photos("imagenet")
