"""The run store as one dashboard session sees it: every call acts as the session's user, messages never show the
server's folders, and when the store cannot be opened (or a write fails) results are kept in the session's memory
so every page still works. `public_text` is how any server message is made fit to show a user."""

from __future__ import annotations

import builtins
import contextlib
import logging
import tempfile
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

import accel
from accel.store import RunStore, StoredRun, StoreError, default_root, save_upload_to

from .auth import current_user

if TYPE_CHECKING:
    from typing import Unpack

    from accel.store import RunFacts, RunFilter

log = logging.getLogger("convlens.dashboard")


def public_text(text: Any) -> str:
    """A message fit to show any user: the store's server folder and generated upload names are replaced by
    `$CONVLENS_STORE` and the user's own file names, any other server path by its data-root name."""
    s = str(text)
    with contextlib.suppress(Exception):
        root = default_root()
        for form in {str(root.resolve()), str(root)}:
            if len(form) > 1:
                s = s.replace(form, "$CONVLENS_STORE")
    names: dict[str, str] = {}
    with contextlib.suppress(Exception):
        names = st.session_state.get("_upload_names") or {}
    for stored, original in names.items():
        s = s.replace(stored, original)
    with contextlib.suppress(Exception):  # any other server path: its data-root name, or "(server path)"
        from accel import dataroots

        s = dataroots.redact(s)
    return s


def remember_upload(path: Path, original: str) -> None:
    """Show `original` (the user's file name) wherever the stored upload's generated name would appear."""
    with contextlib.suppress(Exception):
        st.session_state.setdefault("_upload_names", {})[path.name] = original


# ---------------------------------------------------------------------------------------------------- the run store


class MemoryRuns:
    """This browser session's results while the run store is unavailable: kept in memory (the newest few), not
    saved and not shared; ids look like store ids so every page works unchanged."""

    MAX = 16

    def __init__(self) -> None:
        self._runs: OrderedDict[str, StoredRun] = OrderedDict()
        self._why: dict[str, str] = {}
        self._lock = threading.Lock()

    def put(self, result: accel.Result, *, owner: str, why: str, **facts: Unpack[RunFacts]) -> str:
        """Keep `result` (the newest MAX are kept) and return its id; `why` says why it was not saved."""
        rid = uuid.uuid4().hex[:16]
        shown = {
            str(k): v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)[:80]
            for k, v in dict(facts["params"]).items()
        }
        model, method = facts["model"], facts["method"]
        run = StoredRun(
            rid,
            time.time(),
            model,
            method,
            result.kind,
            shown,
            facts["image_key"],
            facts.get("key"),
            facts.get("title") or f"{method} on {model}",
            {},
            Path(),
            owner=owner,
        )
        run.__dict__["result"] = result  # the cached_property, filled in
        with self._lock:
            self._runs[rid] = run
            self._why[rid] = why
            while len(self._runs) > self.MAX:
                self._why.pop(self._runs.popitem(last=False)[0], None)
        return rid

    def not_saved(self, run_id: str) -> str | None:
        """Why a result kept here was not saved, or None for a run this memory does not hold."""
        with self._lock:
            return self._why.get(run_id)

    def get(self, run_id: str) -> StoredRun | None:
        """The kept run with this id, or None."""
        with self._lock:
            return self._runs.get(run_id)

    def lookup(self, key: str) -> str | None:
        """The newest kept run answering request `key`, or None."""
        with self._lock:
            for rid, run in reversed(self._runs.items()):
                if key and run.key == key:
                    return rid
        return None

    def list(self) -> builtins.list[StoredRun]:
        """The kept runs, newest first."""
        with self._lock:
            return list(reversed(self._runs.values()))


_UPLOAD_FALLBACK: list[Path] = []


def _fallback_uploads() -> Path:
    """A private temporary folder for uploads while the run store is unavailable (one per server process)."""
    if not _UPLOAD_FALLBACK:
        _UPLOAD_FALLBACK.append(Path(tempfile.mkdtemp(prefix="convlens-uploads-")))
    return _UPLOAD_FALLBACK[0]


class SessionStore:
    """The run store as one dashboard session sees it. Every call acts as the session's user (`current_user()`),
    so ownership and privacy are enforced by the store itself; messages never show the server's folder. When the
    store cannot be opened (or a write fails), results are kept in this session's memory: computing still works,
    results are just not saved or shared, and `problem` says why."""

    def __init__(
        self, runs: RunStore | None, user: str, *, problem: str = "", memory: MemoryRuns | None = None
    ) -> None:
        self.runs = runs
        self.user = user
        self.problem = problem
        self.memory = memory if memory is not None else MemoryRuns()
        self.notice = public_text(runs.notice) if runs is not None and runs.notice else ""

    @property
    def available(self) -> bool:
        """Whether results are saved and shareable (the store opened)."""
        return self.runs is not None

    def _need(self) -> RunStore:
        if self.runs is None:
            raise StoreError(f"the run store is unavailable: {self.problem}")
        return self.runs

    @contextlib.contextmanager
    def _public(self) -> Iterator[None]:
        try:
            yield
        except StoreError as e:
            raise StoreError(public_text(e)) from None

    def is_saved(self, run_id: str) -> bool:
        """False for a result kept only in this session's memory (the store was unavailable)."""
        return self.memory.get(run_id) is None

    # -- runs
    def put(self, result: accel.Result, *, private: bool = False, **facts: Unpack[RunFacts]) -> str:
        """Store a result owned by this session's user; kept in memory (not saved) when the store fails."""
        if self.runs is not None:
            try:
                return self.runs.put(result, owner=self.user, private=private, **facts)
            except StoreError as e:
                self.problem = public_text(e)
                log.error("run store write failed, keeping the result in memory: %s", e)
        return self.memory.put(
            result, owner=self.user, why=self.problem or "the run store is unavailable", **facts
        )

    def lookup(self, key: str) -> str | None:
        """A stored answer to this request that the user may open (theirs first), or None; never raises."""
        hit = self.memory.lookup(key)
        if hit is not None or self.runs is None:
            return hit
        try:
            hit = self.runs.lookup(key, user=self.user)
            if hit is not None:
                self.runs.mark_seen(hit, user=self.user)  # someone else's shared answer: listed for this user
        except StoreError as e:
            log.error("run store lookup failed: %s", e)
            return None
        return hit

    def get(self, run_id: str) -> StoredRun:
        """A run this user may open (in memory, theirs, or shared by link), or StoreError."""
        mem = self.memory.get(run_id)
        if mem is not None:
            return mem
        with self._public():
            return self._need().get(run_id, user=self.user)

    def list(self, **filters: Unpack[RunFilter]) -> builtins.list[StoredRun]:
        """The user's runs and the runs shared with them (opened by link), newest first."""
        with self._public():
            return self._need().list(user=self.user, **filters)

    def count(self) -> int:
        """How many runs this user lists."""
        with self._public():
            return self._need().count(user=self.user)

    def facets(self) -> dict[str, builtins.list[str]]:
        """Methods and models among the runs this user lists."""
        with self._public():
            return self._need().facets(user=self.user)

    def delete(self, run_id: str) -> bool:
        """Delete one of the user's runs (StoreError for someone else's)."""
        with self._public():
            return self._need().delete(run_id, user=self.user)

    def set_private(self, run_id: str, private: bool) -> None:
        """Make one of the user's runs private, or shared by link again."""
        with self._public():
            self._need().set_private(run_id, private, user=self.user)

    def mark_seen(self, run_id: str) -> None:
        """Remember that the user opened this run by its link (listed as shared with them)."""
        if self.runs is not None and self.is_saved(run_id):
            with self._public():
                self.runs.mark_seen(run_id, user=self.user)

    def export_html(self, run_ids: Sequence[str]) -> bytes:
        """HTML report of runs the user may open (stored runs only)."""
        with self._public():
            return self._need().export_html(self._saved(run_ids), user=self.user)

    def export_zip(self, run_ids: Sequence[str]) -> bytes:
        """Zip of runs the user may open (stored runs only)."""
        with self._public():
            return self._need().export_zip(self._saved(run_ids), user=self.user)

    def _saved(self, run_ids: Sequence[str]) -> builtins.list[str]:
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        if any(not self.is_saved(i) for i in ids):
            raise StoreError("a result that was not saved (the run store was unavailable) cannot be exported")
        return ids

    # -- records and uploads
    def records(self, kind: str, limit: int | None = None) -> builtins.list[dict[str, Any]]:
        """Stored records of one kind (empty when the store is unavailable; `problem` says why)."""
        if self.runs is None:
            return []
        try:
            return self.runs.records(kind, limit)
        except StoreError as e:
            self.problem = public_text(e)
            return []

    def put_record(self, kind: str, payload: dict[str, Any], title: str = "") -> str:
        """Store a JSON record (StoreError when the store is unavailable)."""
        with self._public():
            return self._need().put_record(kind, payload, title)

    def delete_record(self, rec_id: str) -> bool:
        """Remove one record."""
        with self._public():
            return self._need().delete_record(rec_id)

    def save_upload(self, data: bytes, suffix: str, *, name: str | None = None) -> Path:
        """Save an upload under a generated name (in a private temporary folder when the store is unavailable);
        messages name the user's file."""
        with self._public():
            if self.runs is not None:
                path = self.runs.save_upload(data, suffix, name=name)
            else:
                path = save_upload_to(_fallback_uploads(), data, suffix, name=name)
        if name:
            remember_upload(path, name)
        return path


@st.cache_resource(show_spinner=False)
def store_for(root: str) -> RunStore:
    """The one RunStore of a folder in this server process (connections are per call)."""
    return RunStore(root)


def _session_memory() -> MemoryRuns:
    mem = st.session_state.get("_memory_runs")
    if mem is None:
        mem = st.session_state["_memory_runs"] = MemoryRuns()
    return mem


def get_store() -> SessionStore:
    """The run store for this session's user (one RunStore per folder per server process; connections are per
    call). Never raises: an unusable store gives a SessionStore with `available` False and `problem` set."""
    user = current_user()
    memory = _session_memory()
    try:
        runs = store_for(str(default_root()))
        runs.ensure()
        return SessionStore(runs, user, memory=memory)
    except accel.BadInput as e:
        problem = public_text(e)
    except Exception as e:  # noqa: BLE001 - the dashboard must run without a store
        log.error("run store unavailable:\n%s", traceback.format_exc())
        problem = f"internal error ({type(e).__name__})"
    return SessionStore(None, user, problem=problem, memory=memory)
