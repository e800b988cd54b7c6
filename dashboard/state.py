"""Shared dashboard state: the backbones (one per model per server process), stored results, the context the
sidebar picked (model, image, backend, run store), backbone copies lent to runs in flight, the idle trimmer, and each
browser session's private space (uploads, what to stop when it ends). Pages stay thin: every computation goes
through `accel`, and every result through the stored-run service (`run_stored`)."""

from __future__ import annotations

import contextlib
import copy
import gc
import shutil
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st
from PIL import Image

import accel
from accel import dataroots, runs
from accel.runtime.alloc import release_memory
from accel.store import StoredRun, StoreError

from .session_store import SessionStore, get_store, public_text, store_for

if TYPE_CHECKING:
    from accel.datasets import Dataset

# ---------------------------------------------------------------------------------------------------- backbones


@st.cache_resource(show_spinner="Loading model...", max_entries=8)
def _load_backbone(name: str, arch: str | None) -> tuple[Any, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = accel.load(name, arch=arch or None)
        net.weights_hash()  # computed once here, shared by every session's copy
        net.layers()
    return net, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def get_backbone(name: str, arch: str | None = None) -> tuple[Any, list[str]]:
    """A Backbone and its load warnings, one per (name, arch) per server process; read-only, shared by sessions."""
    return _load_backbone(name, arch)


@st.cache_resource(show_spinner=False, max_entries=4)
def dataset(spec: str) -> Dataset:
    """The accel.datasets dataset behind a stored run's spec (its items are loaded on demand), once per spec."""
    from accel import datasets

    return datasets.get(spec)


# ---------------------------------------------------------------------------------------------------- stored results


@st.cache_resource(show_spinner=False, max_entries=16)  # a reopened run reads its folder in milliseconds
def _stored_result(root: str, run_id: str) -> accel.Result:
    return store_for(root).get(run_id).result


_DAMAGED: dict[str, str] = {}  # run id -> why its files could not be read (marked on the Runs page)


def damaged_runs() -> dict[str, str]:
    """Runs whose stored files failed to load in this server process, with the reason (for marking them)."""
    return dict(_DAMAGED)


def load_run(run_id: str) -> tuple[StoredRun, accel.Result]:
    """A stored run this session's user may open and its Result (rebuilt from files once per server process;
    results never change, but who may open a run is checked on every call)."""
    store = get_store()
    run = store.get(run_id)
    if not store.is_saved(run_id):
        return run, run.result
    assert store.runs is not None
    try:
        res = _stored_result(str(store.runs.root), run.id)
        _DAMAGED.pop(run.id, None)
        return run, res
    except StoreError as e:
        _DAMAGED[run.id] = str(e)
        raise StoreError(public_text(e)) from None


# ---------------------------------------------------------------------------------------------------- context


@dataclass
class Ctx:
    """What the sidebar picked: model (name + backbone), image, backend, and the run store."""

    model: str
    net: Any
    img: Image.Image | None
    img_name: str
    backend: str
    store: SessionStore

    def borrow_net(self) -> contextlib.AbstractContextManager[Any]:
        """A private copy of the backbone for the length of one run (forward hooks and autograd state of one run
        never touch another's), lent from one server-wide set per weights: memory grows with runs in flight, not
        with browser sessions."""
        return _net_copies(self.model, self.net.weights_hash(), self.net).borrow()


_IN_FLIGHT = [0]  # runs holding a borrowed backbone, server-wide
_IN_FLIGHT_LOCK = threading.Lock()
IDLE_TRIM_S = 10.0  # how often an idle server gives freed memory back (closed sessions free theirs later)


def _expire_closed_sessions() -> None:
    """Drop the state of browser sessions closed longer than server.disconnectedSessionTTL ago. Streamlit keeps them
    in a TTL cache that only expires entries when another session disconnects, so on a quiet server the last
    sessions' results would stay in memory for good (internal API: any change just leaves them to Streamlit)."""
    with contextlib.suppress(Exception):
        from streamlit.runtime import Runtime

        manager = getattr(Runtime.instance(), "_session_mgr", None)
        cache = getattr(getattr(manager, "_session_storage", None), "_cache", None)
        expire = getattr(cache, "expire", None)
        if callable(expire):
            expire()


@st.cache_resource(show_spinner=False)
def start_idle_trimmer() -> threading.Thread:
    """Once per server: a daemon thread that returns the C heap's free memory to the OS every IDLE_TRIM_S seconds
    while no run is in flight (sessions closed by their browser free their results after the disconnect TTL,
    long after their last run)."""

    def loop() -> None:
        while True:
            time.sleep(IDLE_TRIM_S)
            with _IN_FLIGHT_LOCK:
                idle = _IN_FLIGHT[0] == 0
            if idle:
                _expire_closed_sessions()
                gc.collect()
                release_memory()

    t = threading.Thread(target=loop, name="convlens-idle-trim", daemon=True)
    t.start()
    return t


class ScoreMemo:
    """Faithfulness scores of stored runs, server-wide and bounded (least recently used out): a run's scores are
    computed once per (run id, curve steps, backend), whoever opens it next (a shared link, another session) gets
    them at once. Only runs the caller could load reach it (the page looks runs up through the store first)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.items: OrderedDict[tuple[str, int, str], dict[str, Any]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[str, int, str]) -> dict[str, Any] | None:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key: tuple[str, int, str], scores: dict[str, Any]) -> None:
        with self.lock:
            self.items[key] = scores
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def score_memo() -> ScoreMemo:
    """The server's one ScoreMemo."""
    return ScoreMemo()


class NetCopies:
    """Deep copies of one backbone lent to runs in flight, at most `keep` kept between runs (thread-safe). When the
    last run in flight on the server returns its copy, the C heap's free memory goes back to the OS."""

    def __init__(self, net: Any, keep: int = 2) -> None:
        self.net, self.keep = net, keep
        self.free: list[Any] = []
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        """A copy of the backbone for the length of the block (a kept one, or a fresh deep copy)."""
        with self.lock:
            mine = self.free.pop() if self.free else None
        if mine is None:  # the layer index and receptive fields come along (computed once, at load)
            mine = copy.deepcopy(self.net)
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT[0] += 1
        try:
            yield mine
        finally:
            with self.lock:
                if len(self.free) < self.keep:
                    self.free.append(mine)
            with _IN_FLIGHT_LOCK:
                _IN_FLIGHT[0] -= 1
                idle = _IN_FLIGHT[0] == 0
            if idle:
                release_memory()


@st.cache_resource(show_spinner=False, max_entries=8)
def _net_copies(model: str, weights_hash: str, _net: Any) -> NetCopies:
    return NetCopies(_net)


def ctx() -> Ctx | None:
    """The sidebar's context for the current run (None when no model could be loaded)."""
    return st.session_state.get("_ctx")


def run_key(c: Ctx, name: str, params: dict[str, Any], img: Image.Image | None) -> str:
    """The store key of a request (weights, method, params, image pixels): the stored-run service's own."""
    return runs.request_of(c.net, name, params, img)


def run_stored(
    c: Ctx,
    name: str,
    params: dict[str, Any],
    *,
    img: Image.Image | None = None,
    use_image: bool = True,
    observer: accel.Observer | None = None,
) -> tuple[str, accel.Result, bool]:
    """The stored-run service (accel.runs) for this session: answer from the store when the identical request ran
    before, else run it on a borrowed backbone copy and store it. Returns (run_id, result, from_store)."""
    spec = accel.get(name)
    image = (
        (img if img is not None else c.img) if (use_image and spec.needs_image) or img is not None else None
    )
    try:
        a = runs.answer(
            c.store,
            name,
            c.net,
            image,
            params,
            model=c.model,
            title=f"{name} · {c.model}" + (f" · {c.img_name}" if image is c.img and c.img_name else ""),
            observer=observer,
            borrow=c.borrow_net,
            open_run=lambda rid: load_run(rid)[1],
        )
    except accel.BadInput as e:  # an uploaded backbone is named as the user named it, never by its storage id
        if c.net.name == c.model or c.net.name not in str(e):
            raise
        raise type(e)(str(e).replace(c.net.name, c.model)) from None
    return a.run_id, a.result, a.from_store


# ---------------------------------------------------------------------------------------------------- session


class SessionSpace:
    """One browser session's private resources: its upload folder (datasets, images and checkpoints it uploaded)
    and what to stop when the session ends (background jobs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: Path | None = None
        self._closers: list[Callable[[], None]] = []
        self.uploads: dict[str, dict[str, str]] = {}  # kind -> {value: shown name}
        self.closed = False

    @property
    def dir(self) -> Path:
        """The session's upload folder (created on first use, mode 0700, removed when the session ends)."""
        with self._lock:
            if self._dir is None:
                self._dir = dataroots.new_session_dir()
            return self._dir

    def add_upload(self, kind: str, value: str, name: str) -> None:
        """Remember an upload so later pickers offer it again (shown as "upload: <name>")."""
        with self._lock:
            self.uploads.setdefault(kind, {})[value] = f"upload: {name}"

    def on_close(self, fn: Callable[[], None]) -> None:
        """Call `fn` when the session ends (at once if it already has)."""
        with self._lock:
            if not self.closed:
                self._closers.append(fn)
                return
        fn()

    def close(self) -> None:
        """End of the session: stop what registered, delete the upload folder."""
        with self._lock:
            self.closed = True
            closers, self._closers = self._closers, []
            folder, self._dir = self._dir, None
        for fn in closers:
            with contextlib.suppress(Exception):  # one failing closer must not keep the others from running
                fn()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


@st.cache_resource(scope="session", on_release=lambda space: space.close(), show_spinner=False)
def session_space() -> SessionSpace:
    """This browser session's SessionSpace; Streamlit releases it (stopping jobs, deleting uploads) when the
    session disconnects."""
    return SessionSpace()
