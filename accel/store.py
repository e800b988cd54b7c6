"""Run store: every result is a SQLite row plus an artifact folder, so runs are cached, listed, reopened and shared.

SQLite runs in WAL mode with a busy timeout and one connection per call, so several dashboard sessions (threads)
and processes can write at once. Artifacts are written into a temporary folder that is renamed into place before
the row is committed: a writer killed at any moment leaves either a complete run or no run, never half of one.
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

from .errors import BadInput
from .limits import CAPS
from .result import Result

ENV_STORE = "CONVLENS_STORE"
ENV_MAX_UPLOAD_MB = CAPS["upload_mb"].env
DEFAULT_MAX_UPLOAD_MB = CAPS["upload_mb"].default
SCHEMA_VERSION = 1
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

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs(
    id TEXT PRIMARY KEY, created REAL NOT NULL, model TEXT, method TEXT, kind TEXT,
    params TEXT, image_key TEXT, key TEXT, title TEXT, summary TEXT);
CREATE INDEX IF NOT EXISTS runs_key ON runs(key);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created);
CREATE TABLE IF NOT EXISTS records(
    id TEXT PRIMARY KEY, created REAL NOT NULL, kind TEXT NOT NULL, title TEXT, payload TEXT);
CREATE INDEX IF NOT EXISTS records_kind ON records(kind, created);
"""


class StoreError(BadInput):
    """The run store cannot read or write (disk full, permissions, a missing run); the message says what to do."""


def default_root() -> Path:
    """`$CONVLENS_STORE`, else a `store` folder in the user's data directory."""
    env = os.environ.get(ENV_STORE, "").strip()
    if env:
        return Path(env).expanduser()
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


# ---------------------------------------------------------------------------------------------------- the store


@dataclass
class StoredRun:
    """One stored run: its row (method, model, params, timings) and, lazily, the reconstructed `Result`."""

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

    @cached_property
    def result(self) -> Result:
        """The stored `Result`, rebuilt from its files without recomputing anything."""
        try:
            manifest = json.loads((self.folder / "manifest.json").read_text(encoding="utf-8"))
            data = np.load(self.folder / manifest["data"], allow_pickle=False)
            image = _load_png(self.folder / manifest["image"]) if manifest.get("image") else None
            meta = _decode(manifest.get("meta", {}), self.folder)
            extras = _decode(manifest.get("extras", {}), self.folder)
        except (OSError, KeyError, ValueError) as e:
            raise StoreError(
                f"run {self.id}: its artifact files in {self.folder} are missing or damaged ({e}); "
                "delete the run and compute it again"
            ) from None
        return Result(manifest["kind"], data, meta, image, extras)

    @property
    def rendered_path(self) -> Path | None:
        p = self.folder / "rendered.png"
        return p if p.is_file() else None

    @property
    def input_path(self) -> Path | None:
        p = self.folder / "input.png"
        return p if p.is_file() else None

    def rendered(self) -> Image.Image | None:
        """The rendered picture saved with the run (overlay or synthesized image), if any."""
        p = self.rendered_path
        return _load_png(p) if p else None

    @property
    def link(self) -> str:
        """The query string that reopens this run in the dashboard."""
        return f"?run={self.id}"


_INIT_LOCK = threading.Lock()
_INITIALISED: set[str] = set()


class RunStore:
    """SQLite + artifact folder; safe for several threads and processes at once (one connection per call)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.db_path = self.root / "runs.sqlite"
        self.runs_dir = self.root / "runs"
        self.uploads_dir = self.root / "uploads"
        self._init()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _init(self) -> None:
        key = str(self.root.resolve())
        with _INIT_LOCK:
            if key in _INITIALISED and self.db_path.exists():
                return
            try:
                self.runs_dir.mkdir(parents=True, exist_ok=True)
                self.uploads_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise _os_error(e, "create the store folders", self.root) from None
            with self._db() as con:
                mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"run store: {self.db_path} cannot use WAL journaling (got {mode!r})")
                con.executescript(_SCHEMA)
                con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._sweep_tmp()
            _INITIALISED.add(key)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A fresh connection (autocommit; each statement is its own transaction) with WAL-friendly settings."""
        try:
            con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        except sqlite3.Error as e:
            raise StoreError(f"run store: cannot open {self.db_path}: {e}") from None
        try:
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA synchronous=NORMAL")
            con.row_factory = sqlite3.Row
            yield con
        except sqlite3.DatabaseError as e:
            raise StoreError(f"run store: database error in {self.db_path}: {e}") from None
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
                f"{run_id!r} is not a run id (16 hexadecimal characters, as in ?run=0123456789abcdef)"
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
    ) -> str:
        """Save a result (artifacts atomically, then the row) and return its run id."""
        if not isinstance(result, Result):
            raise BadInput(f"RunStore.put expects an accel.Result, got {type(result).__name__}")
        data = np.asarray(result.data)
        if data.dtype == object:
            raise BadInput(f"{method}: result data must be a numeric array to be stored, got dtype=object")
        run_id = uuid.uuid4().hex[:16]
        final = self.runs_dir / run_id
        tmp = self.runs_dir / f".tmp-{run_id}"
        created = time.time()
        try:
            tmp.mkdir(parents=True)
            w = _Writer(tmp)
            manifest: dict[str, Any] = {
                "version": SCHEMA_VERSION,
                "id": run_id,
                "kind": result.kind,
                "model": model,
                "method": method,
                "params": _jsonable(params),
                "created": created,
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
        row = (
            run_id,
            created,
            model,
            method,
            result.kind,
            json.dumps(_jsonable(params)),
            image_key,
            key,
            title or f"{method} on {model}",
            json.dumps(_summary(result.meta)),
        )
        try:
            with self._db() as con:
                con.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?)", row)
        except StoreError:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return run_id

    def _row_to_run(self, r: sqlite3.Row) -> StoredRun:
        return StoredRun(
            id=r["id"],
            created=r["created"],
            model=r["model"],
            method=r["method"],
            kind=r["kind"],
            params=json.loads(r["params"] or "{}"),
            image_key=r["image_key"],
            key=r["key"],
            title=r["title"] or "",
            summary=json.loads(r["summary"] or "{}"),
            folder=self.runs_dir / r["id"],
        )

    def get(self, run_id: str) -> StoredRun:
        """The stored run `run_id` (its `.result` is rebuilt from files on first access), or StoreError."""
        self._folder(run_id)
        with self._db() as con:
            r = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if r is None:
            raise StoreError(
                f"no run {run_id!r} in the store at {self.root} (deleted, or another server's link?)"
            )
        return self._row_to_run(r)

    def lookup(self, key: str) -> str | None:
        """The newest run stored under request key `key` whose files are present, or None."""
        with self._db() as con:
            rows = con.execute(
                "SELECT id FROM runs WHERE key=? ORDER BY created DESC LIMIT 5", (key,)
            ).fetchall()
        for r in rows:
            if (self.runs_dir / r["id"] / "manifest.json").is_file():
                return str(r["id"])
        return None

    def list(
        self,
        method: str | None = None,
        model: str | None = None,
        limit: int = 200,
        offset: int = 0,
        kind: str | None = None,
    ) -> list[StoredRun]:
        """Stored runs, newest first, optionally filtered by method, model and result kind."""
        where, args = [], []
        for col, val in (("method", method), ("model", model), ("kind", kind)):
            if val:
                where.append(f"{col}=?")
                args.append(val)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created DESC LIMIT ? OFFSET ?"
        with self._db() as con:
            rows = con.execute(sql, (*args, max(0, int(limit)), max(0, int(offset)))).fetchall()
        return [self._row_to_run(r) for r in rows]

    def count(self) -> int:
        """How many runs the store holds."""
        with self._db() as con:
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])

    def facets(self) -> dict[str, list[str]]:
        """Distinct methods and models among stored runs (for filter pickers)."""
        with self._db() as con:
            methods = [r[0] for r in con.execute("SELECT DISTINCT method FROM runs ORDER BY method") if r[0]]
            models = [r[0] for r in con.execute("SELECT DISTINCT model FROM runs ORDER BY model") if r[0]]
        return {"method": methods, "model": models}

    def delete(self, run_id: str) -> bool:
        """Remove a run's row and files; False if there was no such run."""
        folder = self._folder(run_id)
        with self._db() as con:
            n = con.execute("DELETE FROM runs WHERE id=?", (run_id,)).rowcount
        shutil.rmtree(folder, ignore_errors=True)
        return bool(n)

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
        """Records of one kind, newest first, as {"id", "created", "kind", "title", "payload"}."""
        sql = "SELECT * FROM records WHERE kind=? ORDER BY created DESC"
        args: tuple[Any, ...] = (kind,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (kind, max(0, int(limit)))
        with self._db() as con:
            rows = con.execute(sql, args).fetchall()
        return [
            {
                "id": r["id"],
                "created": r["created"],
                "kind": r["kind"],
                "title": r["title"] or "",
                "payload": json.loads(r["payload"]),
            }
            for r in rows
        ]

    def delete_record(self, rec_id: str) -> bool:
        """Remove one record; False if there was none."""
        with self._db() as con:
            return bool(con.execute("DELETE FROM records WHERE id=?", (rec_id,)).rowcount)

    # -- uploads -----------------------------------------------------------------------------------------------
    def save_upload(self, data: bytes, suffix: str) -> Path:
        """Write uploaded bytes under a generated name in the store's uploads folder (never a user-chosen path)."""
        sfx = str(suffix).lower()
        if not sfx.startswith("."):
            sfx = "." + sfx
        if sfx not in UPLOAD_SUFFIXES:
            raise BadInput(f"unsupported upload type {suffix!r}; allowed: {', '.join(UPLOAD_SUFFIXES)}")
        data = bytes(data)
        if not data:
            raise BadInput("the uploaded file is empty (0 bytes)")
        cap = _max_upload_bytes()
        if len(data) > cap:
            raise BadInput(
                f"the upload is {len(data) / 2**20:.0f} MiB, over the {cap / 2**20:.0f} MiB cap; "
                f"raise it with {ENV_MAX_UPLOAD_MB}"
            )
        out = self.uploads_dir / f"upload-{hashlib.sha256(data).hexdigest()[:32]}{sfx}"
        if out.is_file() and out.stat().st_size == len(data):
            return out
        tmp = self.uploads_dir / f".tmp-{uuid.uuid4().hex}{sfx}"
        try:
            self.uploads_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, out)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _os_error(e, "save the uploaded file", self.uploads_dir) from None
        return out

    # -- export ------------------------------------------------------------------------------------------------
    def _runs(self, run_ids: Sequence[str]) -> list[StoredRun]:
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if not run_ids:
            raise BadInput("nothing to export: pick at least one run")
        return [self.get(i) for i in run_ids]

    def export_html(self, run_ids: Sequence[str]) -> bytes:
        """A self-contained HTML report (images inline as base64) of the given runs."""
        runs = self._runs(run_ids)
        parts = [
            "<!doctype html><html><head><meta charset='utf-8'><title>convlens report</title><style>"
            "body{font-family:sans-serif;margin:2em;color:#222}section{border-top:1px solid #ccc;padding:1em 0}"
            "img{max-width:420px;margin-right:1em;border:1px solid #ddd}table{border-collapse:collapse}"
            "td,th{border:1px solid #ddd;padding:2px 8px;text-align:left;font-size:90%}</style></head><body>",
            f"<h1>convlens report</h1><p>{len(runs)} run(s), exported {html.escape(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
        ]
        for r in runs:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
            parts.append(f"<section id='run-{r.id}'><h2>{html.escape(r.title)}</h2>")
            parts.append(
                f"<p>run <code>{r.id}</code> · method <b>{html.escape(str(r.method))}</b> · model "
                f"<b>{html.escape(str(r.model))}</b> · {html.escape(when)}</p><div>"
            )
            for label, path in (("input", r.input_path), ("result", r.rendered_path)):
                if path is not None:
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
                        f"<tr><td>{what}</td><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                    )
                parts.append("</table>")
            parts.append("</section>")
        parts.append("</body></html>")
        return "".join(parts).encode("utf-8")

    def export_zip(self, run_ids: Sequence[str]) -> bytes:
        """A zip of each run's PNGs plus manifest.json describing every run (method, model, params, meta)."""
        runs = self._runs(run_ids)
        buf = io.BytesIO()
        manifest = []
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for r in runs:
                pngs = sorted(p.name for p in r.folder.glob("*.png"))
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
                    }
                )
            z.writestr("manifest.json", json.dumps({"convlens_runs": manifest}, indent=2))
        return buf.getvalue()


def _max_upload_bytes() -> int:
    env = os.environ.get(ENV_MAX_UPLOAD_MB, "").strip()
    try:
        mb = float(env) if env else DEFAULT_MAX_UPLOAD_MB
    except ValueError:
        raise BadInput(f"{ENV_MAX_UPLOAD_MB}={env!r} is not a number of megabytes") from None
    return int(mb * 2**20)


__all__ = ["RunStore", "StoredRun", "StoreError", "image_key", "request_key", "default_root"]
