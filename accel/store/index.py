"""The run index: one SQLite file in WAL mode beside the run folders, opened with one connection per call (so
threads and processes can write at once), verified and migrated when opened, locked across processes while it is
created, migrated or rebuilt."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .folders import (
    MANIFEST,
    REBUILD_HINT,
    RUN_ID,
    StoreError,
    default_root,
    os_error,
    read_manifest,
    write_json_atomic,
)
from .rows import SCHEMA, StoredRun, row_to_run

__all__ = ["SCHEMA_VERSION", "Index"]

SCHEMA_VERSION = 2
_STALE_TMP_S = 3600.0  # temporary run folders older than this were left by writers that died


class Index:
    """A store's folders and its SQLite index: paths, connections, schema, locks (the plumbing under RunStore)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.db_path = self.root / "runs.sqlite"
        self.runs_dir = self.root / "runs"
        self.uploads_dir = self.root / "uploads"
        self.notice: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def identity(self) -> str:
        """The store's resolved root, which names it across RunStore objects of one process."""
        try:
            return str(self.root.resolve())
        except OSError:
            return str(self.root.absolute())

    def index_state(self) -> str:
        """ "missing", "empty" (zero bytes) or "present"."""
        try:
            size = self.db_path.stat().st_size
        except FileNotFoundError:
            return "missing"
        except OSError as e:
            raise os_error(e, "read the index", self.root) from None
        return "present" if size > 0 else "empty"

    def run_folders(self) -> list[Path]:
        """Every run folder (named by a run id), sorted; temporary folders are not listed."""
        try:
            return sorted(p for p in self.runs_dir.iterdir() if RUN_ID.match(p.name) and p.is_dir())
        except FileNotFoundError:
            return []
        except OSError as e:
            raise os_error(e, "list the run folders", self.runs_dir) from None

    def has_runs_on_disk(self) -> bool:
        """Whether any run folder holds a manifest (then an index is never started empty beside them)."""
        return any((p / MANIFEST).is_file() for p in self.run_folders())

    def make_folders(self) -> None:
        """Create the runs and uploads folders (StoreError when the disk or permissions refuse)."""
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.uploads_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, "create the store folders", self.root) from None

    def open_schema(self) -> int:
        """Open the index (WAL), verify it, create or migrate its tables; returns how many runs it holds."""
        with self.connect() as con:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"run store: {self.db_path} cannot use WAL journaling (got {mode!r})")
            verdict = str(con.execute("PRAGMA quick_check(1)").fetchone()[0])
            if verdict != "ok":
                raise StoreError(
                    f"run store: the index {self.db_path} is damaged ({verdict[:160]}); {REBUILD_HINT}"
                )
            con.executescript(SCHEMA)
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
                    self.backfill_manifest(dict(r))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
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
        """A StoreError for an SQLite failure, with what to do for the usual causes (damage, full disk, locks)."""
        msg = str(e) or type(e).__name__
        low = msg.lower()
        if any(s in low for s in ("not a database", "malformed", "no such table", "no such column")):
            hint = REBUILD_HINT
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
    def connect(self) -> Iterator[sqlite3.Connection]:
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

    def sweep_tmp(self) -> None:
        """Remove temporary run folders left by writers that died more than an hour ago."""
        now = time.time()
        with contextlib.suppress(OSError):
            for p in self.runs_dir.glob(".tmp-*"):
                with contextlib.suppress(OSError):
                    if now - p.stat().st_mtime > _STALE_TMP_S:
                        shutil.rmtree(p, ignore_errors=True)

    def folder(self, run_id: str) -> Path:
        """The folder of run `run_id`; StoreError when `run_id` is not a run id."""
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            raise StoreError(
                f"{run_id!r:.40} is not a run id (16 hexadecimal characters, as in ?run=0123456789abcdef)"
            )
        return self.runs_dir / run_id

    def row_to_run(self, r: sqlite3.Row | dict[str, Any]) -> StoredRun:
        """A StoredRun from one of this store's rows (damaged fields named in `.damaged`)."""
        return row_to_run(r, self.runs_dir)

    def backfill_manifest(self, row: dict[str, Any], manifest: dict[str, Any] | None = None) -> None:
        """Write a row's title, owner, privacy, keys and summary into its run's manifest (atomically)."""
        rid = str(row.get("id"))
        if not RUN_ID.match(rid):
            return
        folder = self.runs_dir / rid
        m = manifest if manifest is not None else read_manifest(folder)
        if "owner" in m:
            return
        run = self.row_to_run(row)
        m.update(
            title=run.title,
            owner=run.owner,
            private=run.private,
            image_key=run.image_key,
            key=run.key,
            summary=run.summary,
        )
        write_json_atomic(folder / MANIFEST, m)
