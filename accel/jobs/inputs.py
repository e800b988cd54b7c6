"""The images of a dataset job: an image folder (class subfolders = labels), a text list of paths/URIs, or a
Parquet manifest with a `path` column, sorted and de-duplicated; and the one reader that opens any of them.

Every image is decoded with `accel.open_image` semantics; remote objects (http(s), s3, gs, hdfs through pyarrow)
are size-capped before decoding.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BadInput, ResourceLimit

if TYPE_CHECKING:
    from PIL import Image

MAX_URI_BYTES = 256 * 2**20  # refuse remote objects larger than this before decoding
_URI_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")


@dataclass(frozen=True)
class Inputs:
    """The job's images: sorted unique paths/URIs, labels (-1 = unknown) and class names (None if unlabelled)."""

    source: str
    paths: list[str]
    labels: list[int]
    classes: list[str] | None = None
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.paths)

    def sha256(self) -> str:
        """Fingerprint of the listing (paths and labels), so a resumed job knows its inputs did not change."""
        h = hashlib.sha256()
        for p, lab in zip(self.paths, self.labels):
            h.update(f"{p}\t{lab}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()


def is_uri(s: str) -> bool:
    """Whether `s` names a remote object (a scheme other than file://), not a local path."""
    return bool(_URI_RE.match(s)) and not s.lower().startswith("file://")


def _local(s: str) -> str:
    """A local path without its file:// prefix."""
    return s[7:] if s.lower().startswith("file://") else s


def _image_exts() -> frozenset[str]:
    """Every extension `open_image` decodes (one list for dataset folders and job inputs)."""
    from ..images import image_extensions

    return image_extensions()


def _folder_inputs(root: Path) -> tuple[list[str], list[str | None]]:
    """Image files under `root`, recursively (hidden entries skipped); class = the top-level subfolder, if any."""
    exts = _image_exts()
    paths: list[str] = []
    names: list[str | None] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        cls = rel.parts[0] if rel.parts else None
        for f in sorted(filenames):
            if not f.startswith(".") and Path(f).suffix.lower() in exts:
                paths.append(os.path.abspath(os.path.join(dirpath, f)))
                names.append(cls)
    return paths, names


def _text_inputs(path: Path) -> tuple[list[str], list[str | None]]:
    """One path or URI per line, optionally `<TAB>label`; blank lines and `#` comments skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInput(
            f"{str(path)!r} is not a UTF-8 text list; the job input must be an image folder, a text file with one "
            "path or URI per line, or a .parquet manifest with a 'path' column"
        ) from None
    base = path.parent
    paths: list[str] = []
    names: list[str | None] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p, _, lab = line.partition("\t")
        p = p.strip()
        if not is_uri(p):
            p = os.path.abspath(os.path.join(base, os.path.expanduser(_local(p))))
        paths.append(p)
        names.append(lab.strip() or None)
    return paths, names


def _parquet_inputs(path: Path) -> tuple[list[str], list[str | None]]:
    """A Parquet manifest: a `path` column (paths or URIs) and an optional `label` column (int or class name)."""
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
        raise BadInput(f"{str(path)!r}: not a readable Parquet manifest ({e})") from None
    if "path" not in t.column_names:
        raise BadInput(f"{str(path)!r}: the Parquet manifest needs a 'path' column (has {t.column_names})")
    base = path.parent
    raw = [str(p) if p is not None else "" for p in t.column("path").to_pylist()]
    paths = [p if is_uri(p) else os.path.abspath(os.path.join(base, _local(p))) for p in raw if p]
    if "label" in t.column_names:
        labs = t.column("label").to_pylist()
        names = [None if v is None else str(v) for p, v in zip(raw, labs) if p]
    else:
        names = [None] * len(paths)
    return paths, names


def list_inputs(source: str | os.PathLike[str], limit: int | None = None) -> Inputs:
    """The sorted, de-duplicated image list of a folder, a text list or a Parquet manifest (first `limit` kept)."""
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise BadInput(f"limit must be a positive number of images, got {limit!r}")
    s = os.fspath(source)
    if is_uri(s):
        raise BadInput(
            f"{s!r}: the job input must be a local folder, text list or Parquet manifest; URIs go inside the list"
        )
    p = Path(_local(s)).expanduser()
    if p.is_dir():
        paths, names = _folder_inputs(p)
    elif p.is_file():
        if p.suffix.lower() in (".parquet", ".pq"):
            paths, names = _parquet_inputs(p)
        elif p.suffix.lower() in _image_exts():
            raise BadInput(
                f"{s!r} is a single image; jobs take a folder, a text list or a Parquet manifest "
                "(use `convlens explain` for one image)"
            )
        else:
            paths, names = _text_inputs(p)
    else:
        raise BadInput(
            f"job input {s!r} does not exist (expected a folder, a .txt list or a .parquet manifest)"
        )
    # class names -> indices: integer labels stay integers, names are numbered in sorted order
    given = sorted({n for n in names if n is not None})
    if given and all(re.fullmatch(r"-?\d+", n) for n in given):
        classes = None
        labels = [int(n) if n is not None else -1 for n in names]
    else:
        classes = given or None
        index = {n: i for i, n in enumerate(given)}
        labels = [index[n] if n is not None else -1 for n in names]
    order = sorted(range(len(paths)), key=lambda i: paths[i])
    seen: set[str] = set()
    out_p: list[str] = []
    out_l: list[int] = []
    for i in order:
        if paths[i] in seen:
            continue
        seen.add(paths[i])
        out_p.append(paths[i])
        out_l.append(labels[i])
    dups = len(paths) - len(out_p)
    if limit is not None:
        out_p, out_l = out_p[: int(limit)], out_l[: int(limit)]
    if not out_p:
        raise BadInput(f"no images found in {s!r} (extensions: {', '.join(sorted(_image_exts()))})")
    return Inputs(str(p.resolve()), out_p, out_l, classes, dups)


def read_image(uri: str) -> Image.Image:
    """Open a local path, file://, http(s):// or any pyarrow filesystem URI (s3://, gs://, hdfs://) as RGB."""
    from ..images import open_image

    if not is_uri(uri):
        return open_image(_local(uri))
    scheme = uri.split("://", 1)[0].lower()
    try:
        if scheme in ("http", "https"):
            import urllib.request

            with urllib.request.urlopen(uri, timeout=30) as r:  # noqa: S310 - scheme checked above
                data = r.read(MAX_URI_BYTES + 1)
        else:
            from pyarrow import fs as pafs

            filesystem, path = pafs.FileSystem.from_uri(uri)
            with filesystem.open_input_stream(path) as f:
                data = f.read(MAX_URI_BYTES + 1)
    except Exception as e:  # noqa: BLE001 - network and filesystem errors of every kind
        raise BadInput(f"{uri!r}: cannot be fetched ({type(e).__name__}: {e})") from None
    if len(data) > MAX_URI_BYTES:
        raise ResourceLimit(f"{uri!r}: larger than {MAX_URI_BYTES >> 20} MiB; refused before decoding")
    return open_image(bytes(data))
