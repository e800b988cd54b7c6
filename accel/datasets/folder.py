"""A folder of images as a dataset: flat (unlabelled) or one subfolder per class, listed by name and decoded one
image at a time as iteration reaches it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import BadInput
from .base import IMAGE_EXTENSIONS, Dataset, Item, Skipped


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
    def base_spec(self) -> str:
        return f"folder:{self.root.resolve()}"

    @property
    def skipped(self) -> Skipped:
        """Files under the folder that are not used as images (counted on listing, without decoding)."""
        self._scan()
        return self._skipped

    def _list(self) -> None:
        """Class names are the subfolders holding images (None for a flat folder): list them on first use."""
        self._scan()

    def _scan(self) -> list[tuple[Path, int | None]]:
        """The (path, label) pairs, listed by name on first use (no decoding); left-out files are counted."""
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
            for entry in entries:
                if not _is_dir(entry):
                    skipped.add("loose" if _is_image_name(entry.name) else "other", entry.name)
        else:
            self._classes = None
            files = [(f, None) for f in _image_files(self.root, self.root, skipped, recursive=False)]
        self._files = files
        self._skipped = skipped
        return files

    def _count(self) -> int:
        return len(self._scan())

    def _items(self) -> Iterator[Item]:
        from ..images import open_image

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
        from ..images import open_image

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
    """Modification time in ns, 0 when the file cannot be read."""
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def _is_dir(e: os.DirEntry[str]) -> bool:
    """Whether an entry is a real folder (symlinks are not followed)."""
    try:
        return e.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _is_image_name(name: str) -> bool:
    """Whether a file name has the extension of a format `open_image` decodes."""
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
