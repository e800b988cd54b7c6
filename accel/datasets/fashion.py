"""Fashion-MNIST as a dataset: the 'train' or 'test' split read through `accel.fashion_mnist`, made into images
one at a time, batched without PIL for 28x28 networks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import BadInput
from .base import Batch, Dataset, Item

if TYPE_CHECKING:
    from ..backbone import Backbone


class FashionMNIST(Dataset):
    """Fashion-MNIST 'train' (60k) or 'test' (10k) from the Debian files (28x28 grayscale, 10 labelled classes).

    The idx file is the dataset's storage (8 MB for test, 47 MB for train); images are made one at a time, and
    `batches` for a 28x28 network skips PIL entirely."""

    kind = "fashion_mnist"

    def __init__(self, split: str = "test", limit: int | None = None) -> None:
        super().__init__(limit)
        from ..fashion_mnist import FASHION_CLASSES, split_files

        split_files(split)  # BadInput for an unknown split, before any I/O
        self.split = split
        self.classes = list(FASHION_CLASSES)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def base_spec(self) -> str:
        return f"fashion_mnist:{self.split}"

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Images (N,28,28) uint8 and labels (N,) of the split, limited (read on first use, shared by copies)."""
        if self._arrays is None:
            from ..fashion_mnist import load_fashion_mnist

            self._arrays = _load_fashion_cached(self.split, load_fashion_mnist)
        imgs, labels = self._arrays
        n = len(self)
        return imgs[:n], labels[:n]

    def _count(self) -> int:
        if self._arrays is None:
            return 60_000 if self.split == "train" else 10_000
        return len(self._arrays[0])

    def _items(self) -> Iterator[Item]:
        imgs, labels = self.arrays()
        for i in range(len(imgs)):
            yield Item(_gray_image(imgs[i]), int(labels[i]), f"{self.base_spec}:{i}")

    def load(self, id: str) -> Item:
        prefix = f"{self.base_spec}:"
        if not id.startswith(prefix) or not id[len(prefix) :].isdigit():
            raise BadInput(f"{id!r} is not an id of {self.spec} (expected '{prefix}<index>')")
        i = int(id[len(prefix) :])
        imgs, labels = self.arrays()
        if i >= len(imgs):
            raise BadInput(f"{id!r}: index {i} is out of range for {self.spec} ({len(imgs)} images)")
        return Item(_gray_image(imgs[i]), int(labels[i]), id)

    def batches(self, net: Backbone, batch_size: int = 64) -> Iterator[Batch]:
        """Vectorised for 28x28 networks (no PIL); other input sizes go through the backbone's own resize."""
        if net.pre.size != 28:
            yield from super().batches(net, batch_size)
            return
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise BadInput(f"batch_size must be >= 1, got {batch_size!r}")
        self.check_size()
        import torch

        self.errors = []
        imgs, labels = self.arrays()
        for i in range(0, len(imgs), int(batch_size)):
            chunk = torch.from_numpy(imgs[i : i + batch_size].astype(np.float32) / np.float32(255.0))
            x01 = chunk[:, None].expand(-1, 3, -1, -1)
            with torch.no_grad():
                x = net.normalize(x01).numpy().astype(np.float32, copy=False)
            ids = [f"{self.base_spec}:{j}" for j in range(i, i + len(chunk))]
            yield Batch(x, labels[i : i + len(chunk)].astype(np.int64), ids)


_FASHION_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _load_fashion_cached(
    split: str, loader: Callable[[str], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """The split's arrays, read once per process and shared read-only by every dataset of that split."""
    if split not in _FASHION_CACHE:
        imgs, labels = loader(split)
        imgs.setflags(write=False)
        labels.setflags(write=False)
        _FASHION_CACHE[split] = (imgs, labels)
    return _FASHION_CACHE[split]


def _gray_image(a: np.ndarray) -> Image.Image:
    """A 28x28 grayscale array as an RGB PIL image."""
    return Image.fromarray(np.ascontiguousarray(a), mode="L").convert("RGB")
