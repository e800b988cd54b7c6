"""RunStore: save, find, list, share and delete runs (row in the index + artifact folder), with owners and private
runs enforced for every call that names a `user`; check, rebuild, benchmark records, uploads and exports."""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInput
from ..result import Result, encode_result
from .exports import export_html, export_zip
from .folders import MANIFEST, RUN_ID, StoreError, os_error, read_manifest, write_json_atomic
from .index import SCHEMA_VERSION, Index
from .keys import jsonable
from .repair import RebuildReport, StoreReport, check_store, rebuild_index
from .rows import LOCAL_OWNER, MAX_TITLE, StoredRun, insert_row, summary_of
from .uploads import save_upload_to

__all__ = ["RunStore", "forget_opened"]

log = logging.getLogger("convlens.store")

_INIT_LOCK = threading.RLock()
_OPENED: set[str] = set()  # stores this process has opened (index verified, stale temporaries swept)


def forget_opened() -> None:
    """Forget which stores this process opened, so the next RunStore verifies (or rebuilds) its index again, as a
    fresh server process would."""
    with _INIT_LOCK:
        _OPENED.clear()


def _user_arg(user: str | None) -> str | None:
    """The acting user, checked: a non-empty string, or None for the operator (CLI, scripts)."""
    if user is not None and (not isinstance(user, str) or not user.strip()):
        raise BadInput(f"the acting user must be a non-empty string (or None for the operator), got {user!r}")
    return user


class RunStore(Index):
    """SQLite + artifact folder; safe for several threads and processes at once (one connection per call)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        super().__init__(root)
        self._open()

    @classmethod
    def unopened(cls, root: str | os.PathLike[str] | None = None) -> RunStore:
        """A store object that does not open (or create, or rebuild) its index: for `check()` and `rebuild()` on a
        store that cannot be opened."""
        self = cls.__new__(cls)
        Index.__init__(self, root)
        return self

    def _open(self) -> None:
        """Create the folders, open (verify, migrate) the index, and rebuild it from the run folders when it is
        missing, empty or has no rows beside existing runs; once per store per process."""
        key = self.identity()
        with _INIT_LOCK:
            if key in _OPENED and self.index_state() == "present":
                return
            self.make_folders()
            with self.exclusive():
                state = self.index_state()
                if state != "present" and self.has_runs_on_disk():
                    # never start an empty index beside existing runs: rebuild it from their folders
                    rep = rebuild_index(self)
                    self.notice = (
                        f"the run index was {state}; rebuilt it from {rep.indexed} run folder(s)"
                        + (f" ({len(rep.skipped)} skipped)" if rep.skipped else "")
                    )
                    log.warning("run store %s: %s", self.root, self.notice)
                elif self.open_schema() == 0 and self.has_runs_on_disk():
                    # an index without rows (a new or emptied database file) beside runs: index them
                    rep = rebuild_index(self)
                    self.notice = f"the run index had no runs; indexed {rep.indexed} run folder(s)"
                    log.warning("run store %s: %s", self.root, self.notice)
            self.sweep_tmp()
            _OPENED.add(key)

    def ensure(self) -> None:
        """Cheap health check before use (one stat): re-open, or rebuild from the run folders, an index that
        vanished or was emptied while this process ran; StoreError when it cannot."""
        if self.index_state() != "present":
            _OPENED.discard(self.identity())
            self._open()

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
        title = str(title or f"{method} on {model}")[:MAX_TITLE]
        summary = summary_of(result.meta)
        params_json = jsonable(params)
        try:
            tmp.mkdir(parents=True)
            manifest: dict[str, Any] = {
                "version": SCHEMA_VERSION,
                "id": run_id,
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
                **encode_result(result, tmp),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, allow_nan=False), encoding="utf-8")
            os.replace(tmp, final)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise os_error(e, f"write the artifacts of a {method} run", self.runs_dir) from None
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
            with (
                self.connect() as con
            ):  # OR REPLACE: a concurrent rebuild may have indexed the folder already
                insert_row(con, row, replace=True)
        except StoreError:
            shutil.rmtree(final, ignore_errors=True)
            raise
        return run_id

    def _no_run(self, run_id: str) -> StoreError:
        """The one refusal for a run that is missing or that the user may not open (no existence oracle)."""
        return StoreError(
            f"no run {run_id!r} that you can open: it was deleted, its owner made it private, or the link comes "
            "from another server"
        )

    def get(self, run_id: str, *, user: str | None = None) -> StoredRun:
        """The stored run `run_id` (its `.result` is rebuilt from files on first access), or StoreError.

        With `user`, a private run of someone else is refused exactly like a missing one (no existence oracle)."""
        self.folder(run_id)
        _user_arg(user)
        with self.connect() as con:
            r = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if r is None:
            raise self._no_run(run_id)
        run = self.row_to_run(r)
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
        with self.connect() as con:
            rows = con.execute(sql, args).fetchall()
        for r in rows:
            if RUN_ID.match(str(r["id"])) and (self.runs_dir / r["id"] / MANIFEST).is_file():
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
        with self.connect() as con:
            rows = con.execute(sql, (*vals, max(0, int(limit)), max(0, int(offset)))).fetchall()
        return [self.row_to_run(r) for r in rows]

    def count(self, *, user: str | None = None) -> int:
        """How many runs the store holds (with `user`: how many that user lists)."""
        cond, args = self._visible(_user_arg(user))
        with self.connect() as con:
            return int(con.execute(f"SELECT COUNT(*) FROM runs WHERE {cond}", args).fetchone()[0])

    def facets(self, *, user: str | None = None) -> dict[str, builtins.list[str]]:
        """Distinct methods and models among stored runs (with `user`: among the runs they list)."""
        cond, args = self._visible(_user_arg(user))
        out: dict[str, list[str]] = {}
        with self.connect() as con:
            for col in ("method", "model"):
                sql = f"SELECT DISTINCT {col} FROM runs WHERE {cond} ORDER BY {col}"
                out[col] = [str(r[0]) for r in con.execute(sql, args) if r[0]]
        return out

    def delete(self, run_id: str, *, user: str | None = None) -> bool:
        """Remove a run's row and files; False if there was no such run (or, with `user`, none they can see).
        Only its owner (or the operator, user=None) may delete a run: anyone else gets StoreError."""
        folder = self.folder(run_id)
        _user_arg(user)
        with self.connect() as con:
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
            m = read_manifest(run.folder)
            if m.get("private") != bool(private):
                m["private"] = bool(private)
                write_json_atomic(run.folder / MANIFEST, m)
        with self.connect() as con:
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
        with self.connect() as con:
            con.execute("INSERT OR REPLACE INTO seen VALUES (?,?,?)", (user, run_id, time.time()))

    # -- check and rebuild -------------------------------------------------------------------------------------
    def check(self, *, deep: bool = True) -> StoreReport:
        """Inspect the store without changing it: the index, every row, every run folder and (with `deep`) every
        artifact file decoded. Works on a store that cannot be opened (use `RunStore.unopened(root).check()`)."""
        return check_store(self, deep=deep)

    def rebuild(self) -> RebuildReport:
        """Rebuild the index from the run folders' manifests: rows are (re)written for every readable run folder,
        rows whose folder is gone are dropped; a damaged index file is kept beside the new one as
        runs.sqlite.damaged-<time> (benchmark records are salvaged from it where readable)."""
        self.make_folders()
        with _INIT_LOCK, self.exclusive():
            rep = rebuild_index(self)
            _OPENED.add(self.identity())
        return rep

    # -- JSON records (benchmark reports, ...) -----------------------------------------------------------------
    def put_record(self, kind: str, payload: dict[str, Any], title: str = "") -> str:
        """Save a JSON record (e.g. kind="bench" for `convlens bench` reports) and return its id."""
        if not kind or not isinstance(kind, str):
            raise BadInput("put_record needs a non-empty kind, e.g. 'bench'")
        rec_id = uuid.uuid4().hex[:16]
        text = json.dumps(jsonable(payload))
        with self.connect() as con:
            con.execute("INSERT INTO records VALUES (?,?,?,?,?)", (rec_id, time.time(), kind, title, text))
        return rec_id

    def records(self, kind: str, limit: int | None = None) -> builtins.list[dict[str, Any]]:
        """Records of one kind, newest first, as {"id", "created", "kind", "title", "payload"}; a record whose
        payload is not valid JSON is returned with payload {} and "damaged" set, never fatal for the list."""
        sql = "SELECT * FROM records WHERE kind=? ORDER BY created DESC"
        args: tuple[Any, ...] = (kind,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (kind, max(0, int(limit)))
        with self.connect() as con:
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
        with self.connect() as con:
            return bool(con.execute("DELETE FROM records WHERE id=?", (rec_id,)).rowcount)

    # -- uploads -----------------------------------------------------------------------------------------------
    def save_upload(self, data: bytes, suffix: str, *, name: str | None = None) -> Path:
        """Write uploaded bytes under a generated name in the store's uploads folder (never a user-chosen path).
        `name` is the user's own file name, used in error messages (never as a path)."""
        return save_upload_to(self.uploads_dir, data, suffix, name=name)

    # -- export ------------------------------------------------------------------------------------------------
    def _runs(self, run_ids: Sequence[str], user: str | None) -> builtins.list[StoredRun]:
        """The runs to export, each opened as `user` may (StoreError for one they cannot)."""
        if isinstance(run_ids, str):
            run_ids = [run_ids]
        if not run_ids:
            raise BadInput("nothing to export: pick at least one run")
        return [self.get(i, user=user) for i in run_ids]

    def export_html(self, run_ids: Sequence[str], *, user: str | None = None) -> bytes:
        """A self-contained HTML report (images inline as base64) of the given runs. Every stored string is
        HTML-escaped and a Content-Security-Policy forbids any fetch, so a title can never load or link anything."""
        return export_html(self._runs(run_ids, user))

    def export_zip(self, run_ids: Sequence[str], *, user: str | None = None) -> bytes:
        """A zip of each run's PNGs plus manifest.json describing every run (method, model, params, meta);
        damaged pictures are left out and listed under "damaged"."""
        return export_zip(self._runs(run_ids, user))
