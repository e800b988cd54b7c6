"""Fashion-MNIST: find the Debian files (or a user folder), read the idx files with checked headers, fall back to torchvision."""

from __future__ import annotations

import gzip
import os
import struct
from io import BufferedIOBase
from pathlib import Path

import numpy as np

from accel.errors import BadInput

FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

ENV_VAR = "CONVLENS_FASHION_MNIST"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_MAX_ITEMS = 1_000_000  # far above 60k; bounds what a forged header can make us allocate
_SIDE = 28


def split_files(split: str) -> tuple[str, str]:
    """Base names (without .gz) of a split's image and label files; BadInput for a split other than train/test."""
    if split not in _PREFIX:
        raise BadInput(f"Fashion-MNIST split must be 'train' or 'test', not {split!r}")
    prefix = _PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _resolve(folder: Path, base: str) -> Path | None:
    """The gzipped or plain idx file `base` inside `folder`, or None."""
    for name in (base + ".gz", base):
        path = folder / name
        if path.is_file():
            return path
    return None


def _complete(folder: Path) -> bool:
    """Whether `folder` holds all four idx files (gzipped or plain)."""
    return all(_resolve(folder, base) is not None for split in _PREFIX for base in split_files(split))


def find_fashion_mnist() -> Path | None:
    """The folder holding the four Fashion-MNIST idx files ($CONVLENS_FASHION_MNIST, then Debian's), or None."""
    from .settings import get

    override = get(ENV_VAR)
    if override:
        folder = Path(override)
        if _complete(folder):
            return folder
    if _complete(DEBIAN_DIR):
        return DEBIAN_DIR
    return None


def _open(path: Path) -> BufferedIOBase:
    """Open an idx file for binary reading, transparently gunzipping `.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_exact(stream: BufferedIOBase, n: int, path: Path) -> bytes:
    """Read exactly n bytes or raise BadInput naming the truncated file."""
    data = stream.read(n)
    if len(data) != n:
        raise BadInput(f"{path}: truncated idx file (wanted {n} bytes, got {len(data)})")
    return data


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read one idx file of unsigned bytes, checking its magic number, dimensions and payload size."""
    path = Path(path)
    try:
        with _open(path) as stream:
            header = _read_exact(stream, 4 + 4 * ndim, path)
            found, *dims = struct.unpack(f">{1 + ndim}I", header)
            if found != magic:
                raise BadInput(
                    f"{path}: not an idx file of this kind (magic {found:#010x}, expected {magic:#010x})"
                )
            if not 0 < dims[0] <= _MAX_ITEMS or any(d <= 0 or d > 4096 for d in dims[1:]):
                raise BadInput(f"{path}: implausible idx dimensions {tuple(dims)}")
            size = int(np.prod(dims))
            payload = _read_exact(stream, size, path)
            if stream.read(1):
                raise BadInput(f"{path}: trailing bytes after the {size}-byte payload the header announces")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:  # BadGzipFile is an OSError; listed for clarity
        raise BadInput(f"{path}: unreadable idx file ({exc})") from exc
    return np.frombuffer(bytearray(payload), dtype=np.uint8).reshape(dims)


def _load_idx_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check one split's images and labels from `folder`."""
    image_base, label_base = split_files(split)
    image_path, label_path = _resolve(folder, image_base), _resolve(folder, label_base)
    if image_path is None or label_path is None:
        raise BadInput(f"{folder}: missing {image_base}(.gz) or {label_base}(.gz)")
    images = read_idx(image_path, _IMAGES_MAGIC, 3)
    labels = read_idx(label_path, _LABELS_MAGIC, 1)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise BadInput(f"{image_path}: images are {images.shape[1:]}, expected 28x28")
    if len(images) != len(labels):
        raise BadInput(f"{folder}: {len(images)} images but {len(labels)} labels in split {split!r}")
    if labels.size and int(labels.max()) >= len(FASHION_CLASSES):
        raise BadInput(f"{label_path}: label {int(labels.max())} out of range 0..9")
    return images, labels.astype(np.int64)


def _torchvision_fallback(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Download (or reuse) torchvision's FashionMNIST copy in the user cache; for machines without Debian's files."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "convlens" / "fashion-mnist"
    try:
        from torchvision.datasets import FashionMNIST

        dataset = FashionMNIST(str(cache), train=(split == "train"), download=True)
    except Exception as exc:  # network failures surface as many types (URLError, RuntimeError, OSError)
        raise BadInput(
            "Fashion-MNIST not found: install the Debian package `dataset-fashion-mnist` "
            f"(files under {DEBIAN_DIR}), or point ${ENV_VAR} at a folder with the four idx(.gz) files; "
            f"the torchvision download into {cache} failed too ({type(exc).__name__}: {exc})"
        ) from exc
    images = np.ascontiguousarray(dataset.data.numpy().astype(np.uint8))
    labels = dataset.targets.numpy().astype(np.int64)
    return images, labels


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the 'train' (60k) or 'test' (10k) split."""
    split_files(split)  # validates the split name before any I/O
    from .settings import get

    override = get(ENV_VAR)
    if override and not _complete(Path(override)):
        raise BadInput(f"${ENV_VAR}={str(override)!r} does not hold the four Fashion-MNIST idx(.gz) files")
    folder = find_fashion_mnist()
    if folder is not None:
        return _load_idx_split(folder, split)
    return _torchvision_fallback(split)
