"""Where a shared dashboard may read files from: the configured data roots, and this session's uploads.

A dashboard user never types a server path. Datasets, style images, masks and checkpoints come from packaged sets,
from uploads (saved or extracted into a per-session folder) and from folders under the data roots an administrator
configures with CONVLENS_DATA_ROOTS (none by default). `resolve` decides from the real path alone (symlinks and
`..` resolved, no existence check first) whether a user-supplied path is inside; everything else gets one refusal
message, the same whether or not the path exists, that never echoes file contents. Names shown to users are
root-relative ("photos/cats"), never server paths. The CLI and the Python API (a local, trusted user) do not go
through this module: they keep accepting any path.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from . import settings
from .errors import BadInput, ResourceLimit
from .limits import cap, cap_float

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".qoi"}
)
CHECKPOINT_SUFFIXES: frozenset[str] = frozenset({".safetensors"})
_SHOWN = 120  # characters of a user-supplied name quoted back in a message
_LIST_LIMIT = 500  # entries listed per picker, so a huge root never stalls a page


class PathRefused(BadInput):
    """A user-supplied path is not under the data roots or this session's uploads (one message for every case)."""


class Root(NamedTuple):
    """One configured data root: the label users see and its real path on the server."""

    label: str
    path: Path


def roots() -> list[Root]:
    """The configured data roots (CONVLENS_DATA_ROOTS), symlinks resolved, each with a unique label (its name)."""
    out: list[Root] = []
    seen: dict[str, int] = {}
    for p in settings.get("CONVLENS_DATA_ROOTS") or []:
        try:
            real = Path(os.path.realpath(p))
        except (OSError, ValueError):
            continue
        base = _safe_label(real.name or "root")
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base}-{seen[base]}"
        out.append(Root(label, real))
    return out


def _safe_label(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "root"


def _shown(text: str) -> str:
    clean = "".join(ch if ch.isprintable() else "?" for ch in text)
    return repr(clean if len(clean) <= _SHOWN else clean[: _SHOWN - 1] + "…")


def refusal(user: object, what: str = "file") -> PathRefused:
    """The one refusal for a path outside the roots: it names the user's text and the root labels, nothing else."""
    labels = [r.label for r in roots()]
    where = (
        f"the data roots ({', '.join(labels)})"
        if labels
        else "the data roots (none are configured: an administrator sets CONVLENS_DATA_ROOTS)"
    )
    return PathRefused(
        f"{what} {_shown(str(user))} is not available on this server: pick a packaged one, upload one, or "
        f"choose one under {where}"
    )


def _inside(real: str, bases: Iterable[str]) -> bool:
    return any(real == b or real.startswith(b.rstrip(os.sep) + os.sep) for b in bases)


def resolve(user: str | os.PathLike[str], *, what: str = "file", extra: Sequence[str | Path] = ()) -> Path:
    """The real path of `user` if it lies under a data root (or one of the `extra` folders, e.g. this session's
    uploads), else PathRefused. `user` is an absolute path or a root-relative name "<label>/<path>". The decision is
    made on the resolved path before anything is opened or checked for existence."""
    text = os.fspath(user) if isinstance(user, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise refusal(user, what)
    text = text.strip()
    rs = roots()
    candidate: str | None = None
    if os.path.isabs(text):
        candidate = text
    else:
        head, _, rest = text.partition("/")
        for r in rs:
            if head == r.label:
                candidate = os.path.join(str(r.path), rest)
                break
    if candidate is None:
        raise refusal(text, what)
    try:
        real = os.path.realpath(candidate)
        bases = [str(r.path) for r in rs] + [os.path.realpath(os.fspath(e)) for e in extra]
    except (OSError, ValueError, RuntimeError):
        raise refusal(text, what) from None
    if not _inside(real, bases):
        raise refusal(text, what)
    return Path(real)


def resolve_file(
    user: str | os.PathLike[str],
    *,
    what: str = "file",
    suffixes: Iterable[str] | None = None,
    extra: Sequence[str | Path] = (),
) -> Path:
    """`resolve`, then a regular file with one of `suffixes`; a missing file gets the same refusal as outside."""
    path = resolve(user, what=what, extra=extra)
    allowed = {s.lower() for s in suffixes} if suffixes is not None else None
    if allowed is not None and path.suffix.lower() not in allowed:
        raise PathRefused(f"{what} {_shown(str(user))} must be one of {', '.join(sorted(allowed))}")
    if not path.is_file():
        raise refusal(user, what)
    return path


def resolve_folder(
    user: str | os.PathLike[str], *, what: str = "folder", extra: Sequence[str | Path] = ()
) -> Path:
    """`resolve`, then a folder; a missing folder gets the same refusal as one outside the roots."""
    path = resolve(user, what=what, extra=extra)
    if not path.is_dir():
        raise refusal(user, what)
    return path


# ------------------------------------------------------------------------------------------------------ listing


def _walk(
    base: Path, max_depth: int, want_dirs: bool, suffixes: frozenset[str] | None, limit: int
) -> list[Path]:
    """Folders (or files with `suffixes`) under `base`, breadth first, hidden entries skipped, symlinks that leave
    `base` skipped, at most `limit` entries."""
    out: list[Path] = []
    level = [base]
    real_base = str(base)
    for _depth in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                if e.name.startswith(".") or e.name == "__MACOSX":
                    continue
                try:
                    if e.is_symlink() and not _inside(os.path.realpath(e.path), [real_base]):
                        continue
                    is_dir = e.is_dir()
                except OSError:
                    continue
                if is_dir:
                    nxt.append(Path(e.path))
                    if want_dirs:
                        out.append(Path(e.path))
                elif not want_dirs and suffixes is not None and Path(e.name).suffix.lower() in suffixes:
                    out.append(Path(e.path))
                if len(out) >= limit:
                    return out
        level = nxt
    return out


def list_folders(max_depth: int = 1, limit: int = _LIST_LIMIT) -> list[tuple[str, Path]]:
    """(shown name, real path) of each data root and its folders down to `max_depth` levels, for a dataset picker."""
    out: list[tuple[str, Path]] = []
    for r in roots():
        if not r.path.is_dir():
            continue
        out.append((r.label, r.path))
        for p in _walk(r.path, max_depth - 1, True, None, limit - len(out)):
            out.append((f"{r.label}/{p.relative_to(r.path).as_posix()}", p))
        if len(out) >= limit:
            break
    return out[:limit]


def list_files(
    suffixes: Iterable[str], max_depth: int = 3, limit: int = _LIST_LIMIT
) -> list[tuple[str, Path]]:
    """(shown name, real path) of files with one of `suffixes` under the data roots, for a file picker."""
    want = frozenset(s.lower() for s in suffixes)
    out: list[tuple[str, Path]] = []
    for r in roots():
        if not r.path.is_dir():
            continue
        for p in _walk(r.path, max_depth, False, want, limit - len(out)):
            out.append((f"{r.label}/{p.relative_to(r.path).as_posix()}", p))
        if len(out) >= limit:
            break
    return out[:limit]


# ------------------------------------------------------------------------------------------------------ display


def upload_base() -> Path:
    """The folder under which every dashboard session keeps its uploads (one subfolder per session)."""
    return Path(tempfile.gettempdir()) / f"convlens-uploads-{os.getuid() if hasattr(os, 'getuid') else 0}"


def new_session_dir() -> Path:
    """A fresh private folder (mode 0700) for one session's uploads."""
    base = upload_base()
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="session-", dir=base))


def display_path(path: str | os.PathLike[str]) -> str | None:
    """A name users may see for `path`: "<root>/<relative>" under a data root, "upload:<name>" for an upload, else
    None (the path is the server's business)."""
    try:
        real = os.path.realpath(os.fspath(path))
    except (OSError, ValueError, TypeError):
        return None
    for r in roots():
        base = str(r.path)
        if _inside(real, [base]):
            rel = os.path.relpath(real, base)
            return r.label if rel == "." else f"{r.label}/{Path(rel).as_posix()}"
    up = os.path.realpath(upload_base())
    if _inside(real, [up]):
        parts = Path(os.path.relpath(real, up)).parts
        return "upload:" + "/".join(parts[1:]) if len(parts) > 1 else "upload"
    return None


def display_spec(spec: object) -> str:
    """A dataset spec as users may see it: packaged specs as they are, folders by their root-relative name."""
    text = str(spec)
    body = text[len("folder:") :] if text.startswith("folder:") else text
    tail = ""
    for marker in ("#limit=", "#subset="):
        if marker in body:
            body, _, rest = body.partition(marker)
            tail = f"{marker}{rest}"
    if os.path.isabs(body):
        shown = display_path(body)
        return (shown or "(a server folder)") + tail
    return text


_PATH_RE = re.compile(r"(?<![\w./~-])(/(?!/)[^\s'\"<>|;,()\[\]{}`*]+)")


def redact(text: object) -> str:
    """`text` with every absolute server path replaced by its shown name (root-relative or upload), or by
    "(server path)" when it is neither: for messages and metadata shown to dashboard users."""

    def sub(m: re.Match[str]) -> str:
        raw = m.group(1)
        stripped = raw.rstrip(".:")
        shown = display_path(stripped)
        return (shown or "(server path)") + raw[len(stripped) :]

    return _PATH_RE.sub(sub, str(text))


# ------------------------------------------------------------------------------------------------------ uploads


def _safe_name(name: str, default: str = "upload") -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(name)).name).strip("._")
    return (stem or default)[:60]


def _zip_caps() -> tuple[int, int]:
    return cap("zip_files"), int(cap_float("zip_mb") * 2**20)


def _member_parts(info: zipfile.ZipInfo) -> tuple[str, ...] | None:
    """The safe relative path parts of a zip member, or None for anything that could leave the folder or is not a
    plain file (absolute names, drive letters, `..`, symlinks, devices, hidden and macOS metadata entries)."""
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or info.is_dir():
        return None
    mode = (info.external_attr >> 16) & 0o170000
    if mode and not stat.S_ISREG(mode):
        return None
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if not parts or any(p == ".." or p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return parts


def extract_zip(data: bytes, dest_parent: str | Path, name: str = "upload.zip") -> Path:
    """Extract the images of an uploaded .zip (a folder of images, or one subfolder per class) into a new folder
    under `dest_parent` and return the dataset folder. Only image files are written; members that could escape
    (absolute, `..`, symlinks) are skipped; the image count and uncompressed bytes are capped
    (CONVLENS_UPLOAD_ZIP_FILES, CONVLENS_UPLOAD_ZIP_MB), checked on the declared sizes and again while writing."""
    label = _shown(Path(str(name)).name)
    max_files, max_bytes = _zip_caps()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - untrusted bytes: BadZipFile, NotImplementedError (odd versions), ...
        raise BadInput(
            f"{label} is not a readable .zip archive ({type(e).__name__}); upload a .zip of a folder of images"
        ) from None
    with zf:
        try:
            infos = zf.infolist()
        except Exception as e:  # noqa: BLE001 - a damaged central directory
            raise BadInput(f"{label}: the archive's index is damaged ({type(e).__name__})") from None
        if len(infos) > 4 * max_files + 1000:
            raise ResourceLimit(
                f"{label} lists {len(infos):,} entries, over the cap of {max_files:,} images "
                f"(CONVLENS_UPLOAD_ZIP_FILES); upload fewer images or raise the cap"
            )
        members = []
        for info in infos:
            parts = _member_parts(info)
            if parts is not None and Path(parts[-1]).suffix.lower() in IMAGE_SUFFIXES:
                members.append((info, parts))
        if not members:
            raise BadInput(
                f"{label} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); upload a .zip of a folder of images"
            )
        if len(members) > max_files:
            raise ResourceLimit(
                f"{label} holds {len(members):,} images, over the cap of {max_files:,} (CONVLENS_UPLOAD_ZIP_FILES); "
                "upload fewer images or raise the cap"
            )
        declared = sum(max(0, int(i.file_size)) for i, _ in members)
        if declared > max_bytes:
            raise ResourceLimit(
                f"{label} would unpack to {declared / 2**20:,.1f} MiB, over the cap of {max_bytes / 2**20:,.0f} MiB "
                "(CONVLENS_UPLOAD_ZIP_MB); upload a smaller archive or raise the cap"
            )
        digest = hashlib.sha256(data).hexdigest()[:10]
        parent = Path(dest_parent)
        final = parent / f"{_safe_name(Path(str(name)).stem, 'dataset')}-{digest}"
        if final.is_dir():
            return _dataset_root(final)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=parent))
        written = 0
        try:
            for info, parts in members:
                target = tmp.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_bytes:
                            raise ResourceLimit(
                                f"{label} unpacks to more than {max_bytes / 2**20:,.0f} MiB (its headers understate "
                                "the sizes); the cap is CONVLENS_UPLOAD_ZIP_MB"
                            )
                        out.write(chunk)
            os.replace(tmp, final)
        except ResourceLimit:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except FileExistsError:  # two members with one name (differing only by case folding or "./")
            shutil.rmtree(tmp, ignore_errors=True)
            raise BadInput(
                f"{label} holds two images with the same name; rename one and upload again"
            ) from None
        except Exception as e:  # noqa: BLE001 - untrusted bytes: zlib/lzma errors, CRC, unsupported methods
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and final.is_dir():  # another rerun extracted the same archive first
                return _dataset_root(final)
            raise BadInput(
                f"{label}: an image could not be unpacked ({type(e).__name__}); the archive is damaged, "
                "encrypted or uses an unsupported compression"
            ) from None
        return _dataset_root(final)


def _dataset_root(folder: Path) -> Path:
    """The folder to read as a dataset: the single top-level folder of a "zip of a folder", else `folder`."""
    try:
        entries = [e for e in os.scandir(folder) if not e.name.startswith(".")]
    except OSError:
        return folder
    if len(entries) == 1 and entries[0].is_dir(follow_symlinks=False):
        return Path(entries[0].path)
    return folder


def save_upload(
    data: bytes, dest_parent: str | Path, name: str, suffixes: Iterable[str], what: str = "file"
) -> Path:
    """Write an uploaded file into `dest_parent` under a content-addressed safe name; the suffix must be one of
    `suffixes` and the size within the upload cap (CONVLENS_MAX_UPLOAD_MB)."""
    from .limits import cap_float

    suffix = Path(str(name)).suffix.lower()
    allowed = sorted(s.lower() for s in suffixes)
    if suffix not in allowed:
        raise BadInput(f"{what} {_shown(Path(str(name)).name)} must be one of {', '.join(allowed)}")
    limit = cap_float("upload_mb") * 2**20
    if len(data) > limit:
        raise ResourceLimit(
            f"{what} {_shown(Path(str(name)).name)} is {len(data) / 2**20:,.1f} MiB, over the cap of "
            f"{limit / 2**20:,.0f} MiB (CONVLENS_MAX_UPLOAD_MB)"
        )
    parent = Path(dest_parent)
    parent.mkdir(parents=True, exist_ok=True)
    target = parent / f"{hashlib.sha256(data).hexdigest()[:10]}-{_safe_name(Path(str(name)).stem)}{suffix}"
    if not target.is_file():
        fd, tmp = tempfile.mkstemp(prefix=".upload-", dir=parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    return target
