"""Streaming image datasets: a folder, the packaged photo sets, and Fashion-MNIST, behind one small protocol.

Every dataset has `len()`, iterates as `(PIL image, label or None, id)` and offers `batches(net, batch_size)`,
which yields preprocessed numpy batches a few at a time, so a 100k-image folder is never held in memory at once.
`get(spec)` turns a string ("fashion_mnist:test:10000", "foolbox:imagenet", "samples", a folder path) into one.

Rooms: `base` (the protocol, `Subset`), `folder`, `photos` (packaged photo sets), `fashion` (Fashion-MNIST) and
`specs` (spec strings, the default dataset of a model).
"""

from __future__ import annotations

from .base import IMAGE_EXTENSIONS, Batch, Dataset, Item, Skipped, Subset
from .fashion import FashionMNIST
from .folder import ImageFolder
from .photos import CIFAR10_CLASSES, PackagedPhotos
from .specs import default_spec, get

__all__ = [
    "Item",
    "Batch",
    "Dataset",
    "ImageFolder",
    "PackagedPhotos",
    "FashionMNIST",
    "Subset",
    "Skipped",
    "CIFAR10_CLASSES",
    "IMAGE_EXTENSIONS",
    "get",
    "default_spec",
]
