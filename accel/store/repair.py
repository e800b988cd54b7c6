"""Check and rebuild: inspect a store without changing it (index, rows, run folders, every artifact decoded), and
rebuild its index from the run folders' manifests (a damaged index is kept aside, its records salvaged)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..result import artifact_files, artifact_path
from .folders import MANIFEST, RUN_ID, StoreError, os_error, read_failure, read_manifest, verify_artifact
from .index import Index
from .rows import insert_row, row_from_manifest

__all__ = ["RebuildReport", "StoreReport", "check_store", "rebuild_index"]

Rows = dict[str, dict[str, Any]]


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
        lists: tuple[list[Any], ...] = (
            self.damaged_rows,
            self.missing_artifacts,
            self.damaged_artifacts,
            self.orphan_folders,
        )
        return bad_index + sum(len(items) for items in lists)

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


def check_store(idx: Index, *, deep: bool = True) -> StoreReport:
    """Inspect the store without changing it: the index, every row, every run folder and (with `deep`) every
    artifact file decoded. Works on a store that cannot be opened."""
    rep = StoreReport(idx.root)
    try:
        state = idx.index_state()
    except StoreError as e:
        state, rep.index = "unreadable", f"damaged: {e}"
    rows: Rows = {}
    if state in ("missing", "empty"):
        rep.index = state
    elif state == "present":
        try:
            rows = _read_rows_anyhow(idx, verify=True)
        except (sqlite3.Error, StoreError, OSError) as e:
            rep.index = f"damaged: {read_failure(e)}"
    rep.rows = len(rows)
    folders = idx.run_folders() if idx.runs_dir.is_dir() else []
    rep.folders = len(folders)
    with contextlib.suppress(OSError):
        rep.temp_folders = sum(1 for _ in idx.runs_dir.glob(".tmp-*"))
    names = {p.name for p in folders}
    for rid, r in rows.items():
        if not RUN_ID.match(rid):
            rep.damaged_rows.append((rid[:40], "id is not a run id"))
            continue
        run = idx.row_to_run(r)
        if run.damaged:
            rep.damaged_rows.append((rid, run.damaged))
        if rid not in names:
            rep.missing_artifacts.append((rid, "run folder"))
            continue
        _check_folder(run.folder, rep, deep)
    rep.orphan_folders = sorted(names - set(rows))
    for rid in rep.orphan_folders:  # what a rebuild would index: its files are checked too
        _check_folder(idx.runs_dir / rid, rep, deep)
    return rep


def _check_folder(folder: Path, rep: StoreReport, deep: bool) -> None:
    """Add to `rep` what is wrong with one run folder: its manifest, and every file the manifest refers to."""
    rid = folder.name
    try:
        m = read_manifest(folder)
    except FileNotFoundError:
        rep.missing_artifacts.append((rid, MANIFEST))
        return
    except (OSError, ValueError) as e:
        rep.damaged_artifacts.append((rid, f"{MANIFEST}: {read_failure(e)}"))
        return
    for name in artifact_files(m):
        try:
            p = artifact_path(folder, name)
        except ValueError as e:
            rep.damaged_artifacts.append((rid, f"{MANIFEST}: {e}"))
            continue
        if not p.is_file():
            rep.missing_artifacts.append((rid, name))
        elif deep:
            why = verify_artifact(p)
            if why:
                rep.damaged_artifacts.append((rid, f"{name}: {why}"))


def _read_rows(path: Path, *, verify: bool) -> Rows:
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


def _read_rows_anyhow(idx: Index, *, verify: bool) -> Rows:
    """`_read_rows` of the index; on a read-only store (SQLite cannot open a WAL index there) from a private
    copy of the index and its WAL, so recent writes are seen too."""
    try:
        return _read_rows(idx.db_path, verify=verify)
    except sqlite3.OperationalError as e:
        if not any(s in str(e).lower() for s in ("readonly", "read-only", "unable to open")):
            raise
    import tempfile

    with tempfile.TemporaryDirectory(prefix="convlens-check-") as tmp:
        for sfx in ("", "-wal"):
            src = idx.db_path.with_name(f"runs.sqlite{sfx}")
            if src.is_file():
                shutil.copyfile(src, Path(tmp) / f"runs.sqlite{sfx}")
        return _read_rows(Path(tmp) / "runs.sqlite", verify=verify)


def _salvage(path: Path) -> tuple[Rows, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Whatever rows, records and seen-marks can still be read from a damaged index (best effort)."""
    rows: Rows = {}
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


@dataclass
class _OldIndex:
    """What a rebuild starts from: the old rows (kept when the index was healthy), salvaged records and marks."""

    healthy: bool = False
    rows: Rows = field(default_factory=dict)
    records: list[tuple[Any, ...]] = field(default_factory=list)
    seen: list[tuple[Any, ...]] = field(default_factory=list)


def rebuild_index(idx: Index) -> RebuildReport:
    """Rebuild the index from the run folders' manifests (the caller holds the store's locks): rows are (re)written
    for every readable run folder, rows whose folder is gone are dropped; a damaged index file is kept beside the
    new one as runs.sqlite.damaged-<time> (benchmark records are salvaged from it where readable)."""
    rep = RebuildReport(idx.root)
    old = _open_old_index(idx, rep)
    new = _rows_from_folders(idx, old, rep)
    on_disk = {p.name for p in idx.run_folders()}
    rep.dropped = sorted(i for i in old.rows if old.healthy and i not in on_disk)
    with idx.connect() as con:
        con.execute("BEGIN IMMEDIATE")
        try:
            for rid in rep.dropped:
                con.execute("DELETE FROM runs WHERE id=?", (rid,))
                con.execute("DELETE FROM seen WHERE run_id=?", (rid,))
            for row in new.values():
                insert_row(con, row, replace=True)
            for rec in old.records:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("INSERT OR IGNORE INTO records VALUES (?,?,?,?,?)", tuple(rec)[:5])
            for s in old.seen:
                with contextlib.suppress(sqlite3.Error):
                    con.execute("INSERT OR IGNORE INTO seen VALUES (?,?,?)", tuple(s)[:3])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    rep.indexed = len(new)
    return rep


def _open_old_index(idx: Index, rep: RebuildReport) -> _OldIndex:
    """Open the index for a rebuild: a healthy one keeps its rows; a damaged or empty one is moved aside (what can
    be read from it salvaged) and a new one created."""
    state = idx.index_state()
    old = _OldIndex()
    if state == "present":
        try:
            idx.open_schema()
            old.rows = _read_rows(idx.db_path, verify=False)
            old.healthy = True
        except (StoreError, sqlite3.Error):
            old.healthy = False
    if not old.healthy and state != "missing":
        aside = _move_aside(idx, state)
        if aside is not None:
            rep.kept_aside = aside.name
            old.rows, old.records, old.seen = _salvage(aside)
            rep.salvaged_records = len(old.records)
    if not old.healthy:
        idx.open_schema()
    return old


def _rows_from_folders(idx: Index, old: _OldIndex, rep: RebuildReport) -> Rows:
    """The row of every run folder whose manifest describes a complete run (old manifests learn their row's owner
    and title); folders that cannot be indexed are listed in `rep.skipped` unless a healthy index has their row."""
    new: Rows = {}
    for folder in idx.run_folders():
        rid = folder.name
        try:
            m = read_manifest(folder)
        except (OSError, ValueError) as e:
            if old.healthy and rid in old.rows:
                continue  # its row stays; `check` reports the damaged files
            rep.skipped.append((rid, f"{MANIFEST}: {read_failure(e)}"))
            continue
        row, why = row_from_manifest(folder, m, old.rows.get(rid))
        if row is None:
            if old.healthy and rid in old.rows:
                continue
            rep.skipped.append((rid, why))
            continue
        new[rid] = row
        if "owner" not in m:
            with contextlib.suppress(Exception):
                idx.backfill_manifest(row, m)
    return new


def _move_aside(idx: Index, state: str) -> Path | None:
    """Move a damaged or empty index (and its -wal/-shm files) out of the way; returns the kept copy."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = idx.db_path.with_name(f"runs.sqlite.damaged-{stamp}-{uuid.uuid4().hex[:4]}")
    wal = idx.db_path.with_name("runs.sqlite-wal")
    wal_size = wal.stat().st_size if wal.is_file() else 0
    aside: Path | None = None
    try:
        if state == "empty" and not wal_size:
            idx.db_path.unlink()
        else:
            os.replace(idx.db_path, kept)
            aside = kept
        for sfx in ("-wal", "-shm"):
            side = idx.db_path.with_name(f"runs.sqlite{sfx}")
            if side.exists():
                if aside is None:
                    side.unlink()
                else:
                    os.replace(side, aside.with_name(aside.name + sfx))
    except OSError as e:
        raise os_error(e, "move the damaged index aside", idx.root) from None
    return aside
