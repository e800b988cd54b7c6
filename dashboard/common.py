"""Shared dashboard state: cached backbones and store, the sidebar (model, image, backend), running methods through
the run store, and error display. Pages stay thin: every computation goes through `accel`."""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
import re
import tempfile
import threading
import time
import traceback
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image

import accel
from accel import limits, registry, runs, zoo
from accel.images import foolbox_imagenet, sample_image, sample_images
from accel.runtime.alloc import release_memory
from accel.store import (
    RunStore,
    StoredRun,
    StoreError,
    default_root,
    image_key,
    save_upload_to,
)

from .auth import current_user

log = logging.getLogger("convlens.dashboard")

UPLOAD_MODEL = "(upload a checkpoint or .onnx)"
BY_NAME = "(torchvision model by name)"
IMAGE_SOURCES = ("Sample photo", "ImageNet photo", "Fashion-MNIST item", "Upload")
BACKENDS = ("auto", "torch", "onnxruntime")
CKPT_TYPES = ("pt", "pth", "safetensors", "onnx")


# ---------------------------------------------------------------------------------------------------- text

_MD_SPECIAL = re.compile(r"([\\`\[\]<>$])")


def escape_md(text: Any) -> str:
    """User text (file names, titles, labels, parameters, messages that quote them) made safe for Streamlit's
    Markdown: no link, image, HTML, math, colour directive or autolink survives, so it shows as literal text.
    Whitespace is collapsed to single spaces (no headings, lists or tables from line breaks)."""
    s = " ".join(str(text).split())
    s = _MD_SPECIAL.sub(r"\\\1", s)
    s = re.sub(r":(?=//)", r"\\:", s)  # http://... autolinks
    s = re.sub(r"(?i)\b(www)\.", r"\1\\.", s)  # www.... autolinks
    s = s.replace("@", "\\@")  # e-mail autolinks
    return re.sub(r"^([#>+=|~*_-]|\d+[.)])", r"\\\1", s)  # block syntax at the start


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


def _remember_upload(path: Path, original: str) -> None:
    with contextlib.suppress(Exception):
        st.session_state.setdefault("_upload_names", {})[path.name] = original


# ---------------------------------------------------------------------------------------------------- the run store


class _MemoryRuns:
    """This browser session's results while the run store is unavailable: kept in memory (the newest few), not
    saved and not shared; ids look like store ids so every page works unchanged."""

    MAX = 16

    def __init__(self) -> None:
        self._runs: OrderedDict[str, StoredRun] = OrderedDict()
        self._lock = threading.Lock()

    def put(
        self,
        result: accel.Result,
        *,
        model: str,
        method: str,
        params: dict[str, Any],
        owner: str,
        image_key: str | None,
        key: str | None,
        title: str,
        why: str,
    ) -> str:
        rid = uuid.uuid4().hex[:16]
        shown = {
            str(k): v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)[:80]
            for k, v in dict(params).items()
        }
        run = StoredRun(
            rid,
            time.time(),
            model,
            method,
            result.kind,
            shown,
            image_key,
            key,
            title or f"{method} on {model}",
            {},
            Path(),
            owner=owner,
        )
        run.__dict__["result"] = result  # the cached_property, filled in
        run.not_saved = why  # type: ignore[attr-defined]  # why it was not saved, for its link line
        with self._lock:
            self._runs[rid] = run
            while len(self._runs) > self.MAX:
                self._runs.popitem(last=False)
        return rid

    def get(self, run_id: str) -> StoredRun | None:
        with self._lock:
            return self._runs.get(run_id)

    def lookup(self, key: str) -> str | None:
        with self._lock:
            for rid, run in reversed(self._runs.items()):
                if key and run.key == key:
                    return rid
        return None

    def list(self) -> list[StoredRun]:
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
        self, runs: RunStore | None, user: str, *, problem: str = "", memory: _MemoryRuns | None = None
    ) -> None:
        self.runs = runs
        self.user = user
        self.problem = problem
        self.memory = memory if memory is not None else _MemoryRuns()
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
    def put(
        self,
        result: accel.Result,
        *,
        model: str,
        method: str,
        params: dict[str, Any],
        image_key: str | None,
        key: str | None = None,
        title: str = "",
        private: bool = False,
    ) -> str:
        """Store a result owned by this session's user; kept in memory (not saved) when the store fails."""
        if self.runs is not None:
            try:
                return self.runs.put(
                    result,
                    model=model,
                    method=method,
                    params=params,
                    image_key=image_key,
                    key=key,
                    title=title,
                    owner=self.user,
                    private=private,
                )
            except StoreError as e:
                self.problem = public_text(e)
                log.error("run store write failed, keeping the result in memory: %s", e)
        return self.memory.put(
            result,
            why=self.problem or "the run store is unavailable",
            model=model,
            method=method,
            params=params,
            owner=self.user,
            image_key=image_key,
            key=key,
            title=title,
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

    def list(
        self,
        method: str | None = None,
        model: str | None = None,
        limit: int = 200,
        offset: int = 0,
        kind: str | None = None,
    ) -> list[StoredRun]:
        """The user's runs and the runs shared with them (opened by link), newest first."""
        with self._public():
            return self._need().list(method, model, limit, offset, kind, user=self.user)

    def count(self) -> int:
        """How many runs this user lists."""
        with self._public():
            return self._need().count(user=self.user)

    def facets(self) -> dict[str, list[str]]:
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

    def _saved(self, run_ids: Sequence[str]) -> list[str]:
        ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
        if any(not self.is_saved(i) for i in ids):
            raise StoreError("a result that was not saved (the run store was unavailable) cannot be exported")
        return ids

    # -- records and uploads
    def records(self, kind: str, limit: int | None = None) -> list[dict[str, Any]]:
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
            _remember_upload(path, name)
        return path


@st.cache_resource(show_spinner=False)
def _store_for(root: str) -> RunStore:
    return RunStore(root)


def _session_memory() -> _MemoryRuns:
    mem = st.session_state.get("_memory_runs")
    if mem is None:
        mem = st.session_state["_memory_runs"] = _MemoryRuns()
    return mem


def get_store() -> SessionStore:
    """The run store for this session's user (one RunStore per folder per server process; connections are per
    call). Never raises: an unusable store gives a SessionStore with `available` False and `problem` set."""
    user = current_user()
    memory = _session_memory()
    try:
        runs = _store_for(str(default_root()))
        runs.ensure()
        return SessionStore(runs, user, memory=memory)
    except accel.BadInput as e:
        problem = public_text(e)
    except Exception as e:  # noqa: BLE001 - the dashboard must run without a store
        log.error("run store unavailable:\n%s", traceback.format_exc())
        problem = f"internal error ({type(e).__name__})"
    return SessionStore(None, user, problem=problem, memory=memory)


def sync_upload_limit() -> int:
    """Make Streamlit's own upload limit (server.maxUploadSize, MiB) equal to CONVLENS_MAX_UPLOAD_MB rounded up,
    so the documented cap is the one that applies; returns the limit in MiB. Streamlit reads the option on every
    upload request and every uploader it draws, so setting it at start-up (first page run) is enough."""
    want = max(1, math.ceil(limits.cap_float("upload_mb")))
    from streamlit import config as st_config

    if st_config.get_option("server.maxUploadSize") != want:
        st_config.set_option("server.maxUploadSize", want, "convlens (CONVLENS_MAX_UPLOAD_MB)")
    return want


# ---------------------------------------------------------------------------------------------------- caches


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


@st.cache_resource(show_spinner=False)
def _zoo_rows() -> list[dict[str, Any]]:
    return zoo.zoo_table()


@st.cache_resource(show_spinner=False)
def _torchvision_names() -> list[str]:
    return zoo.torchvision_names()


@st.cache_data(show_spinner=False, max_entries=32)
def _sample(name: str) -> Image.Image:
    return sample_image(name)


@st.cache_data(show_spinner=False, max_entries=32)
def _open_path(path: str) -> Image.Image:
    return accel.open_image(path)


@st.cache_resource(show_spinner=False)
def _fashion_test() -> Any:
    from accel.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist("test")


@st.cache_data(show_spinner=False, max_entries=16)
def _upload_image(data: bytes, name: str) -> Image.Image:
    """An uploaded image, decoded safely; refusals name the user's file (never a storage name)."""
    return accel.open_image(data, label=name)


@st.cache_resource(show_spinner=False, max_entries=16)  # a reopened run reads its folder in milliseconds
def _stored_result(root: str, run_id: str) -> accel.Result:
    return _store_for(root).get(run_id).result


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


# ---------------------------------------------------------------------------------------------------- errors


@contextlib.contextmanager
def guard(what: str = "", where: Any = None, record: list[str] | None = None) -> Iterator[None]:
    """Show any error raised inside as a message (BadInput as is, anything else as an internal error), never a
    traceback; the rest of the page keeps running. Messages are shown as literal text (they may quote a user's
    file name) without server paths. `record` also collects the messages."""
    box = where or st
    try:
        yield
    except accel.BadInput as e:
        msg = public_text(f"{what}: {e}" if what else str(e))
        box.error(escape_md(msg))
        if record is not None:
            record.append(msg)
    except Exception as e:  # noqa: BLE001 - the app must keep working whatever a method does
        log.error("dashboard error in %s:\n%s", what or "page", traceback.format_exc())
        msg = public_text(f"{what + ': ' if what else ''}internal error ({type(e).__name__}: {str(e)[:300]})")
        box.error(escape_md(msg))
        if record is not None:
            record.append(msg)


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
    img_label: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def img_key(self) -> str | None:
        return image_key(self.img) if self.img is not None else None

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

        cache = getattr(Runtime.instance()._session_mgr._session_storage, "_cache", None)  # noqa: SLF001
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


class NetCopies:
    """Deep copies of one backbone lent to runs in flight, at most `keep` kept between runs (thread-safe). When the
    last run in flight on the server returns its copy, the C heap's free memory goes back to the OS."""

    def __init__(self, net: Any, keep: int = 2) -> None:
        self.net, self.keep = net, keep
        self.free: list[Any] = []
        self.made = 0
        self.lock = threading.Lock()

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Any]:
        with self.lock:
            mine = self.free.pop() if self.free else None
        if mine is None:
            mine = copy.deepcopy(self.net)
            if (
                getattr(self.net, "_layers", 1) is None
            ):  # layer index + receptive fields: computed once, shared
                with contextlib.suppress(Exception):
                    self.net._layers = mine.layers()
            with self.lock:
                self.made += 1
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


def _model_picker(store: SessionStore) -> tuple[str, Any]:
    sb = st.sidebar
    rows = {r["name"]: r for r in _zoo_rows()}
    options = [*rows, BY_NAME, UPLOAD_MODEL]

    def fmt(name: str) -> str:
        r = rows.get(name)
        if r is None:
            return name
        return f"{name}" + ("" if r["weights_present"] else "  (weights not installed)")

    default = options.index(zoo.DEFAULT_MODEL) if zoo.DEFAULT_MODEL in options else 0
    choice = sb.selectbox("Backbone", options, format_func=fmt, key="model", **unset("model", index=default))
    if choice in rows:
        sb.caption(f"{rows[choice]['description']} · source: {rows[choice]['source']}")
        net, notes = get_backbone(choice)
        for n in notes:
            sb.warning(n)
        return choice, net
    if choice == BY_NAME:
        names = _torchvision_names()
        name = sb.selectbox("torchvision architecture", names, index=names.index("resnet18"), key="tv_name")
        net, notes = get_backbone(name)
        for n in notes:
            sb.warning(n)
        return name, net
    up = sb.file_uploader(
        "Checkpoint (.pt/.pth/.safetensors state dict) or .onnx",
        type=None,
        key="ckpt",
        max_upload_size=sync_upload_limit(),
    )
    archs = [*rows, *_torchvision_names()]
    arch = sb.selectbox("Architecture of a state dict", archs, index=archs.index("resnet18"), key="ckpt_arch")
    sb.caption("Pickled models are refused; only plain state dicts, safetensors and ONNX files load.")
    if up is None:
        sb.info("Upload a checkpoint to use it as the backbone.")
        return "", None
    suffix = Path(up.name).suffix.lower()
    if suffix.lstrip(".") not in CKPT_TYPES:
        raise accel.BadInput(f"{up.name}: unsupported checkpoint type; use one of .{', .'.join(CKPT_TYPES)}")
    path = store.save_upload(up.getvalue(), suffix, name=up.name)
    try:
        net, notes = get_backbone(str(path), None if suffix == ".onnx" else arch)
    except accel.BadInput as e:  # name the user's file, never its storage name or folder
        msg = str(e).replace(str(path), up.name).replace(path.name, up.name)
        raise type(e)(msg) from None
    return f"{arch}@{up.name}" if suffix != ".onnx" else up.name, net


def _image_picker() -> tuple[Image.Image | None, str, int | None]:
    sb = st.sidebar
    source = sb.radio("Image", IMAGE_SOURCES, key="img_source", horizontal=True)
    if source == "Sample photo":
        names = list(sample_images())
        if not names:
            raise accel.BadInput("no sample photos are installed (scikit-image, scikit-learn or matplotlib)")
        first = names.index("chelsea") if "chelsea" in names else 0
        name = sb.selectbox("Photo", names, key="img_sample", **unset("img_sample", index=first))
        return _sample(name), name, None
    if source == "ImageNet photo":
        items = foolbox_imagenet()
        if not items:
            raise accel.BadInput(
                "foolbox's ImageNet photos are not installed (pip install --no-deps foolbox)"
            )
        labels = zoo.imagenet_labels()
        i = sb.selectbox(
            "Photo",
            range(len(items)),
            format_func=lambda k: f"{k}: {labels[items[k][1]]}",
            key="img_imagenet",
        )
        path, lab = items[i]
        return _open_path(str(path)), f"imagenet photo {i} ({labels[lab]})", lab
    if source == "Fashion-MNIST item":
        from accel.fashion_mnist import FASHION_CLASSES

        imgs, labels = _fashion_test()
        i = int(sb.number_input("Test item", 0, len(imgs) - 1, 0, key="img_fashion"))
        lab = int(labels[i])
        img = Image.fromarray(imgs[i]).convert("RGB")
        sb.caption(f"label: {FASHION_CLASSES[lab]}")
        return img, f"fashion_mnist test {i} ({FASHION_CLASSES[lab]})", lab
    up = sb.file_uploader("Upload an image", type=None, key="img_upload", max_upload_size=sync_upload_limit())
    if up is None:
        return None, "", None
    try:
        return _upload_image(up.getvalue(), up.name), up.name, None
    except accel.BadInput as e:  # the message already starts with the file's name
        raise accel.BadInput(f"cannot use this upload as an image: {e}") from None


def unset(key: str, **default: Any) -> dict[str, Any]:
    """A widget's default argument, only while its key is not already set (by a deep link) in session state:
    Streamlit warns when both are given."""
    return {} if key in st.session_state else default


def apply_link_params() -> None:
    """Deep links: `?model=vgg16&photo=coffee` (or `model=upload`, `imagenet=3`, `backend=torch`) preselect the sidebar, once per
    session, so a link reproduces a setup; unknown values are ignored (the pickers keep their defaults)."""
    if st.session_state.get("_link_applied"):
        return
    st.session_state["_link_applied"] = True
    qp = st.query_params
    rows = {r["name"] for r in _zoo_rows()}
    if qp.get("model") in rows:
        st.session_state["model"] = qp["model"]
    elif qp.get("model") == "upload":  # ?model=upload opens the checkpoint uploader
        st.session_state["model"] = UPLOAD_MODEL
    if qp.get("photo") in sample_images():
        st.session_state["img_source"] = "Sample photo"
        st.session_state["img_sample"] = qp["photo"]
    elif (qp.get("imagenet") or "").isdigit() and int(qp["imagenet"]) < len(foolbox_imagenet()):
        st.session_state["img_source"] = "ImageNet photo"
        st.session_state["img_imagenet"] = int(qp["imagenet"])
    if qp.get("backend") in BACKENDS:
        st.session_state["backend"] = qp["backend"]


def sidebar() -> Ctx | None:
    """Model, image and backend pickers; returns the context (also in session state) or None if no model loads.
    Errors are shown in the sidebar; nothing here raises."""
    sb = st.sidebar
    apply_link_params()
    store = get_store()
    problems: list[str] = []
    st.session_state["_sidebar_problems"] = problems
    with guard("Upload limit", sb, problems):
        sync_upload_limit()
    if not store.available:
        sb.warning(
            "Run store unavailable: results are computed but not saved or shared. "
            + escape_md(store.problem),
            icon=":material/cloud_off:",
        )
    model, net = "", None
    with guard("Backbone", sb, problems):
        model, net = _model_picker(store)
    img, img_name, img_label = None, "", None
    with guard("Image", sb, problems):
        img, img_name, img_label = _image_picker()
    if img is not None:
        sb.image(img, width=160, caption=escape_md(img_name))
    backend = sb.radio("Backend (forward passes)", BACKENDS, horizontal=True, key="backend")
    if net is None:
        st.session_state["_ctx"] = None
        return None
    c = Ctx(model, net, img, img_name, backend, store, img_label)
    st.session_state["_ctx"] = c
    return c


def require_ctx(need_image: bool = True) -> Ctx:
    """The context, or an info message and a stop when the sidebar has no usable model/image yet."""
    c = ctx()
    problems = st.session_state.get("_sidebar_problems") or []
    if c is None or (need_image and c.img is None):
        for p in problems:
            st.warning(f"Sidebar: {escape_md(p)}")
        if c is None:
            st.info("Pick a backbone in the sidebar (the current choice could not be loaded).")
        else:
            st.info("Pick or upload an image in the sidebar.")
        st.stop()
    return c


# ---------------------------------------------------------------------------------------------------- running


def method_names(family: str) -> list[str]:
    """Registered techniques of one family; technique modules that failed to import (the registry records them
    instead of failing) are shown as a warning on the page."""
    broken = {k: v for k, v in registry.broken_modules().items() if k.startswith(f"accel.methods.{family}.")}
    if broken:
        st.warning(
            "Some techniques could not be loaded: "
            + "; ".join(f"`{k.rsplit('.', 1)[1]}` ({v[:160]})" for k, v in broken.items())
        )
    return [s.name for s in registry.methods(family)]


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
    return a.run_id, a.result, a.from_store


def st_progress(text: str = "") -> Callable[[float, str], None]:
    """A `progress(frac, msg)` callback drawing an st.progress bar (throttled to ~10 updates a second)."""
    bar = st.progress(0.0, text=text)
    last = [0.0]

    def cb(frac: float, msg: str = "") -> None:
        now = time.perf_counter()
        if now - last[0] < 0.1 and frac < 1.0:
            return
        last[0] = now
        bar.progress(min(1.0, max(0.0, float(frac))), text=f"{text} {msg}".strip())

    cb.bar = bar  # type: ignore[attr-defined]
    cb.done = bar.empty  # type: ignore[attr-defined]
    return cb


def share_link(run_id: str) -> str:
    """An absolute link that reopens this run for anyone on the same server (falls back to `?run=<id>`)."""
    base = ""
    with contextlib.suppress(Exception):
        url = st.context.url
        if url:
            base = url.split("?")[0]
    return f"{base}?run={run_id}"


def link_line(run_id: str, cached: bool = False) -> None:
    """A caption with the shareable link of a run (or why it has none: the store was unavailable)."""
    mem = get_store().memory.get(run_id)
    if mem is not None:
        st.caption(
            f"not saved or shared: {escape_md(getattr(mem, 'not_saved', 'the run store is unavailable'))}"
        )
        return
    tag = " (answered from the store)" if cached else ""
    st.caption(f"run [`{run_id}`]({share_link(run_id)}){tag}")
