"""Controls generated from a method's parameter declaration, result display, image grids and Plotly figures.

`param_controls` is the one place that turns `spec.param_infos()` into Streamlit widgets, so a technique that
lands in `accel.list_methods()` gets its controls with no page-specific code. Controls are chosen by the parameter's
declared kind (layer, class, backend, dataset, image, checkpoint), never by its name. Path-like kinds offer only
what this server allows (packaged sets, this session's uploads, files under the data roots: accel.dataroots), and
every user-supplied string is shown as text, never as Markdown or HTML (`plain`, `shown`)."""

from __future__ import annotations

import contextlib
import html
import json
import math
import re
import shutil
import threading
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

import accel
from accel import dataroots
from accel.limits import cap as accel_cap
from accel.result import Result, colorize

AUTO = "(auto)"
PREDICTED = "(top-1 prediction)"
NONE = "(none)"

# ---------------------------------------------------------------------------------------------------- text

_MD_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")


def plain(text: object) -> str:
    """`text` escaped so Markdown shows it literally (every ASCII punctuation mark backslash-escaped, line breaks as
    spaces): for user-supplied strings in captions, alerts, progress text and labels, which Streamlit renders as
    Markdown (links, images and HTML in a file name must never become live)."""
    return _MD_PUNCT.sub(r"\\\1", " ".join(str(text).splitlines()))


def shown(text: object) -> str:
    """User-facing text: server paths replaced by their root-relative or upload names, then `plain`."""
    return plain(dataroots.redact(text))


def shown_error(msg: object, box: Any = None) -> None:
    """An error message that may hold user text or server paths, shown literally with paths hidden."""
    (box or st).error(shown(msg))


def html_text(text: object) -> str:
    """`text` for Plotly labels and hover text (they understand a little HTML): escaped, so it shows literally."""
    return html.escape(str(text), quote=True)


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


# ---------------------------------------------------------------------------------------------------- controls


def _base_type(t: Any) -> tuple[Any, bool]:
    """(X, optional) for X, X | None, Optional[X]."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), len(args) < len(typing.get_args(t))
    return t, False


def _layer_options(net: Any, info: Any) -> list[str]:
    if info.choices:
        return [str(c) for c in info.choices]
    names = [li.name for li in net.layers()]
    taps = [
        t
        for t in ("embedding", "logits")
        if t == "embedding" and net.embedding_layer or t == "logits" and net.has_head
    ]
    return [*names, *[t for t in taps if t not in names]]


def _layer_label(net: Any) -> Any:
    shapes = {li.name: li for li in net.layers()}

    def fmt(name: Any) -> str:
        if name is None or name == AUTO:
            return "(method default)"
        li = shapes.get(name)
        if li is None:
            return str(name)
        rf = f" · RF {li.receptive_field[0]}px" if li.receptive_field else ""
        return f"{name} · {li.kind} · {'x'.join(map(str, li.out_shape))}{rf}"

    return fmt


def param_controls(
    spec: Any,
    net: Any,
    *,
    key: str,
    skip: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
    backend: str | None = None,
    container: Any = None,
) -> dict[str, Any]:
    """Build one widget per declared parameter of `spec` and return {name: value} ready for `accel.run`.

    Bounds become slider/number limits, choices a selectbox, bools a checkbox; by declared kind, a layer gets a
    picker of `net.layers()`, a class a picker from `net.labels`, a backend the sidebar's choice as default, and
    path-like kinds (dataset, image, images, checkpoint) a choice of what this server allows plus an upload."""
    box = container or st
    values: dict[str, Any] = {}
    for info in spec.param_infos():
        if info.name in skip:
            continue
        default = (defaults or {}).get(info.name, info.default)
        k = f"{key}.{spec.name}.{info.name}"
        label = info.name.replace("_", " ")
        helptext = info.help or None
        base, optional = _base_type(info.type)
        hint = (info.widget or "").lower()

        if info.is_path:
            values[info.name] = _path_control(box, spec, info, net, default, k, label, helptext)
            continue
        if info.kind == "layer" and net is not None and net.module is not None:
            opts = _layer_options(net, info)
            auto = default in (None, "", "auto") or default not in opts
            choices = [AUTO, *opts] if auto else opts
            idx = 0 if auto else choices.index(default)
            v = box.selectbox(label, choices, index=idx, format_func=_layer_label(net), help=helptext, key=k)
            values[info.name] = default if v == AUTO else v
            continue
        if info.kind == "class" and base in (int, typing.Any) and not info.choices:
            n = net.num_classes if net is not None and net.has_head else None
            if not n:
                values[info.name] = default
                continue
            names = net.labels or [str(i) for i in range(n)]
            opts = ([PREDICTED] if default is None else []) + list(range(n))
            idx = 0 if default is None else opts.index(int(default)) if int(default) in opts else 0
            v = box.selectbox(
                label,
                opts,
                index=idx,
                format_func=lambda i, names=names: i if isinstance(i, str) else f"{i}: {names[i]}",
                help=helptext,
                key=k,
            )
            values[info.name] = None if v == PREDICTED else int(v)
            continue
        if info.choices:
            opts = list(info.choices)
            if info.kind == "backend" and backend in opts:
                default = backend
            idx = opts.index(default) if default in opts else 0
            values[info.name] = box.selectbox(label, opts, index=idx, help=helptext, key=k)
            continue
        if base is bool:
            values[info.name] = box.checkbox(label, value=bool(default), help=helptext, key=k)
            continue
        if base in (int, float):
            values[info.name] = _number(box, info, base, default, optional, label, helptext, k, hint)
            continue
        if base is str or default is None or isinstance(default, str):
            if hint in ("textarea", "text_area"):
                v = box.text_area(label, value="" if default is None else str(default), help=helptext, key=k)
            else:
                v = box.text_input(label, value="" if default is None else str(default), help=helptext, key=k)
            values[info.name] = None if (optional and v == "" and default is None) else v
            continue
        # lists, tuples, dicts: edited as JSON
        text = box.text_input(f"{label} (JSON)", value=json.dumps(default), help=helptext, key=k)
        try:
            values[info.name] = json.loads(text)
        except json.JSONDecodeError:
            raise accel.BadInput(f"{spec.name}: parameter {info.name!r} must be JSON, got {text!r}") from None
    return check_path_params(spec, values, net)


def _number(
    box: Any,
    info: Any,
    base: type,
    default: Any,
    optional: bool,
    label: str,
    helptext: str | None,
    k: str,
    hint: str,
) -> Any:
    lo, hi = info.min, info.max
    if info.limit:  # the server's configured cap (accel.limits) bounds the control too
        cap = accel_cap(info.limit)
        hi = cap if hi is None else min(hi, cap)
    is_int = base is int
    cast = int if is_int else float
    if default is None:
        v = box.number_input(
            label,
            min_value=cast(lo) if lo is not None else None,
            max_value=cast(hi) if hi is not None else None,
            value=None,
            step=1 if is_int else None,
            placeholder="auto",
            help=helptext,
            key=k,
        )
        return None if v is None else cast(v)
    d = cast(default)
    if lo is not None:
        d = max(d, cast(lo))
    if hi is not None:
        d = min(d, cast(hi))
    span = (hi - lo) if lo is not None and hi is not None else None
    log_like = not is_int and lo is not None and hi is not None and lo > 0 and hi / lo > 1000
    small = span is not None and (span <= 512 if is_int else span <= 100)  # wider ranges: type the value
    use_slider = hint == "slider" or (hint != "number" and small and not log_like)
    if use_slider:
        step = 1 if is_int else _nice_step(float(span))
        lo_v, hi_v = cast(lo), cast(hi)
        if not is_int:
            d = round(d / step) * step if d not in (lo_v, hi_v) else d
            d = min(max(d, lo_v), hi_v)
        return box.slider(label, lo_v, hi_v, d, step=step, help=helptext, key=k)
    fmt = None if is_int else "%g"
    step = 1 if is_int else (abs(d) / 10 if d else 0.01)
    return cast(
        box.number_input(
            label,
            min_value=cast(lo) if lo is not None else None,
            max_value=cast(hi) if hi is not None else None,
            value=d,
            step=step,
            format=fmt,
            help=helptext,
            key=k,
        )
    )


def _nice_step(span: float) -> float:
    raw = span / 100.0
    if raw <= 0:
        return 0.01
    e = math.floor(math.log10(raw))
    return float(10.0**e)


# ---------------------------------------------------------------------------------------------------- path kinds
# What a shared dashboard may read: packaged sets, this session's uploads, files under the data roots. Values are
# server paths, but the pickers show only names (root-relative or "upload: <file name>"), and `check_path_params`
# re-checks every value before a run, so a crafted request cannot point anywhere else.

_UPLOAD_TYPES = {
    "image": sorted(s.lstrip(".") for s in dataroots.IMAGE_SUFFIXES),
    "images": sorted(s.lstrip(".") for s in dataroots.IMAGE_SUFFIXES),
    "checkpoint": sorted(s.lstrip(".") for s in dataroots.CHECKPOINT_SUFFIXES),
}


def dataset_options(net: Any) -> list[tuple[str, str]]:
    """(value, shown name) of every dataset this session may use: the model's default, Fashion-MNIST (when
    installed), the packaged photo sets, folders under the data roots and this session's uploaded folders."""
    from accel.datasets import default_spec
    from accel.fashion_mnist import find_fashion_mnist
    from accel.images import FOOLBOX_KINDS, foolbox_photos, sample_images

    auto = "the model's own"
    if net is not None:
        with contextlib.suppress(Exception):  # a backbone without preprocessing facts: keep the plain label
            auto = f"the model's own ({default_spec(net)})"
    opts: list[tuple[str, str]] = [("auto", auto)]
    if find_fashion_mnist() is not None:
        opts += [("fashion_mnist:test", "Fashion-MNIST test"), ("fashion_mnist:train", "Fashion-MNIST train")]
    for kind in FOOLBOX_KINDS:
        n = len(foolbox_photos(kind))
        if n:
            opts.append((f"foolbox:{kind}", f"foolbox {kind} photos ({n})"))
    n = len(sample_images())
    if n:
        opts.append(("samples", f"sample photos ({n})"))
    opts += [(f"folder:{path}", f"{name} (data root)") for name, path in dataroots.list_folders()]
    opts += list(session_space().uploads.get("dataset", {}).items())
    return opts


def file_options(kind: str, presets: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(value, shown name) of the files a path parameter of `kind` may name: its presets, files under the data
    roots with a fitting suffix, and this session's uploads of that kind."""
    suffixes = dataroots.CHECKPOINT_SUFFIXES if kind == "checkpoint" else dataroots.IMAGE_SUFFIXES
    opts = [(p, p) for p in presets]
    opts += [(str(path), f"{name} (data root)") for name, path in dataroots.list_files(suffixes)]
    opts += list(session_space().uploads.get("images" if kind == "image" else kind, {}).items())
    return opts


def _upload(box: Any, kind: str, label: str, key: str) -> str | None:
    """An uploader for a path parameter; the uploaded file is kept in the session's folder and its path returned."""
    space = session_space()
    if kind == "dataset":
        up = box.file_uploader(
            f"{label}: or upload a folder of images as .zip (used when present)",
            type=["zip"],
            key=f"{key}.upload",
            help="a .zip of image files, or of one subfolder per class (labels come from the folder names)",
        )
        if up is None:
            return None
        folder = dataroots.extract_zip(up.getvalue(), space.dir / "datasets", up.name)
        value = f"folder:{folder}"
        space.add_upload("dataset", value, up.name)
        return value
    up = box.file_uploader(
        f"{label}: or upload a file (used when present)", type=_UPLOAD_TYPES.get(kind), key=f"{key}.upload"
    )
    if up is None:
        return None
    path = dataroots.save_upload(
        up.getvalue(),
        space.dir / "files",
        up.name,
        dataroots.CHECKPOINT_SUFFIXES if kind == "checkpoint" else dataroots.IMAGE_SUFFIXES,
        what=label,
    )
    space.add_upload("images" if kind == "image" else kind, str(path), up.name)
    return str(path)


def _path_control(
    box: Any, spec: Any, info: Any, net: Any, default: Any, k: str, label: str, helptext: str | None
) -> Any:
    """The control of a path-like parameter: a choice of what this server allows, and an upload that wins when
    present. Never a free-text field."""
    kind = info.kind
    if kind == "dataset":
        opts = dict(dataset_options(net))
        values = list(opts)
        idx = values.index(default) if default in values else 0
        choice = box.selectbox(label, values, index=idx, format_func=opts.get, help=helptext, key=k)
        return _upload(box, kind, label, k) or choice
    if kind == "images":
        opts = dict(file_options(kind, info.presets))
        wanted = [v.strip() for v in str(default or "").split(",") if v.strip() in opts]
        chosen = box.multiselect(
            label, list(opts), default=wanted, format_func=opts.get, help=helptext, key=k
        )
        up = _upload(box, kind, label, k)
        return ",".join([*chosen, *([up] if up and up not in chosen else [])])
    empty = NONE if default is None else "(the method's default)" if default == "" else None
    opts = dict(file_options(kind, info.presets))
    values = ([default] if empty else []) + [v for v in opts if v != default]
    if not empty and default not in values and default not in (None, ""):
        values.insert(0, default)
    names = {**opts, **({default: empty} if empty else {})}
    idx = values.index(default) if default in values else 0
    choice = box.selectbox(
        label, values, index=idx, format_func=lambda v: names.get(v, str(v)), help=helptext, key=k
    )
    return _upload(box, kind, label, k) or choice


def check_path_params(spec: Any, values: dict[str, Any], net: Any = None) -> dict[str, Any]:
    """Refuse any path-like value that is not a packaged name, one of this session's uploads or a file/folder under
    the data roots (one message whether or not it exists); folder values come back as their real paths."""
    out = dict(values)
    extra = [session_space().dir] if any(i.is_path for i in spec.param_infos()) else []
    for info in spec.param_infos():
        if not info.is_path or info.name not in out:
            continue
        v = out[info.name]
        if v is None or v == "" or v == info.default:
            continue
        if not isinstance(v, str):
            raise accel.BadInput(
                f"{spec.name}: parameter {info.name!r} takes a name from the list or an upload"
            )
        if info.kind == "dataset":
            base, sep, lim = v.partition("#limit=")
            if base in {val for val, _ in dataset_options(net)}:
                continue
            folder = base[len("folder:") :] if base.startswith("folder:") else base
            real = dataroots.resolve_folder(folder, what="dataset", extra=extra)
            out[info.name] = f"folder:{real}{sep}{lim}"
        elif info.kind in ("image", "images", "checkpoint", "file"):
            items = [x.strip() for x in v.split(",")] if info.kind == "images" else [v]
            suffixes = {
                "checkpoint": dataroots.CHECKPOINT_SUFFIXES,
                "file": None,
            }.get(info.kind, dataroots.IMAGE_SUFFIXES)
            resolved = []
            for item in items:
                if item in info.presets:
                    resolved.append(item)
                    continue
                resolved.append(
                    str(dataroots.resolve_file(item, what=info.kind, suffixes=suffixes, extra=extra))
                )
            out[info.name] = ",".join(resolved)
    return out


# ---------------------------------------------------------------------------------------------------- display


def meta_line(meta: dict[str, Any]) -> str:
    """Wall time, backend and passes of a result, for captions under maps and images."""
    parts = []
    if isinstance(meta.get("wall_s"), (int, float)):
        parts.append(f"{meta['wall_s']:.2f} s")
    if meta.get("backend"):
        parts.append(str(meta["backend"]))
    if isinstance(meta.get("passes"), (int, float)):
        parts.append(f"{int(meta['passes'])} passes")
    t = meta.get("target")
    if isinstance(t, dict) and t.get("index") is not None:
        lab = f" {t['label']}" if t.get("label") else ""
        prob = f" (p={t['probability']:.2f})" if isinstance(t.get("probability"), float) else ""
        parts.append(f"target {t['index']}{lab}{prob}")
    elif isinstance(t, (int, np.integer)):
        parts.append(f"target {int(t)}")
    return " · ".join(parts)


def target_index(meta: dict[str, Any]) -> int | None:
    """The class index a result explains (meta "target" as an int or as {"index": ...})."""
    t = meta.get("target")
    if isinstance(t, dict):
        t = t.get("index")
    return int(t) if isinstance(t, (int, np.integer)) else None


def show_result(
    res: Result, *, caption: str = "", alpha: float = 0.5, width: Any = None, key: str = ""
) -> None:
    """Display any Result by kind: maps as overlays, images/grids/patches as pictures, points as a scatter. The caption
    (labels may come from an uploaded model or dataset) is shown as text, server paths hidden."""
    cap = shown(" · ".join(x for x in (caption, meta_line(res.meta)) if x))
    if res.kind == "points":
        st.plotly_chart(points_figure(res), key=key or None)
        if cap:
            st.caption(cap)
        return
    try:
        img = res.overlay(alpha=alpha) if res.kind == "map" else res.to_image()
    except ValueError as e:
        st.warning(shown(f"cannot display this {res.kind} result: {e}"))
        return
    img = fit_width(img)
    st.image(img, caption=cap or None, width=width or ("stretch" if img.width >= 640 else "content"))


def fit_width(img: Image.Image, max_side: int = 900) -> Image.Image:
    """Upscale tiny images (nearest neighbour) so 28x28 inputs stay visible; never exceed `max_side`."""
    w, h = img.size
    if max(w, h) >= 256:
        return img
    f = max(1, min(256 // max(w, h), max_side // max(w, h)))
    return img.resize((w * f, h * f), Image.NEAREST)


def shared_scale(
    maps: list[np.ndarray], mode: str, signed: bool
) -> tuple[list[np.ndarray], float, float, str]:
    """One colour scale for several attribution maps: `mode` "normalised" divides each map by its 99th
    percentile of |values| (a common 0..1 scale), "absolute" keeps raw values under one global min/max."""
    out = [
        np.asarray(m, dtype=np.float32) if signed else np.abs(np.asarray(m, dtype=np.float32)) for m in maps
    ]
    if mode == "normalised":
        res = []
        for m in out:
            p = float(np.percentile(np.abs(m), 99)) if m.size else 1.0
            res.append(np.clip(m / (p if p > 0 else 1.0), -1.0, 1.0))
        out = res
        lo, hi = (-1.0, 1.0) if signed else (0.0, 1.0)
    else:
        hi = max((float(np.max(np.abs(m))) for m in out if m.size), default=1.0) or 1.0
        lo = -hi if signed else min((float(np.min(m)) for m in out if m.size), default=0.0)
    cmap = "RdBu_r" if signed else "jet"
    return out, lo, hi, cmap


def colorbar_image(lo: float, hi: float, cmap: str, width: int = 512, height: int = 14) -> Image.Image:
    """A horizontal colour bar for the shared scale."""
    ramp = np.tile(np.linspace(lo, hi, width, dtype=np.float32), (height, 1))
    return Image.fromarray(colorize(ramp, cmap, lo, hi))


def loss_figure(losses: Sequence[float], title: str = "loss") -> go.Figure:
    """A small line plot of an optimisation's loss curve."""
    y = np.asarray(losses, dtype=np.float64)
    fig = go.Figure(go.Scatter(x=np.arange(len(y)), y=y, mode="lines", name=title))
    fig.update_layout(height=220, margin=dict(l=10, r=10, t=30, b=10), title=title, xaxis_title="step")
    return fig


def points_figure(
    res: Result,
    *,
    labels: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    highlight: Sequence[int] = (),
    marker_size: float | None = None,
) -> go.Figure:
    """A WebGL scatter (go.Scattergl) of a points result coloured by label; customdata holds the point index."""
    pts = np.asarray(res.data, dtype=np.float32)
    n = len(pts)
    if labels is None:
        labels = _find(res, ("labels", "label", "y"))
    classes = classes or _find(res, ("classes", "class_names", "label_names"))
    size = marker_size or (6 if n <= 2000 else 4 if n <= 20000 else 2.5)
    idx = np.arange(n)
    fig = go.Figure()
    lab = np.asarray(labels).astype(np.int64) if labels is not None and len(labels) == n else None
    if lab is not None and len(np.unique(lab)) <= 20:
        for c in np.unique(lab):
            sel = lab == c
            name = html_text(classes[c] if classes is not None and 0 <= c < len(classes) else str(c))
            fig.add_trace(
                go.Scattergl(
                    x=pts[sel, 0],
                    y=pts[sel, 1],
                    mode="markers",
                    name=name,
                    customdata=idx[sel],
                    text=[name]
                    * int(sel.sum()),  # class names come from dataset folders: escaped, never a template
                    marker=dict(size=size, opacity=0.8),
                    hovertemplate="%{text}<br>#%{customdata}<extra></extra>",
                )
            )
    else:
        fig.add_trace(
            go.Scattergl(
                x=pts[:, 0],
                y=pts[:, 1],
                mode="markers",
                customdata=idx,
                marker=dict(
                    size=size, color=lab if lab is not None else None, colorscale="Turbo", opacity=0.8
                ),
                hovertemplate="#%{customdata}<extra></extra>",
            )
        )
    if len(highlight):
        h = np.asarray(highlight, dtype=np.int64)
        fig.add_trace(
            go.Scattergl(
                x=pts[h, 0],
                y=pts[h, 1],
                mode="markers",
                name="selected",
                customdata=h,
                marker=dict(size=14, symbol="circle-open", color="black", line=dict(width=2)),
                hoverinfo="skip",
            )
        )
    fig.update_layout(
        height=560, margin=dict(l=10, r=10, t=30, b=10), legend=dict(itemsizing="constant"), dragmode="pan"
    )
    return fig


def _find(res: Result, names: Sequence[str]) -> Any:
    for src in (res.extras, res.meta):
        for k in names:
            if k in src and src[k] is not None:
                return src[k]
    return None


def image_row(
    images: Sequence[Image.Image], captions: Sequence[str], ncols: int = 6, width: Any = "stretch"
) -> None:
    """A row-wrapped grid of images with captions (shown as text: they often hold dataset labels or file names)."""
    if not images:
        return
    for i in range(0, len(images), ncols):
        cols = st.columns(ncols)
        for col, im, cap in zip(cols, images[i : i + ncols], captions[i : i + ncols]):
            col.image(im, caption=shown(cap) if cap else None, width=width)
