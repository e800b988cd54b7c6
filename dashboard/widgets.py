"""Controls generated from a method's parameter declaration.

`param_controls` is the one place that turns `spec.param_infos()` into Streamlit widgets, so a technique that
lands in `accel.list_methods()` gets its controls with no page-specific code. Controls are chosen by the parameter's
declared kind (layer, layers, tap, class, backend, dataset, image, checkpoint), never by its name. Path-like kinds
offer only what this server allows (packaged sets, this session's uploads, files under the data roots:
accel.dataroots); `check_path_params` re-checks every path value before a run."""

from __future__ import annotations

import contextlib
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

import accel
from accel import dataroots
from accel.registry import MethodSpec, ParamInfo

from .state import session_space
from .ui import unset

AUTO = "(auto)"
PREDICTED = "(top-1 prediction)"
NONE = "(none)"

# ---------------------------------------------------------------------------------------------------- controls


def _base_type(t: Any) -> tuple[Any, bool]:
    """(X, optional) for X, X | None, Optional[X]."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), len(args) < len(typing.get_args(t))
    return t, False


def _layer_options(net: Any, info: ParamInfo) -> list[str]:
    """The layer names a layer-like parameter offers: its choices, else net.layers() and the embedding/logits taps
    the backbone has, then the declaration's own named values."""
    if info.choices:
        return [str(c) for c in info.choices]
    names = [li.name for li in net.layers()]
    taps = [
        t
        for t in ("embedding", "logits")
        if t == "embedding" and net.embedding_layer or t == "logits" and net.has_head
    ]
    extra = [t for t in (*taps, *info.presets) if t not in names]
    return [*names, *dict.fromkeys(extra)]


def _layer_label(net: Any) -> Callable[[Any], str]:
    """How a layer shows in a picker: name, kind, output shape and receptive field."""
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


@dataclass
class Control:
    """One parameter's control being built: where it goes, its declaration and default, its widget key."""

    box: Any
    spec: MethodSpec
    info: ParamInfo
    net: Any
    default: Any
    key: str
    backend: str | None = None

    @property
    def label(self) -> str:
        """The parameter's name as a label."""
        return self.info.name.replace("_", " ")

    @property
    def help(self) -> str | None:
        """The declared help with the accepted range and the cap in force (ParamInfo.describe), without the default
        or the choices the control itself shows."""
        return self.info.describe(control=True) or None

    @property
    def base(self) -> tuple[Any, bool]:
        """(value type, optional) of the declaration."""
        return _base_type(self.info.type)

    @property
    def has_layers(self) -> bool:
        """Whether the backbone can list its layers for a picker (a PyTorch module)."""
        return self.net is not None and self.net.module is not None


# What a kind's control returns when it does not apply here (no backbone to list from): the generic one does.
_NO_CONTROL = object()


def _layer_control(c: Control) -> Any:
    """Kinds layer and tap: a picker of the backbone's layers (and taps), "(method default)" for an empty default."""
    if not c.has_layers:
        return _NO_CONTROL
    opts = _layer_options(c.net, c.info)
    auto = c.default in (None, "", "auto") or c.default not in opts
    choices = [AUTO, *opts] if auto else opts
    idx = 0 if auto else choices.index(c.default)
    v = c.box.selectbox(c.label, choices, index=idx, format_func=_layer_label(c.net), help=c.help, key=c.key)
    return c.default if v == AUTO else v


def _layers_control(c: Control) -> Any:
    """Kind layers: several of the backbone's layers, in network order, as the comma-separated value methods take
    (none chosen = the method's default)."""
    if not c.has_layers:
        return _NO_CONTROL
    opts = [li.name for li in c.net.layers()]
    wanted = [v.strip() for v in str(c.default or "").split(",") if v.strip() in opts]
    chosen = c.box.multiselect(
        c.label,
        opts,
        default=wanted,
        format_func=_layer_label(c.net),
        placeholder="(method default)",
        help=c.help,
        key=c.key,
    )
    return ",".join(sorted(chosen, key=opts.index))


def _class_control(c: Control) -> Any:
    """Kind class: a picker of the head's classes by label ("top-1 prediction" when the default is None); the
    default as is for a backbone without a head."""
    base, _ = c.base
    if base not in (int, typing.Any) or c.info.choices:
        return _NO_CONTROL
    n = c.net.num_classes if c.net is not None and c.net.has_head else None
    if not n:
        return c.default
    names = c.net.labels or [str(i) for i in range(n)]
    opts: list[Any] = ([PREDICTED] if c.default is None else []) + list(range(n))
    idx = 0 if c.default is None else opts.index(int(c.default)) if int(c.default) in opts else 0
    v = c.box.selectbox(
        c.label,
        opts,
        index=idx,
        format_func=lambda i: i if isinstance(i, str) else f"{i}: {names[i]}",
        help=c.help,
        key=c.key,
    )
    return None if v == PREDICTED else int(v)


_BY_KIND: dict[str, Callable[[Control], Any]] = {
    "layer": _layer_control,
    "tap": _layer_control,
    "layers": _layers_control,
    "class": _class_control,
}


def _plain_control(c: Control) -> Any:
    """By type: choices a selectbox (a backend one defaults to the sidebar's engine), bools a checkbox, numbers a
    slider or number box within the bounds and caps, strings a text field, anything else JSON."""
    base, optional = c.base
    hint = (c.info.widget or "").lower()
    if c.info.choices:
        opts = list(c.info.choices)
        default = c.backend if c.info.kind == "backend" and c.backend in opts else c.default
        idx = opts.index(default) if default in opts else 0
        return c.box.selectbox(c.label, opts, index=idx, help=c.help, key=c.key)
    if base is bool:
        return c.box.checkbox(c.label, value=bool(c.default), help=c.help, key=c.key)
    if base in (int, float):
        return _number(c.box, c.info, base, c.default, c.label, c.help, c.key, hint)
    if base is str or c.default is None or isinstance(c.default, str):
        text = c.box.text_area if hint in ("textarea", "text_area") else c.box.text_input
        v = text(c.label, value="" if c.default is None else str(c.default), help=c.help, key=c.key)
        return None if (optional and v == "" and c.default is None) else v
    raw = c.box.text_input(f"{c.label} (JSON)", value=json.dumps(c.default), help=c.help, key=c.key)
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise accel.BadInput(f"{c.spec.name}: parameter {c.info.name!r} must be JSON, got {raw!r}") from None


def param_controls(
    spec: MethodSpec,
    net: Any,
    *,
    key: str,
    skip: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
    backend: str | None = None,
    container: Any = None,
) -> dict[str, Any]:
    """Build one widget per declared parameter of `spec` and return {name: value} ready for `accel.run`.

    The control follows the declared kind: a layer or tap gets a picker of `net.layers()`, several layers a
    multi-picker, a class a picker from `net.labels`, a backend the sidebar's choice as default, and path-like kinds
    (dataset, image, images, checkpoint) a choice of what this server allows plus an upload; other parameters get
    one by type (bounds become slider/number limits, choices a selectbox, bools a checkbox)."""
    values: dict[str, Any] = {}
    for info in spec.param_infos():
        if info.name in skip:
            continue
        c = Control(
            container or st,
            spec,
            info,
            net,
            (defaults or {}).get(info.name, info.default),
            f"{key}.{spec.name}.{info.name}",
            backend,
        )
        if info.is_path:
            values[info.name] = _path_control(c)
            continue
        v = _BY_KIND.get(info.kind or "", lambda _c: _NO_CONTROL)(c)
        values[info.name] = _plain_control(c) if v is _NO_CONTROL else v
    return check_path_params(spec, values, net)


def _number(
    box: Any,
    info: ParamInfo,
    base: type,
    default: Any,
    label: str,
    helptext: str | None,
    k: str,
    hint: str,
) -> Any:
    """A slider for small bounded ranges, else a number box; bounded by the declaration and the server's cap."""
    lo, hi = info.min, info.upper()  # the server's configured cap (accel.limits) bounds the control too
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
    if use_slider and lo is not None and hi is not None:
        step = 1 if is_int else _nice_step(float(hi - lo))
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


def _path_control(c: Control) -> Any:
    """The control of a path-like parameter: a choice of what this server allows, and an upload that wins when
    present. Never a free-text field."""
    kind, default, label = c.info.kind or "file", c.default, c.label
    if kind == "dataset":
        opts = dict(dataset_options(c.net))
        values = list(opts)
        idx = values.index(default) if default in values else 0
        # keyed by the backbone too: switching model starts from that model's default dataset (Fashion-MNIST for
        # a Fashion-MNIST model), not the choice made for the previous one
        k = f"{c.key}@{c.net.name}" if c.net is not None else c.key
        choice = c.box.selectbox(label, values, index=idx, format_func=opts.get, help=c.help, key=k)
        return _upload(c.box, kind, label, c.key) or choice
    if kind == "images":
        opts = dict(file_options(kind, c.info.presets))
        wanted = [v.strip() for v in str(default or "").split(",") if v.strip() in opts]
        chosen = c.box.multiselect(
            label, list(opts), default=wanted, format_func=opts.get, help=c.help, key=c.key
        )
        up = _upload(c.box, kind, label, c.key)
        return ",".join([*chosen, *([up] if up and up not in chosen else [])])
    empty = NONE if default is None else "(the method's default)" if default == "" else None
    opts = dict(file_options(kind, c.info.presets))
    values = ([default] if empty else []) + [v for v in opts if v != default]
    if not empty and default not in values and default not in (None, ""):
        values.insert(0, default)
    names = {**opts, **({default: empty} if empty else {})}
    idx = values.index(default) if default in values else 0
    choice = c.box.selectbox(
        label, values, index=idx, format_func=lambda v: names.get(v, str(v)), help=c.help, key=c.key
    )
    return _upload(c.box, kind, label, c.key) or choice


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


def dataset_choice(box: Any, net: Any, label: str, key: str, default: str | None = None) -> str:
    """A dataset picker for pages that are not a method's form: what this server allows (dataset_options) and a
    .zip upload of class folders that wins when present. Returns a dataset spec (accel.datasets.get)."""
    opts = dict(dataset_options(net))
    values = list(opts)
    idx = values.index(default) if default in values else 0
    choice = box.selectbox(label, values, format_func=opts.get, key=key, **unset(key, index=idx))
    return _upload(box, "dataset", label, key) or str(choice)


def shareable_datasets(net: Any) -> set[str]:
    """Dataset choices a link may carry: what this server offers for `net`, less this session's uploads (those are
    the session's own and never go into a URL)."""
    return {v for v, _ in dataset_options(net)} - set(session_space().uploads.get("dataset", {}))


def dataset_from_link(query: Any, net: Any, key: str, max_images: int) -> None:
    """Apply a link's `?dataset=&limit=` to a page's dataset form (session keys `{key}_source`, `{key}_limit`);
    a dataset this server does not offer is ignored, the limit is clamped to 1..max_images."""
    if query.get("dataset") in shareable_datasets(net):
        st.session_state[f"{key}_source"] = query["dataset"]
    if (query.get("limit") or "").isdigit():
        st.session_state[f"{key}_limit"] = max(1, min(max_images, int(query["limit"])))


def dataset_to_link(query: Any, net: Any, source: str, limit: int) -> None:
    """Write a page's dataset choice into the URL: `?limit=` always, `?dataset=` only where a link may carry it."""
    query.pop("dataset", None)
    if source in shareable_datasets(net):
        query["dataset"] = source
    query["limit"] = str(limit)
