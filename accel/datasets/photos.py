"""Photos shipped inside installed packages as a dataset: foolbox's labelled sets and the sample photos of
scikit-image, scikit-learn and matplotlib."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import BadInput
from .base import Dataset, Item

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class PackagedPhotos(Dataset):
    """Photos shipped inside installed packages: foolbox's labelled sets or the scikit-image/sklearn/matplotlib samples.

    `kind`: "imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST" (foolbox, 20 labelled photos each) or
    "samples" (unlabelled sample photos)."""

    kind = "photos"

    def __init__(self, kind: str = "imagenet", limit: int | None = None) -> None:
        super().__init__(limit)
        from ..images import FOOLBOX_KINDS, foolbox_photos, sample_images

        low = str(kind).lower()
        if low == "samples":
            self.photo_kind = "samples"
            self._files: list[tuple[Path, int | None]] = [(p, None) for p in sample_images().values()]
            if not self._files:
                raise BadInput("no sample photos found: install scikit-image, scikit-learn or matplotlib")
        else:
            canonical = {k.lower(): k for k in FOOLBOX_KINDS}.get(low.replace("-", "").replace("_", ""))
            if canonical is None:
                raise BadInput(
                    f"unknown photo set {kind!r}; choose 'samples' or a foolbox set: {', '.join(FOOLBOX_KINDS)}"
                )
            self.photo_kind = canonical
            self._files = [(p, int(lab)) for p, lab in foolbox_photos(canonical)]
            if not self._files:
                raise BadInput(
                    f"foolbox's {canonical} photos are not installed (pip install --no-deps foolbox==3.3.4)"
                )
            self.classes = _class_names(canonical)
        self._index = {str(p): lab for p, lab in self._files}

    @property
    def base_spec(self) -> str:
        return "samples" if self.photo_kind == "samples" else f"foolbox:{self.photo_kind}"

    @property
    def labelled(self) -> bool:
        return self.photo_kind != "samples"

    def _count(self) -> int:
        return len(self._files)

    def _items(self) -> Iterator[Item]:
        from ..images import open_image

        for path, label in self._files:
            try:
                img = open_image(path)
            except BadInput as e:
                self.errors.append((str(path), str(e)))
                continue
            yield Item(img, label, str(path))

    def load(self, id: str) -> Item:
        from ..images import open_image

        if id not in self._index:
            raise BadInput(f"{id!r} is not a photo of {self.spec}")
        return Item(open_image(id), self._index[id], id)


def _class_names(kind: str) -> list[str] | None:
    """Class names of a foolbox photo set (None for cifar100, whose names convlens does not ship)."""
    if kind == "imagenet":
        from ..backbone import imagenet_labels

        return imagenet_labels()
    if kind == "cifar10":
        return list(CIFAR10_CLASSES)
    if kind == "mnist":
        return [str(i) for i in range(10)]
    if kind == "fashionMNIST":
        from ..fashion_mnist import FASHION_CLASSES

        return list(FASHION_CLASSES)
    return None
