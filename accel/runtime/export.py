"""torch -> ONNX export of a backbone with its taps as extra outputs and a dynamic batch axis, cached on disk.

The cache key covers the weights hash, taps, input shape, opset and library versions, so a changed model or
library never reuses a stale graph. Every cached graph carries its SHA-256 in a sidecar (`<file>.sha256`) that is
checked on each open; a graph that fails it (tampered or bit-rotted) is rebuilt with a warning, and the runner's
parity check runs on the rebuilt graph. Exports are safe under concurrency: `torch.onnx.export` keeps global
state, so one export runs at a time per process (`TORCH_EXPORT_LOCK`); a lock per target in this process and a
file lock across processes make sure each graph is built once; temporaries carry the process *and* thread id,
and those left by a killed export are removed on the next start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import BadInput
from .cache import cache_dir, clean_stale_temporaries, temp_name

if TYPE_CHECKING:
    from ..backbone import Backbone

EXPORT_VERSION = "2"  # 2: zero Pads folded into Conv (graphopt.fold_pads)
PARITY_RTOL = 1e-4  # allowed max abs difference, relative to max(1, max |torch output|)
DEFAULT_OPSET = 17
RECORD_FORMAT = "convlens-graph-sha256-1"

# torch.onnx.export keeps global state (GLOBALS.in_onnx_export): every export in this process takes this lock.
TORCH_EXPORT_LOCK = threading.RLock()
_TARGET_LOCKS: dict[str, threading.Lock] = {}
_TARGET_LOCKS_LOCK = threading.Lock()


def safe_name(tap: str) -> str:
    """ONNX output name for a tap (graph names cannot hold every character a module path can)."""
    return "t_" + "".join(c if c.isalnum() or c == "_" else "_" for c in tap)


class TapModule(nn.Module):
    """Wraps a backbone so one forward returns every requested tap, in order (what gets exported)."""

    def __init__(self, net: Backbone, taps: list[str]) -> None:
        super().__init__()
        self.net = net
        self.inner = net.require_module("ONNX export")
        self.taps = list(taps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from .forward import forward_taps

        out = forward_taps(self.net, x, self.taps)
        return tuple(out[t] for t in self.taps)


def graph_key(**parts: Any) -> str:
    """Cache key of an exported graph: what it was built from (`parts`: weights, taps, shapes, opset...) plus
    the torch, onnx and ONNX Runtime versions and EXPORT_VERSION, so a changed model or library never reuses it."""
    import onnx

    try:
        import onnxruntime as ort

        ortv = ort.__version__
    except Exception:  # noqa: BLE001
        ortv = "none"
    blob = json.dumps(
        {**parts, "torch": torch.__version__, "onnx": onnx.__version__, "ort": ortv, "v": EXPORT_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def export_key(net: Backbone, taps: list[str], opset: int) -> str:
    """Cache key of a backbone export: weights, taps, input shape, opset, library versions."""
    return graph_key(w=net.weights_hash(), taps=list(taps), shape=list(net.input_shape), opset=opset)


# ----------------------------------------------------------------------------------------------- hash records


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def record_path(path: Path) -> Path:
    """The sidecar holding a cached graph's size and SHA-256."""
    return path.with_name(path.name + ".sha256")


def write_record(path: Path, graph: Path | None = None) -> None:
    """Record the size and SHA-256 of `graph` (default `path`) as the sidecar of `path`, atomically."""
    size, digest = file_digest(graph or path)
    rec = record_path(path)
    tmp = rec.with_name(f".{rec.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_text(
            json.dumps({"format": RECORD_FORMAT, "file": path.name, "bytes": size, "sha256": digest})
        )
        os.replace(tmp, rec)
    finally:
        tmp.unlink(missing_ok=True)


def recorded_problem(path: Path) -> str | None:
    """None if `path` is byte for byte the graph its sidecar records, else what is wrong (for the warning)."""
    try:
        rec = json.loads(record_path(path).read_text())
    except FileNotFoundError:
        return "has no recorded SHA-256"
    except (OSError, ValueError):
        return "has an unreadable SHA-256 record"
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT or rec.get("file") != path.name:
        return "has a SHA-256 record that is not its own"
    try:
        size, digest = file_digest(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or type(e).__name__})"
    if size != rec.get("bytes"):
        return f"is {size} bytes, but {rec.get('bytes')} were recorded when it was built (damaged)"
    if digest != rec.get("sha256"):
        return "does not match the SHA-256 recorded when it was built (tampered or damaged)"
    return None


def discard(path: Path) -> None:
    """Remove a cached graph and its record."""
    path.unlink(missing_ok=True)
    record_path(path).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- temporaries, locks


@contextlib.contextmanager
def build_lock(target: Path, cross_process: bool) -> Iterator[None]:
    """One builder of `target`: a thread lock per target here and (for the cache) an advisory file lock across
    processes."""
    with _TARGET_LOCKS_LOCK:
        lock = _TARGET_LOCKS.setdefault(str(target), threading.Lock())
    with lock:
        if not cross_process:
            yield
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: threads only
            yield
            return
        fd = os.open(target.parent / ".export.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def torch_export(module: nn.Module, args: tuple[Any, ...], path: Path, **kwargs: Any) -> None:
    """`torch.onnx.export(module, args, path, **kwargs)` holding TORCH_EXPORT_LOCK, warnings silenced (the one
    way convlens calls the exporter, whose global state forbids two exports at once in a process)."""
    with TORCH_EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), **kwargs)


# ----------------------------------------------------------------------------------------------- export


def cache_path(net: Backbone, taps: list[str], opset: int = DEFAULT_OPSET) -> Path:
    """Where the cached export of `net` with `taps` lives."""
    return cache_dir() / f"{net.name.replace('/', '_').replace('@', '_')}-{export_key(net, taps, opset)}.onnx"


@dataclass(frozen=True)
class GraphSpec:
    """How to export a module: an example input, the graph's input and output names, their dynamic axes, and
    what to do to the written file before it is checked and recorded (fold pads, stamp metadata)."""

    example: tuple[torch.Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    opset: int = DEFAULT_OPSET
    finish: Callable[[Path], None] | None = None


def export_module(
    module: nn.Module, spec: GraphSpec, target: Path, *, cached: bool = True, rebuild: bool = False
) -> Path:
    """Export `module` to `target` (the one export path of convlens: backbones, fast-style networks, ...).

    A cached target is used only if it matches its recorded SHA-256, else it is rebuilt with a warning;
    `rebuild=True` rebuilds it regardless (asked for when a cached graph fails its parity check). One builder per
    target (threads, and processes for the cache); written to a temporary, checked, then moved into place."""
    if cached and not rebuild and target.exists() and recorded_problem(target) is None:
        return target
    if not cached:
        target.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temporaries(target.parent, prefix=target.name)
    with build_lock(target, cross_process=cached):
        if cached:
            if not rebuild and target.exists():
                problem = recorded_problem(target)
                if problem is None:
                    return target  # another thread or process built it while we waited
                warnings.warn(f"ONNX cache entry {target.name} {problem}; rebuilding it", stacklevel=3)
            discard(target)
        _build(module, spec, target, record=cached)
    return target


def export_backbone(
    net: Backbone,
    taps: list[str],
    opset: int = DEFAULT_OPSET,
    out: Path | None = None,
    *,
    rebuild: bool = False,
) -> Path:
    """Export `net` with `taps` as outputs (cached unless `out` is given); returns the .onnx path.

    A cached graph is used only if it matches its recorded SHA-256, else it is rebuilt with a warning;
    `rebuild=True` rebuilds it regardless (the runner asks for that when a cached graph fails its parity check)."""
    if not taps:
        raise BadInput("export needs at least one tap (e.g. 'logits')")
    if len(set(taps)) != len(taps):
        raise BadInput(f"duplicate taps in {taps}")
    from .graphopt import fold_pads

    def finish(tmp: Path) -> None:
        fold_pads(tmp)
        _stamp_metadata(tmp, net, taps)

    names = [safe_name(t) for t in taps]
    spec = GraphSpec(
        example=(torch.zeros(2, *net.input_shape),),
        input_names=["input"],
        output_names=names,
        dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
        opset=opset,
        finish=finish,
    )
    target = Path(out) if out is not None else cache_path(net, taps, opset)
    return export_module(TapModule(net, taps).eval(), spec, target, cached=out is None, rebuild=rebuild)


def _build(module: nn.Module, spec: GraphSpec, target: Path, record: bool) -> None:
    """Export into a unique temporary, finish it (fold pads, stamp metadata), check it, record its hash, then
    move it into place."""
    tmp = temp_name(target)
    try:
        torch_export(
            module,
            spec.example,
            tmp,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=spec.dynamic_axes,
            opset_version=spec.opset,
            do_constant_folding=True,
            dynamo=False,
        )
        if spec.finish is not None:
            spec.finish(tmp)
        _check_written(tmp, target)
        if record:
            write_record(target, graph=tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise BadInput(
            f"could not write the ONNX export {target.name} ({e.strerror or type(e).__name__}); check the free "
            "space and permissions of its folder"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_written(tmp: Path, target: Path) -> None:
    """The exported file must be a valid ONNX model before it takes the target's name."""
    import onnx

    try:
        onnx.checker.check_model(str(tmp))
    except Exception as e:  # noqa: BLE001 - onnx raises many types
        raise BadInput(f"the ONNX export {target.name} came out invalid ({type(e).__name__})") from None


def _stamp_metadata(path: Path, net: Backbone, taps: list[str]) -> None:
    """Record the preprocessing convention and labels in the model, so the file is self-describing."""
    import dataclasses

    import onnx

    m = onnx.load(str(path))
    labels: object = None
    if net.labels is not None:
        from ..backbone import imagenet_labels

        labels = "imagenet" if net.labels == imagenet_labels() else net.labels
    props = {
        "convlens.model": net.name,
        "convlens.preproc": json.dumps(dataclasses.asdict(net.pre)),
        "convlens.labels": json.dumps(labels),
        "convlens.taps": json.dumps(taps),
    }
    for k, v in props.items():
        e = m.metadata_props.add()
        e.key, e.value = k, v
    onnx.save(m, str(path))


# ----------------------------------------------------------------------------------------------- parity, sessions


class ParityError(BadInput):
    """An ONNX export's outputs disagree with the torch module it was exported from (refused, never used)."""


def parity_gap(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(max abs difference, scale) of an ONNX output against torch's: the check passes when the difference is at
    most a tolerance times the scale, max(1, max |torch output|) (NaN differences never pass)."""
    d = float(np.abs(got[: len(ref)].astype(np.float64) - ref).max()) if ref.size else 0.0
    scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    return d, scale


def module_parity(module: nn.Module, session: Any, probes: Sequence[np.ndarray]) -> float:
    """Largest parity gap relative to its scale (`parity_gap`) between `module` and an ONNX Runtime session of
    its export over `probes` (inputs of the graph's one input), every output compared."""
    from .session import run_session

    name = session.get_inputs()[0].name
    worst = 0.0
    for x in probes:
        got = run_session(session, {name: np.ascontiguousarray(x, dtype=np.float32)}, "parity check")
        with torch.no_grad():
            ref = module(torch.from_numpy(np.asarray(x, dtype=np.float32)))
        refs = [r.float().numpy() for r in (ref if isinstance(ref, (tuple, list)) else (ref,))]
        if len(got) != len(refs) or any(g.shape != r.shape for g, r in zip(got, refs)):
            return float("inf")
        for g, r in zip(got, refs):
            d, scale = parity_gap(r, g)
            worst = max(worst, d / scale) if d == d else float("inf")
    return worst


def compare_to_torch(
    net: Backbone, taps: Sequence[str], x: np.ndarray, outs: Sequence[np.ndarray], meta: dict[str, Any]
) -> None:
    """Parity: ONNX outputs `outs` for input `x` against the torch module, per tap (max abs diff recorded in
    `meta`); ParityError past PARITY_RTOL relative to max(1, |torch output|)."""
    from .forward import forward_taps

    with torch.no_grad():
        ref = forward_taps(net, torch.from_numpy(x), taps)
    worst = 0.0
    for t, o in zip(taps, outs):
        r = ref[t].float().numpy()
        if o.shape[1:] != r.shape[1:]:
            raise ParityError(
                f"ONNX export of {net.name} gives tap {t!r} the shape {o.shape[1:]}, torch "
                f"{r.shape[1:]}; refusing to use it"
            )
        d, scale = parity_gap(r, o)
        worst = max(worst, d / scale) if d == d else float("inf")
        meta.setdefault("parity_max_abs", {})[t] = d
        if not d <= PARITY_RTOL * scale:  # NaN differences fail too
            raise ParityError(
                f"ONNX export of {net.name} disagrees with torch on tap {t!r}: max abs diff {d:.3g} "
                f"(allowed {PARITY_RTOL * scale:.3g}); refusing to use it"
            )
    meta["parity_rel"] = worst


def check_file_parity(net: Backbone, taps: Sequence[str], path: str | Path) -> dict[str, Any]:
    """Parity of an exported .onnx file (e.g. `convlens export --out`) against `net`'s torch module on the
    same probe input the runner uses; returns {"parity_max_abs": {tap: diff}, "parity_rel": worst}, or
    ParityError (a BadInput) if it disagrees."""
    from .session import make_session, run_session

    sess, _, _ = make_session(path, ("CPUExecutionProvider",))
    g = torch.Generator().manual_seed(0)
    x = net.normalize(torch.rand(2, 3, net.pre.size, net.pre.size, generator=g)).numpy()
    outs = run_session(sess, {sess.get_inputs()[0].name: x}, f"checking {Path(path).name}")
    meta: dict[str, Any] = {}
    compare_to_torch(net, list(dict.fromkeys(taps)), x, outs, meta)
    return meta


@dataclass(frozen=True)
class VerifiedGraph:
    """A cached export opened in ONNX Runtime after its parity check: file, session, provider, worst gap."""

    path: Path
    session: Any
    provider: str
    parity: float


_VERIFIED: dict[str, VerifiedGraph] = {}
_VERIFIED_LOCK = threading.Lock()


def verified_graph(
    module: nn.Module,
    target: Path,
    spec: GraphSpec,
    probes: Sequence[np.ndarray],
    tol: float = PARITY_RTOL,
    providers: tuple[str, ...] | None = None,
) -> VerifiedGraph:
    """Export `module` to the cache file `target` (or reuse it), open it and check parity on `probes`, once per
    process and file: a cached graph that disagrees is rebuilt once with a warning, a fresh one that disagrees is
    refused (`ParityError`). The one export + parity + session path for modules that are not backbones with taps
    (fast-style networks); backbones go through the runner pool, which checks parity the same way."""
    from .session import make_session

    key = f"{target}|{providers}"
    with _VERIFIED_LOCK:
        got = _VERIFIED.get(key)
    if got is not None:
        return got
    module = module.eval()
    for attempt in range(2):
        path = export_module(module, spec, target, rebuild=attempt > 0)
        sess, provider, _ = make_session(path, providers)
        gap = module_parity(module, sess, probes)
        if gap <= tol:
            got = VerifiedGraph(path, sess, provider, gap)
            with _VERIFIED_LOCK:
                _VERIFIED[key] = got
            return got
        if attempt == 0:
            warnings.warn(
                f"the cached ONNX export {target.name} failed its parity check (gap {gap:.3g}, allowed {tol:.3g}); "
                "rebuilding it",
                stacklevel=2,
            )
    discard(target)
    raise ParityError(
        f"the ONNX export {target.name} disagrees with its torch module (gap {gap:.3g} relative to the output "
        f"scale, allowed {tol:.3g}), also after rebuilding it; refusing to use it"
    )
