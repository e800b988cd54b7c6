"""Shared dashboard state: cached backbones and store, the sidebar (model, image, backend), running methods through
the run store, and error display. Pages stay thin: every computation goes through `accel`."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import inspect
import logging
import pkgutil
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image

import accel
from accel import registry, zoo
from accel.images import foolbox_imagenet, sample_image, sample_images
from accel.store import RunStore, StoredRun, default_root, image_key, request_key

log = logging.getLogger("convlens.dashboard")

UPLOAD_MODEL = "(upload a checkpoint or .onnx)"
BY_NAME = "(torchvision model by name)"
IMAGE_SOURCES = ("Sample photo", "ImageNet photo", "Fashion-MNIST item", "Upload")
BACKENDS = ("auto", "torch", "onnxruntime")
CKPT_TYPES = ("pt", "pth", "safetensors", "onnx")


# ---------------------------------------------------------------------------------------------------- caches


@st.cache_resource(show_spinner=False)
def _store_for(root: str) -> RunStore:
    return RunStore(root)


def get_store() -> RunStore:
    """The run store (one object per store folder per server process; connections are per call)."""
    return _store_for(str(default_root()))


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
def _upload_image(data: bytes) -> Image.Image:
    return accel.open_image(data)


@st.cache_resource(show_spinner=False, max_entries=64)
def _stored_run(root: str, run_id: str) -> tuple[StoredRun, accel.Result]:
    run = RunStore(root).get(run_id)
    return run, run.result


def load_run(run_id: str) -> tuple[StoredRun, accel.Result]:
    """A stored run and its Result (rebuilt from files once per server process; results never change)."""
    return _stored_run(str(get_store().root), run_id)


# ---------------------------------------------------------------------------------------------------- errors


@contextlib.contextmanager
def guard(what: str = "", where: Any = None, record: list[str] | None = None) -> Iterator[None]:
    """Show any error raised inside as a message (BadInput as is, anything else as an internal error), never a
    traceback; the rest of the page keeps running. `record` also collects the messages."""
    box = where or st
    try:
        yield
    except accel.BadInput as e:
        msg = f"{what}: {e}" if what else str(e)
        box.error(msg)
        if record is not None:
            record.append(msg)
    except Exception as e:  # noqa: BLE001 - the app must keep working whatever a method does
        log.error("dashboard error in %s:\n%s", what or "page", traceback.format_exc())
        msg = f"{what + ': ' if what else ''}internal error ({type(e).__name__}: {str(e)[:300]})"
        box.error(msg)
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
    store: RunStore
    img_label: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def img_key(self) -> str | None:
        return image_key(self.img) if self.img is not None else None

    def work_net(self) -> Any:
        """This session's private copy of the backbone for running methods (forward hooks and autograd state of
        one session never touch another's)."""
        copies: dict[str, Any] = st.session_state.setdefault("_net_copies", {})
        key = f"{self.model}|{self.net.weights_hash()}"
        if key not in copies:
            copies.clear()
            mine = copy.deepcopy(self.net)
            if (
                getattr(self.net, "_layers", 1) is None
            ):  # layer index + receptive fields: computed once, shared
                with contextlib.suppress(Exception):
                    self.net._layers = mine.layers()
            copies[key] = mine
        return copies[key]


def ctx() -> Ctx | None:
    """The sidebar's context for the current run (None when no model could be loaded)."""
    return st.session_state.get("_ctx")


def _model_picker(store: RunStore) -> tuple[str, Any]:
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
    up = sb.file_uploader("Checkpoint (.pt/.pth/.safetensors state dict) or .onnx", type=None, key="ckpt")
    archs = [*rows, *_torchvision_names()]
    arch = sb.selectbox("Architecture of a state dict", archs, index=archs.index("resnet18"), key="ckpt_arch")
    sb.caption("Pickled models are refused; only plain state dicts, safetensors and ONNX files load.")
    if up is None:
        sb.info("Upload a checkpoint to use it as the backbone.")
        return "", None
    suffix = Path(up.name).suffix.lower()
    if suffix.lstrip(".") not in CKPT_TYPES:
        raise accel.BadInput(f"{up.name}: unsupported checkpoint type; use one of .{', .'.join(CKPT_TYPES)}")
    path = store.save_upload(up.getvalue(), suffix)
    net, notes = get_backbone(str(path), None if suffix == ".onnx" else arch)
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
    up = sb.file_uploader("Upload an image", type=None, key="img_upload")
    if up is None:
        return None, "", None
    try:
        return _upload_image(up.getvalue()), up.name, None
    except accel.BadInput as e:
        raise accel.BadInput(f"cannot use {up.name!r} as an image: {e}") from None


def unset(key: str, **default: Any) -> dict[str, Any]:
    """A widget's default argument, only while its key is not already set (by a deep link) in session state:
    Streamlit warns when both are given."""
    return {} if key in st.session_state else default


def apply_link_params() -> None:
    """Deep links: `?model=vgg16&photo=coffee` (or `imagenet=3`, `backend=torch`) preselect the sidebar, once per
    session, so a link reproduces a setup; unknown values are ignored (the pickers keep their defaults)."""
    if st.session_state.get("_link_applied"):
        return
    st.session_state["_link_applied"] = True
    qp = st.query_params
    rows = {r["name"] for r in _zoo_rows()}
    if qp.get("model") in rows:
        st.session_state["model"] = qp["model"]
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
    model, net = "", None
    with guard("Backbone", sb, problems):
        model, net = _model_picker(store)
    img, img_name, img_label = None, "", None
    with guard("Image", sb, problems):
        img, img_name, img_label = _image_picker()
    if img is not None:
        sb.image(img, width=160, caption=img_name)
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
            st.warning(f"Sidebar: {p}")
        if c is None:
            st.info("Pick a backbone in the sidebar (the current choice could not be loaded).")
        else:
            st.info("Pick or upload an image in the sidebar.")
        st.stop()
    return c


# ---------------------------------------------------------------------------------------------------- running


BROKEN_MODULES: dict[str, str] = {}


def _import_methods() -> None:
    """Import every technique module (what `accel.methods()` promises) one by one, so a technique whose module
    fails to import is reported instead of taking every page down."""
    for fam in registry.FAMILIES:
        try:
            sub = importlib.import_module(f"accel.methods.{fam}")
        except ImportError:
            continue
        for m in pkgutil.iter_modules(sub.__path__):
            name = f"{sub.__name__}.{m.name}"
            if m.name.startswith("_") or name in BROKEN_MODULES:
                continue
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - one broken technique must not take the dashboard down
                BROKEN_MODULES[name] = f"{type(e).__name__}: {e}"
                log.error("cannot import technique module %s: %s", name, e)
    with contextlib.suppress(Exception):  # lets the registry mark itself loaded (broken modules fail again)
        registry.methods()


def method_names(family: str) -> list[str]:
    """Registered techniques of one family (empty when none has landed yet); broken modules are shown as a
    warning on the page."""
    _import_methods()
    broken = [k for k in BROKEN_MODULES if k.startswith(f"accel.methods.{family}.")]
    if broken:
        st.warning(
            "Some techniques could not be loaded: "
            + "; ".join(f"`{k.rsplit('.', 1)[1]}` ({BROKEN_MODULES[k][:160]})" for k in broken)
        )
    return [s.name for s in registry.methods(family)]


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether `fn` takes a keyword argument `name` (or **kwargs)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def call_method(
    name: str, net: Any, img: Image.Image | None, params: dict[str, Any], progress: Any = None, **hooks: Any
) -> accel.Result:
    """`accel.run`, plus the optional `should_stop`/`snapshot` hooks when the method's run function accepts them."""
    spec = accel.get(name)
    extra = {k: v for k, v in hooks.items() if v is not None and accepts(spec.run, k)}
    if not extra:
        return accel.run(name, net, img, progress=progress, **params)
    from accel.registry import validate

    p = validate(spec.params, params, name)
    if spec.needs_image and img is None:
        raise accel.BadInput(f"{name} needs an input image")
    if spec.needs_grad and not getattr(net, "differentiable", True):
        raise accel.NotDifferentiable(f"{name} needs gradients, but backbone {net.name!r} is forward-only")
    t0 = time.perf_counter()
    kw = {"progress": progress} if progress is not None else {}
    res = spec.run(net, img, p, **kw, **extra)
    res.meta.setdefault("method", name)
    res.meta.setdefault("params", dataclasses.asdict(p))
    res.meta.setdefault("model", getattr(net, "name", None))
    res.meta.setdefault("wall_s", time.perf_counter() - t0)
    return res


def run_key(c: Ctx, name: str, params: dict[str, Any], img: Image.Image | None) -> str:
    """The store key of a request (weights, method, params, image pixels)."""
    return request_key(c.net.weights_hash(), name, params, image_key(img) if img is not None else None)


def run_stored(
    c: Ctx,
    name: str,
    params: dict[str, Any],
    *,
    img: Image.Image | None = None,
    use_image: bool = True,
    progress: Any = None,
    net: Any = None,
    **hooks: Any,
) -> tuple[str, accel.Result, bool]:
    """Answer from the store when the identical request was run before, else run and store it.
    Returns (run_id, result, from_cache)."""
    spec = accel.get(name)
    image = (
        (img if img is not None else c.img) if (use_image and spec.needs_image) or img is not None else None
    )
    key = run_key(c, name, params, image)
    hit = c.store.lookup(key)
    if hit is not None:
        run, res = load_run(hit)
        return hit, res, True
    res = call_method(name, net or c.work_net(), image, params, progress, **hooks)
    rid = c.store.put(
        res,
        model=c.model,
        method=name,
        params=params,
        image_key=image_key(image) if image is not None else None,
        key=key,
        title=f"{name} · {c.model}" + (f" · {c.img_name}" if image is c.img and c.img_name else ""),
    )
    return rid, res, False


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
    """A caption with the shareable link of a run."""
    tag = " (answered from the store)" if cached else ""
    st.caption(f"run [`{run_id}`]({share_link(run_id)}){tag}")
