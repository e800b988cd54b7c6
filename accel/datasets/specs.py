"""Dataset spec strings: `get("fashion_mnist:test:10000")`, "foolbox:imagenet", "samples", "folder:PATH" or a
folder path, each turned into its dataset; and the dataset a model is meant for."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput
from .base import Dataset
from .fashion import FashionMNIST
from .folder import ImageFolder
from .photos import PackagedPhotos

if TYPE_CHECKING:
    from ..backbone import Backbone


def get(spec: str | Dataset, limit: int | None = None) -> Dataset:
    """A dataset from a spec string, optionally limited to its first `limit` images.

    Specs: "fashion_mnist[:train|test[:N]]", "foolbox[:imagenet|cifar10|cifar100|mnist|fashionMNIST[:N]]",
    "samples[:N]", "folder:PATH", or the path of an existing folder."""
    if isinstance(spec, Dataset):
        return spec.take(limit)
    if not isinstance(spec, str) or not spec.strip():
        raise BadInput(f"dataset spec must be a non-empty string, got {spec!r}")
    s = spec.strip()
    base, _, lim = s.partition("#limit=")
    if lim:
        if not lim.isdigit() or int(lim) < 1:
            raise BadInput(f"dataset spec {spec!r}: '#limit=' needs a positive whole number")
        return get(base, limit).take(int(lim))
    ds = _parse(base)
    return ds.take(limit)


def _split_limit(parts: list[str], spec: str) -> tuple[list[str], int | None]:
    """A trailing image count split off a spec's parts (BadInput when it is not positive)."""
    if parts and parts[-1].isdigit():
        n = int(parts[-1])
        if n < 1:
            raise BadInput(f"dataset spec {spec!r}: the image count must be >= 1")
        return parts[:-1], n
    if parts and parts[-1].lstrip("-").isdigit():
        raise BadInput(f"dataset spec {spec!r}: the image count must be >= 1")
    return parts, None


def _parse(spec: str) -> Dataset:
    """The dataset a spec without "#limit=" names (a known prefix, or the path of a folder)."""
    head, sep, rest = spec.partition(":")
    key = head.lower().replace("-", "_")
    if key == "folder":
        if not rest:
            raise BadInput("dataset spec 'folder:' needs a path, e.g. folder:/data/photos")
        return ImageFolder(rest)
    if key in ("fashion_mnist", "fashionmnist"):
        parts, n = _split_limit([p for p in rest.split(":") if p] if sep else [], spec)
        if len(parts) > 1:
            raise BadInput(f"dataset spec {spec!r}: expected fashion_mnist[:train|test[:N]]")
        return FashionMNIST(parts[0] if parts else "test", n)
    if key in ("foolbox", "imagenet", "cifar10", "cifar100", "mnist"):
        parts, n = _split_limit([p for p in rest.split(":") if p] if sep else [], spec)
        if key != "foolbox":
            parts = [key, *parts]
        if len(parts) > 1:
            raise BadInput(f"dataset spec {spec!r}: expected foolbox[:KIND[:N]]")
        return PackagedPhotos(parts[0] if parts else "imagenet", n)
    if key == "samples":
        parts, n = _split_limit([p for p in rest.split(":") if p] if sep else [], spec)
        if parts:
            raise BadInput(f"dataset spec {spec!r}: expected samples[:N]")
        return PackagedPhotos("samples", n)
    try:
        p = Path(spec).expanduser()
        is_dir, exists = p.is_dir(), p.exists()
    except (OSError, RuntimeError, ValueError) as e:  # ~nosuchuser, names too long, NUL bytes
        raise BadInput(f"dataset {spec[:200]!r} is not a usable path ({type(e).__name__}: {e})") from None
    if is_dir:
        return ImageFolder(p)
    if exists:
        raise BadInput(f"dataset {spec!r} is a file, not a folder of images")
    raise BadInput(
        f"unknown dataset {spec!r}: use fashion_mnist[:train|test[:N]], foolbox[:imagenet|cifar10|...[:N]], "
        "samples, or the path of a folder of images"
    )


def default_spec(net: Backbone) -> str:
    """The dataset a model is meant for: Fashion-MNIST test for 28x28 grayscale nets, foolbox's ImageNet photos else."""
    if net.pre.channels == "L" and net.pre.size == 28:
        return "fashion_mnist:test"
    return "foolbox:imagenet"
