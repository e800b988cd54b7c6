"""Index rows: the SQLite tables, a run's row as a `StoredRun` (damaged fields listed, never fatal), and the row a
run folder's manifest describes (what a rebuilt index is made of)."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from PIL import Image

from ..result import (
    INPUT_PNG,
    RENDERED_PNG,
    Result,
    ResultDecodeError,
    artifact_path,
    decode_result,
    load_png,
)
from .folders import MANIFEST, RUN_ID, StoreError, read_failure, read_manifest

if TYPE_CHECKING:
    from typing import NotRequired

__all__ = [
    "LOCAL_OWNER",
    "MAX_TITLE",
    "SCHEMA",
    "RunFacts",
    "RunFilter",
    "StoredRun",
    "insert_row",
    "row_from_manifest",
    "row_to_run",
    "summary_of",
]

LOCAL_OWNER = (
    "local"  # the owner of runs made without sign-in (and of every run stored before owners existed)
)
MAX_TITLE = 500
SCHEMA = """
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


class RunFacts(TypedDict):
    """What a stored run is of, as every `put` takes it (keyword arguments): the model, the method and its
    parameters, the image's key, the request key and a title (default: "<method> on <model>")."""

    model: str
    method: str
    params: dict[str, Any]
    image_key: str | None
    key: NotRequired[str | None]
    title: NotRequired[str]


class RunFilter(TypedDict, total=False):
    """Which stored runs a listing shows (`RunStore.list`'s keyword arguments): by method, model and result kind,
    and the page (`limit`, `offset`)."""

    method: str | None
    model: str | None
    limit: int
    offset: int
    kind: str | None


def summary_of(meta: dict[str, Any]) -> dict[str, Any]:
    """Scalar meta fields (timings, backend, passes, target) for listing runs without opening their files."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, (str, bool, int)) or (isinstance(v, float) and math.isfinite(v)):
            out[k] = v[:200] if isinstance(v, str) else v
    return out


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
        try:
            manifest = read_manifest(self.folder)
            return decode_result(manifest, self.folder)
        except ResultDecodeError as e:
            raise self._damaged(e.part, e.cause) from None
        except Exception as e:  # noqa: BLE001 - any failure to read an artifact is a damaged run, not a crash
            raise self._damaged(MANIFEST, e) from None

    def _damaged(self, part: str, e: BaseException) -> StoreError:
        """The StoreError for a run whose files cannot be read back."""
        return StoreError(
            f"run {self.id}: its stored files are missing or damaged ({part}: {read_failure(e)}); "
            "delete the run and compute it again (`convlens store check` lists every damaged run)"
        )

    @property
    def rendered_path(self) -> Path | None:
        """The rendered picture's file (overlay or synthesized image), if the run has one."""
        p = self.folder / RENDERED_PNG
        return p if p.is_file() else None

    @property
    def input_path(self) -> Path | None:
        """The input image's file, if the run explains an image."""
        p = self.folder / INPUT_PNG
        return p if p.is_file() else None

    def rendered(self) -> Image.Image | None:
        """The rendered picture saved with the run (overlay or synthesized image), if any; StoreError if damaged."""
        p = self.rendered_path
        if p is None:
            return None
        try:
            return load_png(p)
        except Exception as e:  # noqa: BLE001 - a damaged picture is reported, never fatal
            raise StoreError(f"run {self.id}: its rendered picture is damaged ({read_failure(e)})") from None

    @property
    def link(self) -> str:
        """The query string that reopens this run in the dashboard."""
        return f"?run={self.id}"


def row_to_run(r: sqlite3.Row | dict[str, Any], runs_dir: Path) -> StoredRun:
    """A StoredRun from a row (its folder under `runs_dir`); a damaged field is replaced by a safe default and
    named in `.damaged`."""
    r = dict(r)
    problems: list[str] = []

    def obj(name: str) -> dict[str, Any]:
        raw = r.get(name)
        try:
            v = json.loads(raw) if raw else {}
        except (TypeError, ValueError):
            problems.append(f"{name} are not valid JSON" if name == "params" else f"{name} is not valid JSON")
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
        folder=runs_dir / (run_id if RUN_ID.match(run_id) else "invalid-id"),
        owner=owner,
        private=bool(r.get("private")) if r.get("private") is not None else False,
        damaged="; ".join(problems) or None,
    )


def insert_row(con: sqlite3.Connection, row: dict[str, Any], *, replace: bool = False) -> None:
    """Write one run's row (INSERT OR REPLACE with `replace`)."""
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    cols = ",".join(_RUN_COLUMNS)
    con.execute(
        f"{verb} INTO runs({cols}) VALUES ({','.join('?' * len(_RUN_COLUMNS))})",
        tuple(row.get(c) for c in _RUN_COLUMNS),
    )


def row_from_manifest(
    folder: Path, m: dict[str, Any], old: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, str]:
    """The index row a run folder's manifest describes (fields it lacks come from the old row, if any), or
    (None, why) when the folder does not hold a complete run."""
    rid = folder.name
    if m.get("id") not in (None, rid):
        return None, "manifest.json names another run id"
    kind, data = m.get("kind"), m.get("data")
    try:
        data_path = artifact_path(folder, data)
    except ValueError:
        data_path = None
    if not isinstance(kind, str) or data_path is None:
        return None, "manifest.json has no result kind or data file"
    if not data_path.is_file():
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

    raw = m.get("created")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
        created = float(raw)
    else:
        prev = old.get("created")
        created = float(prev) if isinstance(prev, (int, float)) else folder.stat().st_mtime
    params = m.get("params") if isinstance(m.get("params"), dict) else _loads_obj(old.get("params"))
    meta = m.get("meta")
    summary = m.get("summary")
    if not isinstance(summary, dict):
        summary = _loads_obj(old.get("summary")) or summary_of(meta if isinstance(meta, dict) else {})
    flag = m.get("private")
    private = flag if isinstance(flag, bool) else bool(old.get("private") or False)
    method = pick("method", is_text, None)
    model = pick("model", is_text, None)
    return {
        "id": rid,
        "created": created,
        "model": model,
        "method": method,
        "kind": kind,
        "params": json.dumps(params),
        "image_key": pick("image_key", opt_text, None),
        "key": pick("key", opt_text, None),
        "title": str(pick("title", opt_text, f"{method} on {model}"))[:MAX_TITLE],
        "summary": json.dumps(summary),
        "owner": pick("owner", opt_text, LOCAL_OWNER),
        "private": int(private),
    }, ""


def _loads_obj(raw: Any) -> dict[str, Any]:
    """A JSON object stored as text in an old row, or {} when it is missing or not an object."""
    try:
        v = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}
