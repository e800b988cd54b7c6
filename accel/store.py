"""Run store: every result is a SQLite row plus an artifact folder, so runs are cached, listed, reopened and shared.

SQLite runs in WAL mode with a busy timeout and one connection per call, so several dashboard sessions (threads)
and processes can write at once. Artifacts are written into a temporary folder that is renamed into place before
the row is committed: a writer killed at any moment leaves either a complete run or no run, never half of one.
Each run folder carries a manifest.json with everything its row holds, so a lost or damaged index is rebuilt from
the folders (`RunStore.rebuild`, `convlens store rebuild`) and is never silently re-created empty beside them.
Every run has an owner (the signed-in user, or "local") and a private flag: a run opens for anyone holding its id
(its link is a capability) unless its owner made it private; only the owner deletes it or changes its privacy.
Methods that take `user=` enforce this; `user=None` is the operator (CLI, scripts) who can read the files anyway.
The root is `$CONVLENS_STORE`, else `platformdirs.user_data_dir("convlens")/store`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import limits, settings
from .errors import BadInput, ResourceLimit
from .limits import CAPS
from .result import Result

log = logging.getLogger("convlens.store")

ENV_STORE = "CONVLENS_STORE"
ENV_MAX_UPLOAD_MB = CAPS["upload_mb"].env
DEFAULT_MAX_UPLOAD_MB = CAPS["upload_mb"].default
SCHEMA_VERSION = 2
LOCAL_OWNER = (
    "local"  # the owner of runs made without sign-in (and of every run stored before owners existed)
)
UPLOAD_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".pt",
    ".pth",
    ".safetensors",
    ".onnx",
)
_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_STALE_TMP_S = 3600.0
_MAX_TITLE = 500
_REBUILD_HINT = (
    "run `convlens store check` to see what is affected and `convlens store rebuild` to rebuild the index from "
    "the run folders (the damaged file is kept beside it)"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
    id TEXT PRIMARY KEY, created REAL NOT NULL, model TEXT, method TEXT, kind TEXT,
    params TEXT, image_key TEXT, key TEXT, title TEXT, summary TEXT,
    owner TEXT NOT NULL DEFAULT 'local', private INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE TABLE IF NOT EXISTS records(
    id TEXT PRIMARY KEY, created REAL NOT NULL, kind TEXT NOT NULL, title TEXT, payload TEXT);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, created);
CREATE TABLE IF NOT EXISTS seen(
    user TEXT NOT NULL, run_id TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY(user, run_id));
"""
_RUN_COLUMNS = (
    "id",
    "created",
    "model",
    "method",
    "kind",
    "params",
    "image_key",
    "key",
    "title",
    "summary",
    "owner",
    "private",
)


class StoreError(BadInput):
    """The run store cannot read or write (disk full, permissions, a missing run); the message says what to do."""


def default_root() -> Path:
    """`$CONVLENS_STORE`, else a `store` folder in the user's data directory."""
    env = settings.get(ENV_STORE)
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("convlens")) / "store"


# ---------------------------------------------------------------------------------------------------- keys


def image_key(img: Image.Image) -> str:
    """SHA-256 of an image's pixels (with mode and size), so the same picture keys the same cached runs."""
    if not isinstance(img, Image.Image):
        raise BadInput(f"image_key expects a PIL image, got {type(img).__name__}")
    h = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _jsonable(v: Any) -> Any:
    """A JSON-safe copy of plain parameter values (images become their pixel hash, arrays their content hash)."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, Image.Image):
        return {"image": image_key(v)}
    if isinstance(v, np.ndarray):
        return {
            "array": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest(),
            "shape": list(v.shape),
        }
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
        return [_jsonable(x) for x in items]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _jsonable(dataclasses.asdict(v))
    return repr(v)


def request_key(model_hash: str, method: str, params: dict[str, Any], image_key: str | None) -> str:
    """The cache key of a request: same weights, method, parameters and image pixels give the same key."""
    payload = {"model": model_hash, "method": method, "params": _jsonable(dict(params)), "image": image_key}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- artifacts


class _Writer:
    """Collects artifact files for one run inside its temporary folder, naming them uniquely."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: list[str] = []

    def _name(self, stem: str, suffix: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:60] or "x"
        name, i = f"{base}{suffix}", 1
        while name in self.files:
            name, i = f"{base}_{i}{suffix}", i + 1
        self.files.append(name)
        return name

    def png(self, img: Image.Image, stem: str) -> str:
        name = self._name(stem, ".png")
        im = img if img.mode in ("RGB", "RGBA", "L", "LA", "I", "I;16", "1", "P") else img.convert("RGB")
        im.save(self.folder / name, format="PNG", compress_level=1)
        return name

    def npy(self, a: np.ndarray, stem: str) -> str:
        name = self._name(stem, ".npy")
        with open(self.folder / name, "wb") as f:
            np.save(f, a, allow_pickle=False)
        return name

    def text(self, stem: str, suffix: str, text: str) -> str:
        name = self._name(stem, suffix)
        (self.folder / name).write_text(text, encoding="utf-8")
        return name


def _encode(v: Any, w: _Writer, stem: str) -> Any:
    """JSON-safe tree for meta/extras: images and arrays go to files and are referenced by name."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if isinstance(v, np.generic):
        return _encode(v.item(), w, stem)
    if isinstance(v, Image.Image):
        return {"__png__": w.png(v, stem)}
    if hasattr(v, "detach") and hasattr(v, "cpu") and hasattr(v, "numpy"):  # a torch tensor
        v = v.detach().cpu().numpy()
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            return {"__list__": [_encode(x, w, f"{stem}_{i}") for i, x in enumerate(v.tolist())]}
        return {"__npy__": w.npy(v, stem)}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: _encode(x, w, f"{stem}.{k}") for k, x in v.items()}
        return {
            "__items__": [
                [_encode(k, w, stem), _encode(x, w, f"{stem}_{i}")] for i, (k, x) in enumerate(v.items())
            ]
        }
    if isinstance(v, list):
        return [_encode(x, w, f"{stem}_{i}") for i, x in enumerate(v)]
    if isinstance(v, tuple):
        return {"__tuple__": [_encode(x, w, f"{stem}_{i}") for i, x in enumerate(v)]}
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _encode(dataclasses.asdict(v), w, stem)
    return {"__repr__": repr(v)[:2000]}


def _load_png(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.copy()


def _decode(v: Any, folder: Path) -> Any:
    if isinstance(v, list):
        return [_decode(x, folder) for x in v]
    if not isinstance(v, dict):
        return v
    if len(v) == 1:
        ((k, x),) = v.items()
        if k == "__png__":
            return _load_png(folder / x)
        if k == "__npy__":
            return np.load(folder / x, allow_pickle=False)
        if k == "__float__":
            return float(x)
        if k == "__tuple__":
            return tuple(_decode(i, folder) for i in x)
        if k == "__list__":
            return [_decode(i, folder) for i in x]
        if k == "__items__":
            return {_hashable(_decode(a, folder)): _decode(b, folder) for a, b in x}
        if k == "__repr__":
            return x
    return {k: _decode(x, folder) for k, x in v.items()}


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _render(result: Result) -> Image.Image | None:
    """The picture a person would look at for this result (an overlay for maps), or None if it has none."""
    try:
        return result.overlay() if result.kind == "map" else result.to_image()
    except (ValueError, TypeError, OSError):
        return None


def _summary(meta: dict[str, Any]) -> dict[str, Any]:
    """Scalar meta fields (timings, backend, passes, target) for listing runs without opening their files."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v)):
            out[k] = v[:200] if isinstance(v, str) else v
    return out


def _os_error(e: OSError, what: str, where: Path) -> StoreError:
    why = e.strerror or str(e)
    hint = (
        "free some disk space or point CONVLENS_STORE to a folder on another disk"
        if e.errno in (errno.ENOSPC, errno.EDQUOT)
        else f"check that {where} is writable, or point CONVLENS_STORE to another folder"
    )
    return StoreError(f"run store: cannot {what} in {where}: {why} (errno {e.errno}); {hint}")


def _why(e: BaseException) -> str:
    """A short reason for a failed read that names no path and echoes no file content."""
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON (line {e.lineno}, column {e.colno})"
    if isinstance(e, FileNotFoundError):
        return "missing"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).split("\n", 1)[0]
    text = re.sub(r"(/[^\s'\"]+)+", "<path>", text)[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _write_json_atomic(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` as JSON in one step (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(obj, allow_nan=False), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _read_manifest(folder: Path) -> dict[str, Any]:
    """A run folder's manifest.json as a dict (OSError/ValueError when missing or damaged)."""
    m = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    if not isinstance(m, dict):
        raise ValueError("manifest.json is not a JSON object")
    return m


def _artifact_refs(m: dict[str, Any]) -> list[str]:
    """Every file a manifest refers to (data, input, rendered picture, arrays and images inside meta/extras)."""
    refs = [m[k] for k in ("data", "image", "rendered") if isinstance(m.get(k), str)]

    def walk(v: Any) -> None:
        if isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, dict):
            if (
                len(v) == 1
                and next(iter(v)) in ("__png__", "__npy__")
                and isinstance(next(iter(v.values())), str)
            ):
                refs.append(next(iter(v.values())))
                return
            for x in v.values():
                walk(x)

    walk(m.get("meta"))
    walk(m.get("extras"))
    return refs


def _verify_artifact(path: Path) -> str | None:
    """Why an artifact file cannot be read back (None when it decodes): PNGs decoded fully, arrays by header."""
    try:
        if path.suffix == ".png":
            _load_png(path)
        elif path.suffix == ".npy":
            a = np.load(path, mmap_mode="r", allow_pickle=False)
            del a
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        return None
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is damaged
        return _why(e)


# ---------------------------------------------------------------------------------------------------- the store


@dataclass
class StoredRun:
    """One stored run: its row (method, model, params, timings, owner) and, lazily, the reconstructed `Result`.

    `damaged` says what was wrong with the row (it is listed with safe defaults instead of breaking the list)."""

    id: str
    created: float
    model: str | None
    method: str | None
    kind: str | None
    params: dict[str, Any]
    image_key: str | None
    key: str | None
    title: str
    summary: dict[str, Any]
    folder: Path = field(repr=False)
    owner: str = LOCAL_OWNER
    private: bool = False
    damaged: str | None = None

    @cached_property
    def result(self) -> Result:
        """The stored `Result`, rebuilt from its files without recomputing anything."""
        name = "manifest.json"
        try:
            manifest = _read_manifest(self.folder)
            name = str(manifest.get("data"))
            data = np.load(self.folder / manifest["data"], allow_pickle=False)
            name = str(manifest.get("image"))
            image = _load_png(self.folder / manifest["image"]) if manifest.get("image") else None
            name = "meta"
            meta = _decode(manifest.get("meta", {}), self.folder)
            name = "extras"
            extras = _decode(manifest.get("extras", {}), self.folder)
            return Result(manifest["kind"], data, meta, image, extras)
        except Exception as e:  # noqa: BLE001 - any failure to read an artifact is a damaged run, not a crash
            raise StoreError(
                f"run {self.id}: its stored files are missing or damaged ({name}: {_why(e)}); "
                "delete the run and compute it again (`convlens store check` lists every damaged run)"
            ) from None

    @property
    def rendered_path(self) -> Path | None:
        p = self.folder / "rendered.png"
        return p if p.is_file() else None

    @property
    def input_path(self) -> Path | None:
        p = self.folder / "input.png"
        return p if p.is_file() else None

    def rendered(self) -> Image.Image | None:
        """The rendered picture saved with the run (overlay or synthesized image), if any; StoreError if damaged."""
        p = self.rendered_path
        if p is None:
            return None
        try:
            return _load_png(p)
        except Exception as e:  # noqa: BLE001 - a damaged picture is reported, never fatal
            raise StoreError(f"run {self.id}: its rendered picture is damaged ({_why(e)})") from None

    @property
    def link(self) -> str:
        """The query string that reopens this run in the dashboard."""
        return f"?run={self.id}"


@dataclass
class StoreReport:
    """What `RunStore.check()` found: the index, the run folders, and every damaged or missing piece."""

    root: Path
    index: str = "ok"  # "ok", "missing", "empty" or "damaged: <why>"
    rows: int = 0
    folders: int = 0
    damaged_rows: list[tuple[str, str]] = field(default_factory=list)  # (run id, what is wrong)
    missing_artifacts: list[tuple[str, str]] = field(default_factory=list)  # (run id, file)
    damaged_artifacts: list[tuple[str, str]] = field(default_factory=list)  # (run id, "file: why")
    orphan_folders: list[str] = field(default_factory=list)  # run folders with no row (rebuild indexes them)
    temp_folders: int = 0

    @property
    def problems(self) -> int:
        """How many things are wrong (the index counts as one)."""
        bad_index = 0 if self.index == "ok" or (self.index == "missing" and not self.folders) else 1
        return bad_index + sum(
            map(len, (self.damaged_rows, self.missing_artifacts, self.damaged_artifacts, self.orphan_folders))
        )

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return self.problems == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (for `convlens store check --json`)."""
        d = dataclasses.asdict(self)
        d["root"] = str(self.root)
        d["ok"], d["problems"] = self.ok, self.problems
        return d

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line, ending with the verdict and what to do."""
        out = [f"run store: {self.root}", f"index runs.sqlite: {self.index} ({self.rows} rows)"]
        out.append(
            f"run folders: {self.folders}"
            + (f" (+{self.temp_folders} temporary)" if self.temp_folders else "")
        )
        for title, items in (
            ("damaged rows", self.damaged_rows),
            ("missing artifacts", self.missing_artifacts),
            ("damaged artifacts", self.damaged_artifacts),
        ):
            out.append(f"{title}: {len(items)}")
            out += [f"  {rid}: {what}" for rid, what in items]
        out.append(f"orphan folders (no row): {len(self.orphan_folders)}")
        out += [f"  {rid}" for rid in self.orphan_folders]
        if self.ok:
            out.append("verdict: ok")
        else:
            todo = []
            if self.index != "ok" or self.orphan_folders or self.damaged_rows:
                todo.append("`convlens store rebuild` re-indexes the run folders")
            if self.missing_artifacts or self.damaged_artifacts:
                todo.append(
                    "runs with missing or damaged files open with an error: delete and recompute them"
                )
            out.append(f"verdict: {self.problems} problem(s); " + "; ".join(todo))
        return out


@dataclass
class RebuildReport:
    """What `RunStore.rebuild()` did: rows written from run folders, rows dropped, folders skipped, files kept."""

    root: Path
    indexed: int = 0  # rows written from run folders' manifests
    dropped: list[str] = field(default_factory=list)  # rows whose run folder no longer exists
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (folder, why it could not be indexed)
    kept_aside: str | None = None  # name of the damaged index file kept beside the new one
    salvaged_records: int = 0  # benchmark records read back from a damaged index

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (for `convlens store rebuild --json`)."""
        d = dataclasses.asdict(self)
        d["root"] = str(self.root)
        return d

    def lines(self) -> list[str]:
        """Human-readable summary of the rebuild."""
        out = [f"run store: {self.root}", f"indexed {self.indexed} run(s) from their folders"]
        if self.dropped:
            out.append(
                f"dropped {len(self.dropped)} row(s) whose run folder is gone: {', '.join(self.dropped)}"
            )
        for name, why in self.skipped:
            out.append(f"skipped folder {name}: {why}")
        if self.kept_aside:
            out.append(
                f"the damaged index was kept as {self.kept_aside} ({self.salvaged_records} record(s) salvaged)"
            )
        return out


_INIT_LOCK = threading.RLock()
_INITIALISED: set[str] = set()


def _user_arg(user: str | None) -> str | None:
    if user is not None and (not isinstance(user, str) or not user.strip()):
        raise BadInput(f"the acting user must be a non-empty string (or None for the operator), got {user!r}")
    return user


class RunStore:
    """SQLite + artifact folder; safe for several threads and processes at once (one connection per call)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self._paths(root)
        self._init()

    @classmethod
    def unopened(cls, root: str | os.PathLike[str] | None = None) -> RunStore:
        """A store object that does not open (or create, or rebuild) its index: for `check()` and `rebuild()` on a
        store that cannot be opened."""
        self = cls.__new__(cls)
        self._paths(root)
        return self

    def _paths(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.db_path = self.root / "runs.sqlite"
        self.runs_dir = self.root / "runs"
        self.uploads_dir = self.root / "uploads"
        self.notice: str | None = None

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _key(self) -> str:
        try:
            return str(self.root.resolve())
        except OSError:
            return str(self.root.absolute())

    def _index_state(self) -> str:
        """ "missing", "empty" (zero bytes) or "present"."""
        try:
            size = self.db_path.stat().st_size
        except FileNotFoundError:
            return "missing"
        except OSError as e:
            raise _os_error(e, "read the index", self.root) from None
        return "present" if size > 0 else "empty"

    def _run_folders(self) -> list[Path]:
        try:
            return sorted(p for p in self.runs_dir.iterdir() if _ID_RE.match(p.name) and p.is_dir())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise _os_error(e, "list the run folders", self.runs_dir) from None

    def _init(self) -> None:
        key = self._key()
        with _INIT_LOCK:
            if key in _INITIALISED and self._index_state() == "present":
                return
            try:
                self.runs_dir.mkdir(parents=True, exist_ok=True)
                self.uploads_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _os_error(e, "create the store folders", self.root) from None
            with self._exclusive():
                state = self._index_state()
                if state != "present" and any((p / "manifest.json").is_file() for p in self._run_folders()):
                    # never start an empty index beside existing runs: rebuild it from their folders
                    rep = self._rebuild_locked()
                    self.notice = (
                        f"the run index was {state}; rebuilt it from {rep.indexed} run folder(s)"
                        + (f" ({len(rep.skipped)} skipped)" if rep.skipped else "")
                    )
                    log.warning("run store %s: %s", self.root, self.notice)
                elif self._open_schema() == 0 and any(
                    (p / "manifest.json").is_file() for p in self._run_folders()
                ):  # an index without rows (a new or emptied database file) beside runs: index them
                    rep = self._rebuild_locked()
                    self.notice = f"the run index had no runs; indexed {rep.indexed} run folder(s)"
                    log.warning("run store %s: %s", self.root, self.notice)
            self._sweep_tmp()
            _INITIALISED.add(key)

    def ensure(self) -> None:
        """Cheap health check before use (one stat): re-open, or rebuild from the run folders, an index that
        vanished or was emptied while this process ran; StoreError when it cannot."""
        if self._index_state() != "present":
            _INITIALISED.discard(self._key())
            self._init()

    def _open_schema(self) -> int:
        """Open the index (WAL), verify it, create or migrate its tables; returns how many runs it holds."""
        with self._db() as con:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"run store: {self.db_path} cannot use WAL journaling (got {mode!r})")
            verdict = str(con.execute("PRAGMA quick_check(1)").fetchone()[0])
            if verdict != "ok":
                raise StoreError(
                    f"run store: the index {self.db_path} is damaged ({verdict[:160]}); {_REBUILD_HINT}"
                )
            con.executescript(_SCHEMA)
            self._migrate(con)
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def _migrate(self, con: sqlite3.Connection) -> None:
        """Schema 1 -> 2: owner and private columns (old runs belong to "local" and are shared by link)."""
        cols = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
        added = False
        for col, decl in (
            ("owner", "TEXT NOT NULL DEFAULT 'local'"),
            ("private", "INTEGER NOT NULL DEFAULT 0"),
        ):
            if col not in cols:
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                    con.execute(f"ALTER TABLE runs ADD COLUMN {col} {decl}")
                    added = True
        con.execute("CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, created)")
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if added:  # old run folders learn what their row knew, so a lost index can be rebuilt from them
            for r in con.execute("SELECT * FROM runs").fetchall():
                with contextlib.suppress(Exception):
                    self._backfill_manifest(dict(r))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """An exclusive lock on the store folder across processes (creating, migrating or rebuilding the index)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: the in-process lock only
            yield
            return
        try:
            f = open(self.root / ".lock", "a+b")  # noqa: SIM115 - held for the block
        except OSError:  # a read-only store: nothing to coordinate, opening the index will say what is wrong
            yield
            return
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _db_error(self, e: sqlite3.Error) -> StoreError:
        msg = str(e) or type(e).__name__
        low = msg.lower()
        if any(s in low for s in ("not a database", "malformed", "no such table", "no such column")):
            hint = _REBUILD_HINT
        elif "full" in low:
            hint = "free some disk space or point CONVLENS_STORE to a folder on another disk"
        elif "disk i/o" in low:
            hint = (
                f"the disk may be full, read-only or failing: free some disk space, check that {self.root} is "
                "writable, or point CONVLENS_STORE to another folder"
            )
        elif "locked" in low or "busy" in low:
            hint = "another process holds the index; try again in a moment"
        else:
            hint = f"check that {self.root} and its files are writable, or point CONVLENS_STORE to another folder"
        return StoreError(f"run store: cannot use the index {self.db_path}: {msg}; {hint}")

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection (autocommit; each statement is its own transaction) with WAL-friendly settings."""
        try:
            con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as e:
            raise self._db_error(e) from None
        try:
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA synchronous=NORMAL")
            con.row_factory = sqlite3.Row
            yield con
        except sqlite3.Error as e:
            raise self._db_error(e) from None
        finally:
            con.close()

    def _sweep_tmp(self) -> None:
        """Remove temporary run folders left by writers that died more than an hour ago."""
        now = time.time()
        with contextlib.suppress(OSError):
            for p in self.runs_dir.glob(".tmp-*"):
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > _STALE_TMP_S:
                        shutil.rmtree(p, ignore_errors=True)

    def _folder(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not _ID_RE.match(run_id):
            raise StoreError(
                f"{run_id!r:.40} is not a run id (16 hexadecimal characters, as in ?run=0123456789abcdef)"
            )
        return self.runs_dir / run_id

    # -- runs --------------------------------------------------------------------------------------------------
    def put(
        self,
        result: Result,
        *,
        model: str,
        method: str,
        params: dict[str, Any],
        image_key: str | None,
        key: str | None = None,
        title: str = "",
        owner: str = LOCAL_OWNER,
        private: bool = False,
    ) -> str:
        """Save a result (artifacts atomically, then the row) owned by `owner` and return its run id."""
        if not isinstance(result, Result):
            raise BadInput(f"RunStore.put expects an accel.Result, got {type(result).__name__}")
        if not isinstance(owner, str) or not owner.strip():
            raise BadInput(f"a run's owner must be a non-empty string, got {owner!r}")
        data = np.asarray(result.data)
        if data.dtype == object:
            raise BadInput(f"{method}: result data must be a numeric array to be stored, got dtype=object")
        run_id = uuid.uuid4().hex[:16]
        final = self.runs_dir / run_id
        tmp = self.runs_dir / f".tmp-{run_id}"
        created = time.time()
        title = str(title or f"{method} on {model}")[:_MAX_TITLE]
        summary = _summary(result.meta)
        params_json = _jsonable(params)
        try:
            tmp.mkdir(parents=True)
            w = _Writer(tmp)
            manifest: dict[str, Any] = {
                "version": SCHEMA_VERSION,
                "id": run_id,
                "kind": result.kind,
                "model": model,
                "method": method,
                "params": params_json,
                "created": created,
                "title": title,
                "owner": owner,
                "private": bool(private),
                "image_key": image_key,
                "key": key,
                "summary": summary,
                "data": w.npy(data, "data"),
                "image": w.png(result.image, "input") if isinstance(result.image, Image.Image) else None,
            }
            shown = _render(result)
            manifest["rendered"] = w.png(shown, "rendered") if shown is not None else None
            manifest["meta"] = _encode(dict(result.meta), w, "meta")
            manifest["extras"] = _encode(dict(result.extras), w, "extras")
            w.text("manifest", ".json", json.dumps(manifest, allow_nan=False))
            os.replace(tmp, final)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _os_error(e, f"write the artifacts of a {method} run", self.runs_dir) from None
        row = {
            "id": run_id,
            "created": created,
            "model": model,
            "method": method,
            "kind": result.kind,
            "params": json.dumps(params_json),
            "image_key": image_key,
            "key": key,
            "title": title,
            "summary": json.dumps(summary),
            "owner": owner,
            "private": int(bool(private)),
        }
        try:
            with self._db() as con:  # OR REPLACE: a concurrent rebuild may have indexed the folder already
                _insert_row(con, row, replace=True)
        except StoreError:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return run_id

    def _row_to_run(self, r: sqlite3.Row | dict[str, Any]) -> StoredRun:
        """A StoredRun from a row; a damaged field is replaced by a safe default and named in `.damaged`."""
        r = dict(r)
        problems: list[str] = []

        def obj(name: str) -> dict[str, Any]:
            raw = r.get(name)
            try:
                v = json.loads(raw) if raw else {}
            except (TypeError, ValueError):
                problems.append(
                    f"{name} are not valid JSON" if name == "params" else f"{name} is not valid JSON"
                )
                return {}
            if not isinstance(v, dict):
                problems.append(f"{name} is not a JSON object")
                return {}
            return v

        def text(name: str) -> str | None:
            v = r.get(name)
            if v is None or isinstance(v, str):
                return v
            problems.append(f"{name} is not text")
            return str(v)

        created = r.get("created")
        if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
            problems.append("created is not a time")
            created = 0.0
        owner = r.get("owner")
        if not isinstance(owner, str) or not owner:
            problems.append("owner is missing")
            owner = LOCAL_OWNER
        run_id = str(r.get("id"))
        params, summary = obj("params"), obj("summary")
        return StoredRun(
            id=run_id,
            created=float(created),
            model=text("model"),
            method=text("method"),
            kind=text("kind"),
            params=params,
            image_key=text("image_key"),
            key=text("key"),
            title=text("title") or "",
            summary=summary,
            folder=self.runs_dir / (run_id if _ID_RE.match(run_id) else "invalid-id"),
            owner=owner,
            private=bool(r.get("private")) if r.get("private") is not None else False,
            damaged="; ".join(problems) or None,
        )

    def _no_run(self, run_id: str) -> StoreError:
        return StoreError(
            f"no run {run_id!r} that you can open: it was deleted, its owner made it private, or the link comes "
            "from another server"
        )

    def get(self, run_id: str, *, user: str | None = None) -> StoredRun:
        """The stored run `run_id` (its `.result` is rebuilt from files on first access), or StoreError.

        With `user`, a private run of someone else is refused exactly like a missing one (no existence oracle)."""
        self._folder(run_id)
        _user_arg(user)
        with self._db() as con:
            r = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if r is None:
            raise self._no_run(run_id)
        run = self._row_to_run(r)
        if user is not None and run.private and run.owner != user:
            raise self._no_run(run_id)
        return run

    def lookup(self, key: str, *, user: str | None = None) -> str | None:
        """The newest run stored under request key `key` whose files are present (with `user`: one of theirs, else
        one shared by link), or None."""
        _user_arg(user)
        sql = "SELECT id FROM runs WHERE key=?"
        args: tuple[Any, ...] = (key,)
        if user is not None:
            sql += " AND (owner=? OR private=0) ORDER BY (owner=?) DESC, created DESC LIMIT 5"
            args = (key, user, user)
        else:
            sql += " ORDER BY created DESC LIMIT 5"
        with self._db() as con:
            rows = con.execute(sql, args).fetchall()
        for r in rows:
            if _ID_RE.match(str(r["id"])) and (self.runs_dir / r["id"] / "manifest.json").is_file():
                return str(r["id"])
        return None

    @staticmethod
    def _visible(user: str | None) -> tuple[str, tuple[Any, ...]]:
        """SQL condition for the runs a user lists: their own, and others' runs they opened by link (not private)."""
        if user is None:
            return "1", ()
        return (
            "(owner=? OR (private=0 AND id IN (SELECT run_id FROM seen WHERE user=?)))",
            (user, user),
        )

    def list(
        self,
        method: str | None = None,
        model: str | None = None,
        limit: int = 200,
        offset: int = 0,
        kind: str | None = None,
        *,
        user: str | None = None,
    ) -> list[StoredRun]:
        """Stored runs, newest first, optionally filtered by method, model and result kind. With `user`: that user's
        runs and the runs others shared with them (runs they opened by link whose owner has not made private)."""
        _user_arg(user)
        cond, args = self._visible(user)
        where, vals = [cond], list(args)
        for col, val in (("method", method), ("model", model), ("kind", kind)):
            if val:
                where.append(f"{col}=?")
                vals.append(val)
        sql = (
            "SELECT * FROM runs WHERE " + " AND ".join(where) + " ORDER BY created DESC, id LIMIT ? OFFSET ?"
        )
        with self._db() as con:
            rows = con.execute(sql, (*vals, max(0, int(limit)), max(0, int(offset)))).fetchall()
        return [self._row_to_run(r) for r in rows]

    def count(self, *, user: str | None = None) -> int:
        """How many runs the store holds (with `user`: how many that user lists)."""
        cond, args = self._visible(_user_arg(user))
        with self._db() as con:
            return int(con.execute(f"SELECT COUNT(*) FROM runs WHERE {cond}", args).fetchone()[0])

    def facets(self, *, user: str | None = None) -> dict[str, list[str]]:
        """Distinct methods and models among stored runs (with `user`: among the runs they list)."""
        cond, args = self._visible(_user_arg(user))
        out: dict[str, list[str]] = {}
        with self._db() as con:
            for col in ("method", "model"):
                sql = f"SELECT DISTINCT {col} FROM runs WHERE {cond} ORDER BY {col}"
                out[col] = [str(r[0]) for r in con.execute(sql, args) if r[0]]
        return out

    def delete(self, run_id: str, *, user: str | None = None) -> bool:
        """Remove a run's row and files; False if there was no such run (or, with `user`, none they can see).
        Only its owner (or the operator, user=None) may delete a run: anyone else gets StoreError."""
        folder = self._folder(run_id)
        _user_arg(user)
        with self._db() as con:
            r = con.execute("SELECT owner, private FROM runs WHERE id=?", (run_id,)).fetchone()
            if r is None:
                n = 0
            elif user is not None and r["owner"] != user:
                if r["private"]:
                    return False
                raise StoreError(f"run {run_id} belongs to someone else: only its owner can delete it")
            else:
                n = con.execute("DELETE FROM runs WHERE id=? AND owner=?", (run_id, r["owner"])).rowcount
                con.execute("DELETE FROM seen WHERE run_id=?", (run_id,))
        if n or user is None:
            shutil.rmtree(folder, ignore_errors=True)
        return bool(n)

    def set_private(self, run_id: str, private: bool, *, user: str | None = None) -> None:
        """Make a run private (only its owner opens it) or shared by link again; only its owner may (StoreError).
        The flag is written to the run's manifest too, so a rebuilt index keeps it."""
        run = self.get(run_id, user=user)
        if user is not None and run.owner != user:
            raise StoreError(
                f"run {run_id} belongs to someone else: only its owner can change who may open it"
            )
        with contextlib.suppress(OSError, ValueError):
            m = _read_manifest(run.folder)
            if m.get("private") != bool(private):
                m["private"] = bool(private)
                _write_json_atomic(run.folder / "manifest.json", m)
        with self._db() as con:
            con.execute("UPDATE runs SET private=? WHERE id=?", (int(bool(private)), run_id))
            if private:
                con.execute("DELETE FROM seen WHERE run_id=?", (run_id,))

    def mark_seen(self, run_id: str, *, user: str) -> None:
        """Remember that `user` opened someone else's run by its link, so it is listed as shared with them."""
        if not isinstance(user, str) or not user.strip():
            raise BadInput(f"mark_seen needs the user who opened the run, got {user!r}")
        run = self.get(run_id, user=user)
        if run.owner == user:
            return
        with self._db() as con:
            con.execute("INSERT OR REPLACE INTO seen VALUES (?,?,?)", (user, run_id, time.time()))

    # -- check and rebuild -------------------------------------------------------------------------------------
    def check(self, *, deep: bool = True) -> StoreReport:
        """Inspect the store without changing it: the index, every row, every run folder and (with `deep`) every
        artifact file decoded. Works on a store that cannot be opened (use `RunStore.unopened(root).check()`)."""
        rep = StoreReport(self.root)
        try:
            state = self._index_state()
        except StoreError as e:
            state, rep.index = "unreadable", f"damaged: {e}"
        rows: dict[str, dict[str, Any]] = {}
        if state in ("missing", "empty"):
            rep.index = state
        elif state == "present":
            try:
                rows = self._read_rows_anyhow(verify=True)
            except (sqlite3.Error, StoreError, OSError) as e:
                rep.index = f"damaged: {_why(e)}"
        rep.rows = len(rows)
        folders = self._run_folders() if self.runs_dir.is_dir() else []
        rep.folders = len(folders)
        with contextlib.suppress(OSError):
            rep.temp_folders = sum(1 for _ in self.runs_dir.glob(".tmp-*"))
        names = {p.name for p in folders}
        for rid, r in rows.items():
            if not _ID_RE.match(rid):
                rep.damaged_rows.append((rid[:40], "id is not a run id"))
                continue
            run = self._row_to_run(r)
            if run.damaged:
                rep.damaged_rows.append((rid, run.damaged))
            if rid not in names:
                rep.missing_artifacts.append((rid, "run folder"))
                continue
            self._check_folder(run.folder, rep, deep)
        rep.orphan_folders = sorted(names - set(rows))
        for rid in rep.orphan_folders:  # what a rebuild would index: its files are checked too
            self._check_folder(self.runs_dir / rid, rep, deep)
        return rep

    def _check_folder(self, folder: Path, rep: StoreReport, deep: bool) -> None:
        rid = folder.name
        try:
            m = _read_manifest(folder)
        except FileNotFoundError:
            rep.missing_artifacts.append((rid, "manifest.json"))
            return
        except (OSError, ValueError) as e:
            rep.damaged_artifacts.append((rid, f"manifest.json: {_why(e)}"))
            return
        for name in _artifact_refs(m):
            p = folder / name
            if "/" in name or "\\" in name or name.startswith("."):
                rep.damaged_artifacts.append((rid, "manifest.json: refers to a file outside the run folder"))
            elif not p.is_file():
                rep.missing_artifacts.append((rid, name))
            elif deep:
                why = _verify_artifact(p)
                if why:
                    rep.damaged_artifacts.append((rid, f"{name}: {why}"))

    def _read_rows(self, path: Path, *, verify: bool) -> dict[str, dict[str, Any]]:
        """Every row of the runs table of the index at `path`, opened read-only (sqlite3.Error when damaged)."""
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30.0)
        try:
            con.row_factory = sqlite3.Row
            if verify:
                verdict = str(con.execute("PRAGMA quick_check(1)").fetchone()[0])
                if verdict != "ok":
                    raise StoreError(verdict[:160])
            return {str(r["id"]): dict(r) for r in con.execute("SELECT * FROM runs")}
        finally:
            con.close()

    def _read_rows_anyhow(self, *, verify: bool) -> dict[str, dict[str, Any]]:
        """`_read_rows` of the index; on a read-only store (SQLite cannot open a WAL index there) from a private
        copy of the index and its WAL, so recent writes are seen too."""
        try:
            return self._read_rows(self.db_path, verify=verify)
        except sqlite3.OperationalError as e:
            if not any(s in str(e).lower() for s in ("readonly", "read-only", "unable to open")):
                raise
        import tempfile

        with tempfile.TemporaryDirectory(prefix="convlens-check-") as tmp:
            for sfx in ("", "-wal"):
                src = self.db_path.with_name(f"runs.sqlite{sfx}")
                if src.is_file():
                    shutil.copyfile(src, Path(tmp) / f"runs.sqlite{sfx}")
            return self._read_rows(Path(tmp) / "runs.sqlite", verify=verify)

    def _salvage(
        self, path: Path
    ) -> tuple[dict[str, dict[str, Any]], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Whatever rows, records and seen-marks can still be read from a damaged index (best effort)."""
        rows: dict[str, dict[str, Any]] = {}
        records: list[tuple[Any, ...]] = []
        seen: list[tuple[Any, ...]] = []
        try:
            con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=5.0)
        except sqlite3.Error:
            return rows, records, seen
        try:
            con.row_factory = sqlite3.Row
            for table, sink in (("runs", None), ("records", records), ("seen", seen)):
                with contextlib.suppress(sqlite3.Error):
                    for r in con.execute(f"SELECT * FROM {table}"):
                        if sink is None:
                            rows[str(r["id"])] = dict(r)
                        else:
                            sink.append(tuple(r))
        finally:
            con.close()
        return rows, records, seen

    def rebuild(self) -> RebuildReport:
        """Rebuild the index from the run folders' manifests: rows are (re)written for every readable run folder,
        rows whose folder is gone are dropped; a damaged index file is kept beside the new one as
        runs.sqlite.damaged-<time> (benchmark records are salvaged from it where readable)."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.uploads_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _os_error(e, "create the store folders", self.root) from None
        with _INIT_LOCK, self._exclusive():
            rep = self._rebuild_locked()
            _INITIALISED.add(self._key())
        return rep

    def _rebuild_locked(self) -> RebuildReport:
        rep = RebuildReport(self.root)
        state = self._index_state()
        healthy = False
        old: dict[str, dict[str, Any]] = {}
        records: list[tuple[Any, ...]] = []
        seen: list[tuple[Any, ...]] = []
        if state == "present":
            try:
                self._open_schema()
                old = self._read_rows(self.db_path, verify=False)
                healthy = True
            except (StoreError, sqlite3.Error):
                healthy = False
        if not healthy and state != "missing":
            aside = self._move_aside(state)
            if aside is not None:
                rep.kept_aside = aside.name
                old, records, seen = self._salvage(aside)
                rep.salvaged_records = len(records)
        if not healthy:
            self._open_schema()
        new: dict[str, dict[str, Any]] = {}
        for folder in self._run_folders():
            rid = folder.name
            try:
                m = _read_manifest(folder)
            except (OSError, ValueError) as e:
                if healthy and rid in old:
                    continue  # its row stays; `check` reports the damaged files
                rep.skipped.append((rid, f"manifest.json: {_why(e)}"))
                continue
            row, why = _row_from_manifest(folder, m, old.get(rid))
            if row is None:
                if healthy and rid in old:
                    continue
                rep.skipped.append((rid, why))
                continue
            new[rid] = row
            if "owner" not in m:
                with contextlib.suppress(Exception):
                    self._backfill_manifest(row, m)
        on_disk = {p.name for p in self._run_folders()}
        rep.dropped = sorted(i for i in old if healthy and i not in on_disk)
        with self._db() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                for rid in rep.dropped:
                    con.execute("DELETE FROM runs WHERE id=?", (rid,))
                    con.execute("DELETE FROM seen WHERE run_id=?", (rid,))
                for row in new.values():
                    _insert_row(con, row, replace=True)
                for rec in records:
                    with contextlib.suppress(sqlite3.Error):
                        con.execute("INSERT OR IGNORE INTO records VALUES (?,?,?,?,?)", tuple(rec)[:5])
                for s in seen:
                    with contextlib.suppress(sqlite3.Error):
                        con.execute("INSERT OR IGNORE INTO seen VALUES (?,?,?)", tuple(s)[:3])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        rep.indexed = len(new)
        return rep

    def _move_aside(self, state: str) -> Path | None:
        """Move a damaged or empty index (and its -wal/-shm files) out of the way; returns the kept copy."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.db_path.with_name(f"runs.sqlite.damaged-{stamp}-{uuid.uuid4().hex[:4]}")
        wal = self.db_path.with_name("runs.sqlite-wal")
        wal_size = wal.stat().st_size if wal.is_file() else 0
        try:
            if state == "empty" and not wal_size:
                self.db_path.unlink()
                aside = None
            else:
                os.replace(self.db_path, aside)
            for sfx in ("-wal", "-shm"):
                side = self.db_path.with_name(f"runs.sqlite{sfx}")
                if side.exists():
                    if aside is None:
                        side.unlink()
                    else:
                        os.replace(side, aside.with_name(aside.name + sfx))
        except OSError as e:
            raise _os_error(e, "move the damaged index aside", self.root) from None
        return aside

    def _backfill_manifest(self, row: dict[str, Any], manifest: dict[str, Any] | None = None) -> None:
        """Write a row's title, owner, privacy, keys and summary into its run's manifest (atomically)."""
        rid = str(row.get("id"))
        if not _ID_RE.match(rid):
            return
        folder = self.runs_dir / rid
        m = manifest if manifest is not None else _read_manifest(folder)
        if "owner" in m:
            return
        run = self._row_to_run(row)
        m.update(
            title=run.title,
            owner=run.owner,
            private=run.private,
            image_key=run.image_key,
            key=run.key,
            summary=run.summary,
        )
        _write_json_atomic(folder / "manifest.json", m)

    # -- JSON records (benchmark reports, ...) -----------------------------------------------------------------
    def put_record(self, kind: str, payload: dict[str, Any], title: str = "") -> str:
        """Save a JSON record (e.g. kind="bench" for `convlens bench` reports) and return its id."""
        if not kind or not isinstance(kind, str):
            raise BadInput("put_record needs a non-empty kind, e.g. 'bench'")
        rec_id = uuid.uuid4().hex[:16]
        text = json.dumps(_jsonable(payload))
        with self._db() as con:
            con.execute("INSERT INTO records VALUES (?,?,?,?,?)", (rec_id, time.time(), kind, title, text))
        return rec_id

    def records(self, kind: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Records of one kind, newest first, as {"id", "created", "kind", "title", "payload"}; a record whose
        payload is not valid JSON is returned with payload {} and "damaged" set, never fatal for the list."""
        sql = "SELECT * FROM records WHERE kind=? ORDER BY created DESC"
        args: tuple[Any, ...] = (kind,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (kind, max(0, int(limit)))
        with self._db() as con:
            rows = con.execute(sql, args).fetchall()
        out = []
        for r in rows:
            rec = {"id": r["id"], "created": r["created"], "kind": r["kind"], "title": r["title"] or ""}
            try:
                rec["payload"] = json.loads(r["payload"])
            except (TypeError, ValueError):
                rec["payload"], rec["damaged"] = {}, "payload is not valid JSON"
            out.append(rec)
        return out

    def delete_record(self, rec_id: str) -> bool:
        """Remove one record; False if there was none."""
        with self._db() as con:
            return bool(con.execute("DELETE FROM records WHERE id=?", (rec_id,)).rowcount)

    # -- uploads -----------------------------------------------------------------------------------------------
    def save_upload(self, data: bytes, suffix: str, *, name: str | None = None) -> Path:
        """Write uploaded bytes under a generated name in the store's uploads folder (never a user-chosen path).
        `name` is the user's own file name, used in error messages (never as a path)."""
        return save_upload_to(self.uploads_dir, data, suffix, name=name)

    # -- export ------------------------------------------------------------------------------------------------
    def _runs(self, run_ids: Sequence[str], user: str | None) -> list[StoredRun]:
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if not run_ids:
            raise BadInput("nothing to export: pick at least one run")
        return [self.get(i, user=user) for i in run_ids]

    def export_html(self, run_ids: Sequence[str], *, user: str | None = None) -> bytes:
        """A self-contained HTML report (images inline as base64) of the given runs. Every stored string is
        HTML-escaped and a Content-Security-Policy forbids any fetch, so a title can never load or link anything."""
        runs = self._runs(run_ids, user)
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\"><title>convlens report</title><style>"
            "body{font-family:sans-serif;margin:2em;color:#222}section{border-top:1px solid #ccc;padding:1em 0}"
            "img{max-width:420px;margin-right:1em;border:1px solid #ddd}table{border-collapse:collapse}"
            "td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;font-size:90%}</style></head><body>",
            f"<h1>convlens report</h1><p>{len(runs)} run(s), exported "
            f"{html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
        ]
        for r in runs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
            parts.append(f"<section id='run-{html.escape(r.id)}'><h2>{html.escape(r.title)}</h2>")
            parts.append(
                f"<p>run <code>{html.escape(r.id)}</code> · method <b>{html.escape(str(r.method))}</b> · model "
                f"<b>{html.escape(str(r.model))}</b> · {html.escape(when)}</p><div>"
            )
            for label, path in (("input", r.input_path), ("result", r.rendered_path)):
                if path is None:
                    continue
                why = _verify_artifact(path)
                if why:
                    parts.append(f"<p><i>{label} picture damaged ({html.escape(why)}); left out</i></p>")
                    continue
                b64 = base64.b64encode(path.read_bytes()).decode("ascii")
                parts.append(f"<img alt='{label}' title='{label}' src='data:image/png;base64,{b64}'>")
            parts.append("</div>")
            rows = [("param", k, v) for k, v in r.params.items()] + [
                ("meta", k, v) for k, v in r.summary.items()
            ]
            if rows:
                parts.append("<table><tr><th></th><th>name</th><th>value</th></tr>")
                for what, k, v in rows:
                    parts.append(
                        f"<tr><td>{what}</td><td>{html.escape(str(k))}</td>"
                        f"<td>{html.escape(json.dumps(v))}</td></tr>"
                    )
                parts.append("</table>")
            parts.append("</section>")
        parts.append("</body></html>")
        return "".join(parts).encode("utf-8")

    def export_zip(self, run_ids: Sequence[str], *, user: str | None = None) -> bytes:
        """A zip of each run's PNGs plus manifest.json describing every run (method, model, params, meta);
        damaged pictures are left out and listed under "damaged"."""
        runs = self._runs(run_ids, user)
        buf = io.BytesIO()
        manifest = []
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for r in runs:
                pngs, damaged = [], []
                with contextlib.suppress(OSError):
                    for p in sorted(r.folder.glob("*.png")):
                        (damaged if _verify_artifact(p) else pngs).append(p.name)
                for name in pngs:
                    z.write(r.folder / name, f"{r.id}/{name}")
                manifest.append(
                    {
                        "id": r.id,
                        "title": r.title,
                        "method": r.method,
                        "model": r.model,
                        "kind": r.kind,
                        "created": r.created,
                        "params": r.params,
                        "meta": r.summary,
                        "files": [f"{r.id}/{n}" for n in pngs],
                        "damaged": damaged,
                    }
                )
            z.writestr("manifest.json", json.dumps({"convlens_runs": manifest}, indent=2))
        return buf.getvalue()


def _insert_row(con: sqlite3.Connection, row: dict[str, Any], *, replace: bool = False) -> None:
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    cols = ",".join(_RUN_COLUMNS)
    con.execute(
        f"{verb} INTO runs({cols}) VALUES ({','.join('?' * len(_RUN_COLUMNS))})",
        tuple(row.get(c) for c in _RUN_COLUMNS),
    )


def _row_from_manifest(
    folder: Path, m: dict[str, Any], old: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, str]:
    """The index row a run folder's manifest describes (fields it lacks come from the old row, if any), or
    (None, why) when the folder does not hold a complete run."""
    rid = folder.name
    if m.get("id") not in (None, rid):
        return None, "manifest.json names another run id"
    kind, data = m.get("kind"), m.get("data")
    if not isinstance(kind, str) or not isinstance(data, str) or "/" in data:
        return None, "manifest.json has no result kind or data file"
    if not (folder / data).is_file():
        return None, f"its data file {data} is missing"
    old = old or {}

    def pick(name: str, ok: Any, default: Any) -> Any:
        v = m.get(name)
        if ok(v):
            return v
        v = old.get(name)
        return v if ok(v) else default

    def is_text(v: Any) -> bool:
        return isinstance(v, str)

    def opt_text(v: Any) -> bool:
        return isinstance(v, str) and bool(v)

    created = m.get("created")
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
        created = (
            old.get("created") if isinstance(old.get("created"), (int, float)) else folder.stat().st_mtime
        )
    params = m.get("params") if isinstance(m.get("params"), dict) else _loads_obj(old.get("params"))
    if isinstance(m.get("summary"), dict):
        summary = m["summary"]
    else:
        summary = _loads_obj(old.get("summary")) or _summary(
            m.get("meta") if isinstance(m.get("meta"), dict) else {}
        )
    private = m.get("private") if isinstance(m.get("private"), bool) else bool(old.get("private") or False)
    method = pick("method", is_text, None)
    model = pick("model", is_text, None)
    return {
        "id": rid,
        "created": float(created),
        "model": model,
        "method": method,
        "kind": kind,
        "params": json.dumps(params),
        "image_key": pick("image_key", opt_text, None),
        "key": pick("key", opt_text, None),
        "title": str(pick("title", opt_text, f"{method} on {model}"))[:_MAX_TITLE],
        "summary": json.dumps(summary),
        "owner": pick("owner", opt_text, LOCAL_OWNER),
        "private": int(private),
    }, ""


def _loads_obj(raw: Any) -> dict[str, Any]:
    try:
        v = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def _max_upload_bytes() -> int:
    """The upload cap in bytes (CONVLENS_MAX_UPLOAD_MB; a malformed value raises SettingError naming it)."""
    return int(limits.cap_float("upload_mb") * 2**20)


def save_upload_to(folder: Path, data: bytes, suffix: str, *, name: str | None = None) -> Path:
    """Write uploaded bytes into `folder` under a generated content-hash name; `name` (the user's file name) is
    only used in messages. Refuses unknown types, empty files and files over CONVLENS_MAX_UPLOAD_MB."""
    who = f"{name!r:.120}" if name else "the upload"
    sfx = str(suffix).lower()
    if not sfx.startswith("."):
        sfx = "." + sfx
    if sfx not in UPLOAD_SUFFIXES:
        raise BadInput(
            f"{who}: unsupported upload type {suffix!r:.40}; allowed: {', '.join(UPLOAD_SUFFIXES)}"
        )
    data = bytes(data)
    if not data:
        raise BadInput(f"{who}: the uploaded file is empty (0 bytes)")
    cap = _max_upload_bytes()
    if len(data) > cap:
        size = f"{len(data) / 2**20:.1f} MiB" if len(data) >= 2**20 else f"{len(data)} bytes"
        raise ResourceLimit(
            f"{who} is {size}, over the {limits.cap_float('upload_mb'):g} MiB upload cap; "
            f"raise it with {ENV_MAX_UPLOAD_MB}"
        )
    out = folder / f"upload-{hashlib.sha256(data).hexdigest()[:32]}{sfx}"
    if out.is_file() and out.stat().st_size == len(data):
        return out
    tmp = folder / f".tmp-{uuid.uuid4().hex}{sfx}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _os_error(e, f"save {who}", folder) from None
    return out


__all__ = [
    "LOCAL_OWNER",
    "RebuildReport",
    "RunStore",
    "StoreError",
    "StoreReport",
    "StoredRun",
    "default_root",
    "image_key",
    "request_key",
    "save_upload_to",
]
