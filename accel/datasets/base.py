"""The dataset protocol: `Item`, `Batch`, `Dataset` (limits, batching, notes about what was left out), `Subset`.

Every dataset has `len()`, iterates as `(PIL image, label or None, id)` and offers `batches(net, batch_size)`,
which yields preprocessed numpy batches a few at a time, so a 100k-image folder is never held in memory at once.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image

from ..errors import BadInput
from ..images import image_extensions

if TYPE_CHECKING:
    from ..backbone import Backbone

# Every extension of a format `open_image` decodes (from Pillow's registry), so no decodable format is skipped.
IMAGE_EXTENSIONS: frozenset[str] = image_extensions()
_SKIPPED_EXAMPLES = 10  # skipped file names kept per folder for the message (the count is exact)


class Item(NamedTuple):
    """One dataset element: the RGB image, its class index (None when unlabelled) and a stable id (path or key)."""

    image: Image.Image
    label: int | None
    id: str


class Batch(NamedTuple):
    """A preprocessed batch: network input (N,C,H,W) float32, labels (N,) int64 (-1 = unknown) and ids."""

    x: np.ndarray
    labels: np.ndarray
    ids: list[str]


@dataclass
class Skipped:
    """Files of a folder that are not taken as images, counted: `other` have no image extension (or none at all),
    `loose` are images lying beside class folders (only images inside a class folder are labelled)."""

    other: int = 0
    loose: int = 0
    other_examples: list[str] = field(default_factory=list)
    loose_examples: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """All files left out, of either kind."""
        return self.other + self.loose

    def add(self, kind: str, name: str) -> None:
        """Count one left-out file of `kind` ("other" or "loose"), keeping the first few names as examples."""
        setattr(self, kind, getattr(self, kind) + 1)
        examples = getattr(self, f"{kind}_examples")
        if len(examples) < _SKIPPED_EXAMPLES:
            examples.append(name)

    def messages(self) -> list[str]:
        """One line per kind of left-out file, naming a few and saying what to do (empty when none)."""
        out = []
        if self.other:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            out.append(
                f"skipped {_files(self.other)} that {_are(self.other)} not images by name "
                f"({_examples(self.other_examples, self.other)}); image files need one of these extensions: {exts}"
            )
        if self.loose:
            out.append(
                f"ignored {_files(self.loose)} beside the class folders ({_examples(self.loose_examples, self.loose)}):"
                " only images inside a class folder are used; move them into one"
            )
        return out


def _files(n: int) -> str:
    """ "1 file" or "N files"."""
    return f"{n:,} file{'s' if n != 1 else ''}"


def _are(n: int) -> str:
    """ "is" or "are", agreeing with n."""
    return "are" if n != 1 else "is"


def _examples(names: list[str], n: int) -> str:
    """The first three example names, with "..." when there are more."""
    shown = ", ".join(names[:3])
    return f"{shown}, ..." if n > 3 else shown


class Dataset:
    """Base class: subclasses implement `_count`, `_items` and `load`; the base adds limits, batching and errors."""

    kind = "dataset"

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
            raise BadInput(f"dataset limit must be a positive number of images, got {limit!r}")
        self.limit = int(limit) if limit is not None else None
        self._classes: list[str] | None = None
        self.errors: list[tuple[str, str]] = []

    @property
    def classes(self) -> list[str] | None:
        """Class names by label index, or None when the images are unlabelled (folders list themselves first)."""
        self._list()
        return self._classes

    @classes.setter
    def classes(self, value: list[str] | None) -> None:
        self._classes = value

    @property
    def skipped(self) -> Skipped:
        """Files the dataset lists but does not take as images (none, except for folders)."""
        return Skipped()

    def notes(self) -> list[str]:
        """Human-readable lines about what this dataset left out: files that are not images by name (known on
        listing) and images that could not be decoded (known after iterating). Empty when nothing was left out."""
        lines = self.skipped.messages()
        if self.errors:
            example = Path(self.errors[0][0]).name
            lines.append(
                f"{len(self.errors)} image file{'s' if len(self.errors) != 1 else ''} could not be decoded and "
                f"{'were' if len(self.errors) != 1 else 'was'} skipped (e.g. {example}: {self.errors[0][1]})"
            )
        return lines

    # -- what subclasses provide --------------------------------------------------------------------------------
    def _list(self) -> None:
        """List the dataset's files if that is deferred to first use (folders); nothing to do by default."""

    def _count(self) -> int:
        """How many images the dataset holds, before its limit."""
        raise NotImplementedError

    def _items(self) -> Iterator[Item]:
        """Every item in order, skipping (and listing in `.errors`) images that cannot be decoded."""
        raise NotImplementedError

    def load(self, id: str) -> Item:
        """Random access by id (as yielded by iteration); BadInput if the id is not part of this dataset."""
        raise NotImplementedError

    @property
    def base_spec(self) -> str:
        """The spec string of this dataset without its limit."""
        raise NotImplementedError

    # -- the protocol -------------------------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """A string that `get()` turns back into this dataset (with its limit); also a cache key."""
        return self.base_spec if self.limit is None else f"{self.base_spec}#limit={self.limit}"

    def __len__(self) -> int:
        n = self._count()
        return n if self.limit is None else min(n, self.limit)

    def __iter__(self) -> Iterator[Item]:
        self.errors = []
        for n, item in enumerate(self._items(), 1):
            yield item
            if self.limit is not None and n >= self.limit:
                return  # stop before decoding another image

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, n={len(self)})"

    def take(self, n: int | None) -> Dataset:
        """The same dataset limited to its first `n` images (None or 0: no further limit)."""
        if not n:
            return self
        out = copy.copy(self)
        out.errors = []
        out.limit = int(n) if self.limit is None else min(self.limit, int(n))
        if out.limit < 1:
            raise BadInput(f"dataset limit must be a positive number of images, got {n!r}")
        return out

    @property
    def labelled(self) -> bool:
        """Whether the images carry class labels (class subfolders, foolbox sets, Fashion-MNIST)."""
        return self.classes is not None

    def subset(self, ids: Sequence[str]) -> Dataset:
        """The items with these ids (as yielded by iteration), in the order given."""
        return Subset(self, ids)

    def label_name(self, label: int | None) -> str | None:
        """The class name of a label (or its number as text when the names are unknown)."""
        if label is None or label < 0:
            return None
        if self.classes is not None and label < len(self.classes):
            return self.classes[label]
        return str(label)

    def check_size(self) -> None:
        """Refuse (ResourceLimit naming CONVLENS_MAX_DATASET) a dataset larger than the configured cap."""
        from ..limits import check

        check("dataset", len(self), f"dataset {self.spec!r}: images")

    def batches(self, net: Backbone, batch_size: int = 64) -> Iterator[Batch]:
        """Preprocessed batches for `net` (its size, mean/std, channel order), `batch_size` images at a time."""
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise BadInput(f"batch_size must be >= 1, got {batch_size!r}")
        self.check_size()
        import torch

        xs: list[torch.Tensor] = []
        labels: list[int] = []
        ids: list[str] = []

        def flush() -> Batch:
            with torch.no_grad():
                x = net.normalize(torch.cat(xs)).numpy().astype(np.float32, copy=False)
            b = Batch(x, np.asarray(labels, dtype=np.int64), list(ids))
            xs.clear()
            labels.clear()
            ids.clear()
            return b

        for img, label, key in self:
            xs.append(net.to_tensor01(img))
            labels.append(-1 if label is None else int(label))
            ids.append(key)
            if len(xs) >= batch_size:
                yield flush()
        if xs:
            yield flush()


class Subset(Dataset):
    """Chosen items of another dataset, by id, in the order given (random access through `parent.load`)."""

    kind = "subset"

    def __init__(self, parent: Dataset, ids: Sequence[str]) -> None:
        super().__init__(None)
        self.parent = parent
        self.ids = list(ids)
        self.classes = parent.classes

    @property
    def base_spec(self) -> str:
        return f"{self.parent.spec}#subset={len(self.ids)}"

    @property
    def labelled(self) -> bool:
        return self.parent.labelled

    def _count(self) -> int:
        return len(self.ids)

    def _items(self) -> Iterator[Item]:
        for i in self.ids:
            try:
                yield self.parent.load(i)
            except BadInput as e:
                self.errors.append((i, str(e)))

    def load(self, id: str) -> Item:
        return self.parent.load(id)
