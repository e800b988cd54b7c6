"""Method specs: every technique declares its parameters once (a dataclass with bounds and help) and registers here.

The CLI flags and the dashboard controls are generated from these declarations, and `accel.run` validates
user values against them, so a bad value is refused with the same message everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import pkgutil
import reprlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_type_hints

from .errors import BadInput
from .result import LossRecord, Result

FAMILIES = ("inspect", "attribute", "synthesize", "concepts")

log = logging.getLogger("convlens.registry")

# What a parameter IS, so front ends pick a control (and a trust rule) from the kind, never from the name.
KINDS: dict[str, str] = {
    "layer": "a layer name from net.layers()",
    "layers": "several layer names from net.layers(), comma-separated, shallow to deep",
    "tap": "a feature vector: 'embedding', 'logits' or a layer name (spatially averaged)",
    "class": "a class index of the network's head",
    "backend": "the forward-pass engine",
    "dataset": "a dataset: packaged photos, Fashion-MNIST, or a folder of images",
    "image": "one image: a packaged or procedural name, or an image file",
    "images": "several images, comma-separated: packaged or procedural names, or image files",
    "checkpoint": "a weights file (.safetensors) a method loads",
    "file": "any other file a method reads",
}
# Kinds whose values name files or folders: a shared dashboard offers only packaged values, uploads and files under
# the configured data roots for them (accel.dataroots); the CLI and the Python API (a local, trusted user) accept
# any path.
PATH_KINDS = frozenset({"dataset", "image", "images", "checkpoint", "file"})
# The forward-pass engines a "backend" parameter may name.
BACKENDS = ("auto", "torch", "onnxruntime")
# The dashboard pages a technique can live on, and the one each family lands on unless it says otherwise.
PAGES = ("compare", "filters", "patches", "embeddings", "synthesis", "inversion", "style", "concepts")
FAMILY_PAGES = {
    "inspect": "filters",
    "attribute": "compare",
    "synthesize": "synthesis",
    "concepts": "concepts",
}


def param(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[Any, ...] | None = None,
    widget: str | None = None,
    limit: str | None = None,
    kind: str | None = None,
    presets: tuple[str, ...] | Callable[[], Sequence[str]] | None = None,
) -> Any:
    """Declare one method parameter: its default, bounds or choices, and the help text shown in CLI and UI.

    `limit` names a configurable resource cap (accel.limits.CAPS) the value must also respect; common names
    (steps, size, batch_size, samples, limit...) get theirs automatically, "" opts out. `kind` says what the value
    is (a key of KINDS: "dataset", "image", "checkpoint", ...), so front ends choose controls by meaning; `presets`
    are the named values the parameter accepts besides what its kind offers (files for a path-like kind, layers for
    a tap): a tuple, or a function listing them."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown parameter kind {kind!r}; known: {sorted(KINDS)}")
    meta = {
        "help": help,
        "min": min,
        "max": max,
        "choices": choices,
        "widget": widget,
        "limit": limit,
        "kind": kind,
        "presets": presets,
    }
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------------- shared parameters
# Parameters many techniques take, declared once: each method writes `target: int | None = TARGET()` and passes only
# what differs (its default, or a help text when the parameter means something narrower there).


def TARGET(
    default: int | None = None,
    help: str = "class index to explain (default: the predicted class)",
    *,
    min: float | None = 0,
) -> Any:
    """A class index of the network's head (kind "class")."""
    return param(default, help, min=min, kind="class")


def LAYER(
    default: str | None = None,
    help: str = "conv layer (default: the backbone's CAM layer, usually the last conv map)",
) -> Any:
    """One layer name from net.layers() (kind "layer")."""
    return param(default, help, kind="layer")


def LAYERS(
    default: str = "", help: str = "comma-separated layer names, shallow to deep (empty = the method's)"
) -> Any:
    """Several layer names from net.layers(), comma-separated (kind "layers")."""
    return param(default, help, kind="layers")


def TAP(
    default: str = "embedding",
    help: str = "feature vector: 'embedding', 'logits', or a layer (spatially averaged)",
    *,
    extra: tuple[str, ...] = (),
) -> Any:
    """The feature vector a dataset method reads (kind "tap"); `extra` names other values it accepts."""
    return param(default, help, kind="tap", presets=extra or None)


def BACKEND(
    default: str = "auto",
    help: str = "forward-pass engine (auto prefers ONNX Runtime)",
    *,
    choices: tuple[str, ...] = BACKENDS,
) -> Any:
    """The engine for forward passes (kind "backend")."""
    return param(default, help, choices=choices, kind="backend")


def DATASET(
    help: str = "dataset: fashion_mnist[:train|test], foolbox:<kind>, samples, or a folder of images ('auto' = the model's)",
) -> Any:
    """A dataset spec, "auto" by default (kind "dataset")."""
    return param("auto", help, kind="dataset")


def SEED(what: str = "") -> Any:
    """A random seed, 0 by default; `what` says what it draws (shown in the help)."""
    return param(0, f"random seed ({what})" if what else "random seed", min=0, max=2**31 - 1)


@dataclass(frozen=True)
class ParamInfo:
    """A flattened view of one declared parameter, for building controls."""

    name: str
    type: Any
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: tuple[Any, ...] | None
    widget: str | None
    limit: str | None = None
    kind: str | None = None
    presets: tuple[str, ...] = ()

    @property
    def is_path(self) -> bool:
        """Whether the value names a file or folder (a shared dashboard restricts where it may point)."""
        return self.kind in PATH_KINDS

    def upper(self) -> float | None:
        """The largest value accepted now: the declared maximum, lowered by the configured resource cap."""
        if not self.limit:
            return self.max
        from .limits import cap_float

        c = cap_float(self.limit)
        return c if self.max is None else min(self.max, c)

    def describe(self, control: bool = False) -> str:
        """The help every front end shows: the help text, then the choices or the accepted range (the cap in force,
        naming its variable), then the default, each once; for a `control` (it shows value, choices) without both."""
        out = self.help.rstrip(". ")
        if self.choices and not control:
            out += f"; one of {', '.join(map(str, self.choices))}"
        hi = self.upper()
        if self.min is not None or hi is not None:
            lo_s = "" if self.min is None else f"{self.min:g}"
            hi_s = "" if hi is None else f"{hi:g}"
            out += f"; {lo_s}..{hi_s}"
            if self.limit and hi is not None and (self.max is None or hi < self.max):
                from .settings import CAPS

                out += f" (cap {CAPS[self.limit].env})"
        if self.default is not None and self.default != "" and not control:
            out += f"; default {self.default}"
        return out


def param_infos(params_cls: type) -> list[ParamInfo]:
    """The declared parameters of a method's dataclass, in declaration order."""
    hints = get_type_hints(params_cls)
    out = []
    for f in dataclasses.fields(params_cls):
        default = _default_of(f)
        m = f.metadata
        out.append(
            ParamInfo(
                f.name,
                hints.get(f.name, Any),
                default,
                m.get("help", ""),
                m.get("min"),
                m.get("max"),
                m.get("choices"),
                m.get("widget"),
                _limit_kind(f.name, m.get("limit")),
                m.get("kind"),
                _presets(m.get("presets")),
            )
        )
    return out


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _presets(declared: Any) -> tuple[str, ...]:
    if declared is None:
        return ()
    values = declared() if callable(declared) else declared
    return tuple(str(v) for v in values)


def _limit_kind(name: str, declared: str | None) -> str | None:
    from .limits import CAPS, PARAM_CAPS

    if declared is not None:
        if declared and declared not in CAPS:
            raise ValueError(f"unknown limit kind {declared!r}; known: {sorted(CAPS)}")
        return declared or None
    return PARAM_CAPS.get(name)


def _coerce(info: ParamInfo, value: Any, method: str) -> Any:
    t = info.type
    where = f"{method}: parameter {info.name!r}"
    origin: tuple[Any, ...] = getattr(t, "__args__", None) or ()
    base = t
    optional = type(None) in origin
    if optional:  # Optional[X] / X | None
        base = next(a for a in origin if a is not type(None))
    if value is None:
        if optional or base is Any:
            return None
        raise BadInput(f"{where} needs a value, not None (default {info.default!r})")
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    value = True
                elif value.lower() in ("0", "false", "no", "off"):
                    value = False
                else:
                    raise ValueError(value)
            elif (
                isinstance(value, bool)
                or type(value).__name__ == "bool_"
                or (isinstance(value, int) and value in (0, 1))
            ):
                value = bool(value)
            else:
                raise ValueError(value)
        elif base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            value = int(value)
        elif base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            try:
                value = float(value)
            except OverflowError:  # float(10**400)
                value = float("inf")
            if value != value or value in (float("inf"), float("-inf")):
                raise BadInput(f"{where} must be a finite number, got {value}")
        elif base is str:
            value = str(value)
    except (TypeError, ValueError) as e:
        if isinstance(e, BadInput):
            raise
        raise BadInput(
            f"{where} expects {getattr(base, '__name__', base)}, got {reprlib.repr(value)}"
        ) from None
    if info.choices is not None and value not in info.choices:
        raise BadInput(f"{where} must be one of {list(info.choices)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if info.min is not None and value < info.min:
            raise BadInput(f"{where} must be >= {info.min}, got {value}")
        if info.max is not None and value > info.max:
            raise BadInput(f"{where} must be <= {info.max}, got {value}")
        if info.limit:
            from .limits import check

            check(info.limit, value, where)
    return value


def validate(params_cls: type, values: dict[str, Any], method: str = "method") -> Any:
    """Build the params dataclass from user values, refusing unknown names and out-of-range values."""
    infos = {i.name: i for i in param_infos(params_cls)}
    unknown = set(values) - set(infos)
    if unknown:
        raise BadInput(f"{method}: unknown parameter(s) {sorted(unknown)}; known: {sorted(infos)}")
    kw = {k: _coerce(infos[k], v, method) for k, v in values.items()}
    return params_cls(**kw)


class Observer:
    """How a long run talks back to whoever started it: progress, cancellation, snapshot images, loss records.

    Every registered `run(net, img, p, obs)` receives one explicitly (accel.run passes a silent one when the caller
    gives none). Front ends subclass it (a progress bar, a dashboard job); the base class ignores everything."""

    def progress(self, frac: float, msg: str = "") -> None:
        """`frac` of the work (0..1) is done; `msg` says what is happening."""

    def should_stop(self) -> bool:
        """Whether the caller asked to stop; a method that can stop early returns what it has so far."""
        return False

    def snapshot(self, img: Any, step: int) -> None:
        """An intermediate image of an optimisation at `step` (callers decide how often to look)."""

    def loss(self, record: LossRecord) -> None:
        """One optimisation step's loss, as it happens (the whole curve also ends up in Result.losses)."""

    def span(self, lo: float, hi: float) -> Observer:
        """This observer with progress mapped onto lo..hi (a part of a longer run)."""
        return _Span(self, lo, hi)

    def callback(self) -> Callable[[float, str], None]:
        """`progress` as a plain callable, for the runtime layer's sweeps."""
        return self.progress


class _Span(Observer):
    def __init__(self, inner: Observer, lo: float, hi: float) -> None:
        self.inner, self.lo, self.hi = inner, float(lo), float(hi)

    def progress(self, frac: float, msg: str = "") -> None:
        self.inner.progress(self.lo + (self.hi - self.lo) * float(frac), msg)

    def should_stop(self) -> bool:
        return self.inner.should_stop()

    def snapshot(self, img: Any, step: int) -> None:
        self.inner.snapshot(img, step)

    def loss(self, record: LossRecord) -> None:
        self.inner.loss(record)


class ProgressObserver(Observer):
    """An observer that forwards progress to a `callback(frac, msg)` (e.g. a progress bar) and ignores the rest."""

    def __init__(self, callback: Callable[[float, str], None]) -> None:
        self._callback = callback

    def progress(self, frac: float, msg: str = "") -> None:
        self._callback(frac, msg)


SILENT = Observer()

RunFn = Callable[[Any, Any, Any, Observer], Result]


def _vgg_layers(net: Any) -> bool:
    """A plain VGG conv stack: `features` holds only 3x3 convolutions (at least eight), ReLUs and pools."""
    from torch import nn

    feats = getattr(getattr(net, "module", None), "features", None)
    kids = list(feats) if isinstance(feats, nn.Sequential) else []
    convs = [k for k in kids if isinstance(k, nn.Conv2d) and k.kernel_size == (3, 3)]
    return len(convs) >= 8 and all(isinstance(k, (nn.Conv2d, nn.ReLU, nn.MaxPool2d)) for k in kids)


@dataclass(frozen=True)
class Capability:
    """A kind of backbone a technique can need (MethodSpec.unmet): what it is, how to tell, and a packaged backbone
    that has it (the one-click switch front ends offer)."""

    name: str
    what: str
    check: Callable[[Any], bool]
    example: str


_GRAD, _HEAD = "gradients through a PyTorch module", "a classifier head (class scores)"
CAPABILITIES = {
    "gradients": Capability("gradients", _GRAD, lambda n: n.differentiable, "efficientnet_lite0"),
    "head": Capability("head", _HEAD, lambda n: bool(n.has_head), "efficientnet_lite0"),
    "vgg_layers": Capability("vgg_layers", "VGG's plain 3x3 conv layers", _vgg_layers, "vgg19"),
}


@dataclass(frozen=True)
class MethodSpec:
    """A registered technique: name, family, parameter dataclass, the paper it implements, its run function, and the
    dashboard page it appears on (`featured`: chosen there by default)."""

    name: str
    family: str
    params: type
    run: RunFn
    paper: str = ""
    summary: str = ""
    needs_image: bool = True
    needs_grad: bool = False
    declared_heavy: bool | None = None
    stoppable: bool = False
    page: str = ""
    featured: bool = False
    requires: tuple[str, ...] = ()

    def unmet(self, net: Any) -> list[Capability]:
        """The backbone capabilities this technique needs that `net` lacks (empty: it can run here): gradients when
        `needs_grad`, a head when it takes a class (a parameter of kind "class"), plus the declared `requires`."""
        head = any(i.kind == "class" for i in self.param_infos())
        needs = dict.fromkeys((*("gradients",) * self.needs_grad, *("head",) * head, *self.requires))
        return [CAPABILITIES[c] for c in needs if not CAPABILITIES[c].check(net)]

    def param_infos(self) -> list[ParamInfo]:
        """The declared parameters, in declaration order."""
        return param_infos(self.params)

    @property
    def heavy(self) -> bool:
        """Whether one run is heavy work that a shared server queues (one at a time per user): optimisation-based
        synthesis and dataset-scale methods (a parameter of kind "dataset"), unless the registration says."""
        if self.declared_heavy is not None:
            return self.declared_heavy
        return self.family == "synthesize" or any(i.kind == "dataset" for i in self.param_infos())


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str,
    family: str,
    params: type,
    *,
    paper: str = "",
    summary: str = "",
    needs_image: bool = True,
    needs_grad: bool = False,
    heavy: bool | None = None,
    stoppable: bool | None = None,
    page: str | None = None,
    featured: bool = False,
    requires: Sequence[str] = (),
) -> Callable[[RunFn], RunFn]:
    """Decorator: register `fn(net, img, p, obs) -> Result` as technique `name` with parameter dataclass `params`.

    `heavy` overrides the default rule of MethodSpec.heavy (synthesis and dataset-scale methods are heavy);
    `stoppable` says the method asks `obs.should_stop()` and returns what it has (default: the synthesis family);
    `page` names the dashboard page it appears on (one of PAGES; default: its family's, FAMILY_PAGES) and
    `featured` has that page choose it by default; `requires`: backbone CAPABILITIES needed beyond gradients."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")
    page = page or FAMILY_PAGES[family]
    if page not in PAGES:
        raise ValueError(f"page must be one of {PAGES}, got {page!r}")

    def deco(fn: RunFn) -> RunFn:
        _REGISTRY[name] = MethodSpec(
            name,
            family,
            params,
            fn,
            paper,
            summary or (fn.__doc__ or "").strip().split("\n")[0],
            needs_image,
            needs_grad,
            heavy,
            family == "synthesize" if stoppable is None else stoppable,
            page,
            featured,
            tuple(CAPABILITIES[r].name for r in requires),  # KeyError: an unknown capability
        )
        return fn

    return deco


_loaded = False
_loading = False
_load_lock = threading.RLock()
_BROKEN: dict[str, str] = {}


def _load_all() -> None:
    """Import every technique module once per process. Thread-safe: the registry counts as loaded only after every
    import has finished, so threads racing on a cold process all wait for the whole list (they used to see a
    half-filled registry and "unknown method"). A module that fails to import is recorded (broken_modules), not
    fatal for the others."""
    global _loaded, _loading
    if _loaded:
        return
    with _load_lock:
        if _loaded or _loading:  # _loading: a technique module asked the registry while it is being imported
            return
        _loading = True
        try:
            for fam in FAMILIES:
                try:
                    sub = importlib.import_module(f"{__package__}.methods.{fam}")
                except ModuleNotFoundError:
                    continue
                for m in pkgutil.iter_modules(sub.__path__):
                    if m.name.startswith("_"):
                        continue
                    name = f"{sub.__name__}.{m.name}"
                    try:
                        importlib.import_module(name)
                    except Exception as e:  # noqa: BLE001 - one broken technique must not hide the others
                        _BROKEN[name] = f"{type(e).__name__}: {e}"
                        log.error("cannot import technique module %s: %s", name, e)
            _loaded = True
        finally:
            _loading = False


def broken_modules() -> dict[str, str]:
    """Technique modules that failed to import, with the error (empty when every technique loaded)."""
    _load_all()
    return dict(_BROKEN)


def methods(family: str | None = None, *, page: str | None = None) -> list[MethodSpec]:
    """All registered techniques (optionally of one family, or on one dashboard page), sorted by family then name."""
    _load_all()
    specs = [
        s
        for s in _REGISTRY.values()
        if (family is None or s.family == family) and (page is None or s.page == page)
    ]
    return sorted(specs, key=lambda s: (FAMILIES.index(s.family), s.name))


def get(name: str) -> MethodSpec:
    """The spec for technique `name`, or BadInput listing the known names."""
    _load_all()
    if name not in _REGISTRY:
        broken = (
            f" ({len(_BROKEN)} technique module(s) failed to import: {', '.join(sorted(_BROKEN))})"
            if _BROKEN
            else ""
        )
        raise BadInput(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}{broken}")
    return _REGISTRY[name]


def run(name: str, net: Any, img: Any = None, *, observer: Observer | None = None, **params: Any) -> Result:
    """Run technique `name` on backbone `net` and image `img` with validated parameters; the one verb every front
    end uses. `observer` receives progress, is asked whether to stop, and gets snapshots and loss records."""
    spec = get(name)
    p = validate(spec.params, params, name)
    if spec.needs_image and img is None:
        raise BadInput(f"{name} needs an input image")
    if spec.needs_grad and not getattr(net, "differentiable", True):
        from .errors import NotDifferentiable

        raise NotDifferentiable(
            f"{name} needs gradients, but backbone {getattr(net, 'name', '?')!r} is forward-only (an ONNX file); "
            "load the PyTorch weights instead"
        )
    t0 = time.perf_counter()
    res = spec.run(net, img, p, observer if observer is not None else SILENT)
    res.meta.setdefault("method", name)
    res.meta.setdefault("params", dataclasses.asdict(p))
    res.meta.setdefault("model", getattr(net, "name", None))
    res.meta.setdefault("wall_s", time.perf_counter() - t0)
    return res
