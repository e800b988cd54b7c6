"""Streaming image datasets: a folder, the packaged photo sets, and Fashion-MNIST, behind one small protocol.

Every dataset has `len()`, iterates as `(PIL image, label or None, id)` and offers `batches(net, batch_size)`,
which yields preprocessed numpy batches a few at a time, so a 100k-image folder is never held in memory at once.
`get(spec)` turns a string ("fashion_mnist:test:10000", "foolbox:imagenet", "samples", a folder path) into one.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image

from .errors import BadInput
from .images import image_extensions

if TYPE_CHECKING:
    from .backbone import Backbone

__all__ = [
    "Item",
    "Batch",
    "Dataset",
    "ImageFolder",
    "PackagedPhotos",
    "FashionMNIST",
    "Subset",
    "IMAGE_EXTENSIONS",
    "get",
    "default_spec",
]

# Every extension of a format `open_image` decodes (from Pillow's registry), so no decodable format is skipped.
IMAGE_EXTENSIONS: frozenset[str] = image_extensions()
_SKIPPED_EXAMPLES = 10  # skipped file names kept per folder for the message (the count is exact)

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
    return f"{n:,} file{'s' if n != 1 else ''}"


def _are(n: int) -> str:
    return "are" if n != 1 else "is"


def _examples(names: list[str], n: int) -> str:
    shown = ", ".join(names[:3])
    return f"{shown}, ..." if n > 3 else shown


class Dataset:
    """Base class: subclasses implement `_count`, `_items` and `load`; the base adds limits, batching and errors."""

    kind = "dataset"

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
            raise BadInput(f"dataset limit must be a positive number of images, got {limit!r}")
        self.limit = int(limit) if limit is not None else None
        self.classes: list[str] | None = None
        self.errors: list[tuple[str, str]] = []

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
    def _count(self) -> int:
        raise NotImplementedError

    def _items(self) -> Iterator[Item]:
        raise NotImplementedError

    def load(self, id: str) -> Item:
        """Random access by id (as yielded by iteration); BadInput if the id is not part of this dataset."""
        raise NotImplementedError

    @property
    def base_spec(self) -> str:
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
        from .limits import check

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


# ---------------------------------------------------------------------------------------------------------------
# a folder of images


class ImageFolder(Dataset):
    """Images under a folder: flat (unlabelled), or one subfolder per class (labels = sorted subfolder names;
    images anywhere below a class folder count, loose images beside the class folders are not used).

    Paths are listed on first use (names only, no decoding); a file is an image candidate when its extension is
    one of a format `open_image` decodes (`IMAGE_EXTENSIONS`). Files left out are counted in `.skipped` and
    described by `.notes()` (hidden files and folders, starting with ".", are left out silently). Each image is
    opened when iteration reaches it; unreadable ones are skipped and listed in `.errors` as (path, reason)."""

    kind = "folder"

    def __init__(self, path: str | os.PathLike[str], limit: int | None = None) -> None:
        super().__init__(limit)
        self.root = Path(path).expanduser()
        if not self.root.is_dir():
            raise BadInput(f"image folder {str(path)!r} does not exist or is not a directory")
        self._files: list[tuple[Path, int | None]] | None = None
        self._index: dict[str, int | None] | None = None
        self._skipped = Skipped()

    @property
    def classes(self) -> list[str] | None:  # type: ignore[override]
        """Class names (the subfolders holding images), or None for a flat folder; listing happens on first use."""
        self._scan()
        return self._classes

    @classes.setter
    def classes(self, value: list[str] | None) -> None:
        self._classes = value

    @property
    def base_spec(self) -> str:
        return f"folder:{self.root.resolve()}"

    @property
    def skipped(self) -> Skipped:
        """Files under the folder that are not used as images (counted on listing, without decoding)."""
        self._scan()
        return self._skipped

    def _scan(self) -> list[tuple[Path, int | None]]:
        if self._files is not None:
            return self._files
        skipped = Skipped()
        try:
            entries = sorted(
                (e for e in os.scandir(self.root) if not e.name.startswith(".")), key=lambda e: e.name
            )
        except OSError as e:
            raise BadInput(
                f"image folder {str(self.root)!r} cannot be listed ({e.strerror or type(e).__name__})"
            ) from None
        subdirs = [Path(e.path) for e in entries if _is_dir(e)]
        class_files = [(d.name, _image_files(d, self.root, skipped)) for d in subdirs]
        class_files = [(name, files) for name, files in class_files if files]
        if class_files:
            self._classes = [name for name, _ in class_files]
            files: list[tuple[Path, int | None]] = [
                (f, label) for label, (_, fs) in enumerate(class_files) for f in fs
            ]
            for e in entries:
                if not _is_dir(e):
                    skipped.add("loose" if _is_image_name(e.name) else "other", e.name)
        else:
            self._classes = None
            files = [(f, None) for f in _image_files(self.root, self.root, skipped, recursive=False)]
        self._files = files
        self._skipped = skipped
        return files

    def _count(self) -> int:
        return len(self._scan())

    def _items(self) -> Iterator[Item]:
        from .images import open_image

        for path, label in self._scan():
            try:
                img = open_image(path)
            except BadInput as e:
                self.errors.append((str(path), str(e)))
                continue
            except Exception as e:  # noqa: BLE001 - one odd file must never end a 100k-image pass
                self.errors.append((str(path), f"{type(e).__name__}: {e}"))
                continue
            yield Item(img, label, str(path))

    def load(self, id: str) -> Item:
        from .images import open_image

        if self._index is None:
            self._index = {str(p): lab for p, lab in self._scan()}
        if id not in self._index:
            raise BadInput(f"{id!r} is not an image of {self.spec}")
        return Item(open_image(id), self._index[id], id)

    def fingerprint(self) -> str:
        """Changes when files are added, removed or replaced (for caches keyed by this dataset)."""
        files = self._scan()
        mt = max((_mtime(p) for p, _ in files[:: max(1, len(files) // 64)]), default=0)
        return f"{len(files)}:{_mtime(self.root)}:{mt}"


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def _is_dir(e: os.DirEntry[str]) -> bool:
    try:
        return e.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _image_files(folder: Path, root: Path, skipped: Skipped, recursive: bool = True) -> list[Path]:
    """Files under `folder` with an image extension, sorted; other files are counted in `skipped` (by their path
    relative to `root`), hidden entries are left out."""
    out: list[Path] = []
    stack = [folder]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            if _is_dir(e):
                if recursive:
                    stack.append(Path(e.path))
            elif _is_image_name(e.name):
                out.append(Path(e.path))
            else:
                skipped.add("other", os.path.relpath(e.path, root))
    return sorted(out)


# ---------------------------------------------------------------------------------------------------------------
# packaged photos


class PackagedPhotos(Dataset):
    """Photos shipped inside installed packages: foolbox's labelled sets or the scikit-image/sklearn/matplotlib samples.

    `kind`: "imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST" (foolbox, 20 labelled photos each) or
    "samples" (unlabelled sample photos)."""

    kind = "photos"

    def __init__(self, kind: str = "imagenet", limit: int | None = None) -> None:
        super().__init__(limit)
        from .images import FOOLBOX_KINDS, foolbox_photos, sample_images

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
        from .images import open_image

        for path, label in self._files:
            try:
                img = open_image(path)
            except BadInput as e:
                self.errors.append((str(path), str(e)))
                continue
            yield Item(img, label, str(path))

    def load(self, id: str) -> Item:
        from .images import open_image

        if id not in self._index:
            raise BadInput(f"{id!r} is not a photo of {self.spec}")
        return Item(open_image(id), self._index[id], id)


def _class_names(kind: str) -> list[str] | None:
    if kind == "imagenet":
        from .backbone import imagenet_labels

        return imagenet_labels()
    if kind == "cifar10":
        return list(CIFAR10_CLASSES)
    if kind == "mnist":
        return [str(i) for i in range(10)]
    if kind == "fashionMNIST":
        from .fashion_mnist import FASHION_CLASSES

        return list(FASHION_CLASSES)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Fashion-MNIST


class FashionMNIST(Dataset):
    """Fashion-MNIST 'train' (60k) or 'test' (10k) from the Debian files (28x28 grayscale, 10 labelled classes).

    The idx file is the dataset's storage (8 MB for test, 47 MB for train); images are made one at a time, and
    `batches` for a 28x28 network skips PIL entirely."""

    kind = "fashion_mnist"

    def __init__(self, split: str = "test", limit: int | None = None) -> None:
        super().__init__(limit)
        from .fashion_mnist import FASHION_CLASSES, _split_files

        _split_files(split)  # BadInput for an unknown split, before any I/O
        self.split = split
        self.classes = list(FASHION_CLASSES)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def base_spec(self) -> str:
        return f"fashion_mnist:{self.split}"

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Images (N,28,28) uint8 and labels (N,) of the split, limited (read on first use, shared by copies)."""
        if self._arrays is None:
            from .fashion_mnist import load_fashion_mnist

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


def _load_fashion_cached(split: str, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    if split not in _FASHION_CACHE:
        imgs, labels = loader(split)
        imgs.setflags(write=False)
        labels.setflags(write=False)
        _FASHION_CACHE[split] = (imgs, labels)
    return _FASHION_CACHE[split]


def _gray_image(a: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(a), mode="L").convert("RGB")


# ---------------------------------------------------------------------------------------------------------------
# specs


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
    if parts and parts[-1].isdigit():
        n = int(parts[-1])
        if n < 1:
            raise BadInput(f"dataset spec {spec!r}: the image count must be >= 1")
        return parts[:-1], n
    if parts and parts[-1].lstrip("-").isdigit():
        raise BadInput(f"dataset spec {spec!r}: the image count must be >= 1")
    return parts, None


def _parse(spec: str) -> Dataset:
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
