"""ONNX Runtime sessions: provider choice (TensorRT > CUDA > CPU, each only if a session really starts), static
checks of .onnx files, and the boundary where ONNX Runtime's own exceptions become convlens errors.

ONNX Runtime raises its own exception types (`Fail`, `InvalidArgument`, `RuntimeException`, ...) that are not
`RuntimeError` subclasses, so no ordinary handler sees them. Every session start and every `run` in convlens goes
through `make_session` / `run_session`, which turn them into `BadInput` with a cleaned one-line message, or into
`OrtAllocationError` (a `MemoryError`) when ONNX Runtime could not allocate, so the runner halves its batch.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import BadInput

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
QUIET = 4  # ONNX Runtime log severity FATAL: failures are reported by convlens, not printed to stderr

_ALLOC_MARKERS = ("failed to allocate", "bad_alloc", "out of memory", "cannot allocate", "memoryerror")
_STARTED = [0]  # InferenceSessions this process has started through make_session
_STARTED_LOCK = threading.Lock()


class OrtAllocationError(MemoryError):
    """ONNX Runtime could not allocate a buffer; the runner halves its batch on it (a `MemoryError`)."""

    def __init__(self, message: str, requested: int | None = None, setting: str | None = None) -> None:
        super().__init__(message)
        self.requested = requested  # bytes ONNX Runtime asked for, when its message says
        self.setting = setting  # the CONVLENS_* cap that bounds this memory, if any (sandboxed graphs)


def ort_available() -> bool:
    """Whether onnxruntime imports here."""
    try:
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


# ----------------------------------------------------------------------------------------------- error boundary


def clean_ort_message(msg: str, limit: int = 300) -> str:
    """ONNX Runtime's message as one readable line: no status prefix, C++ source location or signature, no
    control characters (it can quote node names from the file), at most `limit` characters."""
    text = " ".join(str(msg).split("\n")[:2]).strip()
    text = re.sub(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*", "", text)
    text = re.sub(
        r"Non-zero status code returned while running (\w+) node\. Name:'[^']*' Status Message:\s*",
        r"in the \1 node: ",
        text,
    )
    # the C++ source location and the signature after it: "/onnxruntime_src/x.cc:360 void* ns::X::Y(size_t) "
    text = re.sub(
        r"/?\S*onnxruntime_src/\S+:\d+\s*(?:(?:[\w*&<>]+\s+)?(?:[\w<>~]+::)+[\w<>~]+\([^()]*\)\s*(?:const\s*)?)?",
        "",
        text,
    )
    text = "".join(c if c.isprintable() else " " for c in text)
    text = re.sub(r"\s+", " ", text).strip(" :")
    return (text[: limit - 3] + "...") if len(text) > limit else (text or "no message")


def is_allocation_failure(msg: str) -> bool:
    """Whether an error message says memory could not be allocated."""
    low = str(msg).lower()
    return any(m in low for m in _ALLOC_MARKERS)


def requested_bytes(msg: str) -> int | None:
    """The buffer size in an ONNX Runtime allocation failure ("requested buffer of size N"), if stated."""
    m = re.search(r"buffer of size (\d+)", str(msg))
    return int(m.group(1)) if m else None


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def ort_error(e: BaseException, what: str, setting: str | None = None) -> Exception:
    """The convlens error for an exception from ONNX Runtime while `what` (e.g. "running model.onnx"):
    `OrtAllocationError` for allocation failures, else `BadInput` with the cleaned message."""
    raw = str(e) or type(e).__name__
    if isinstance(e, MemoryError) or is_allocation_failure(raw):
        n = requested_bytes(raw)
        size = f" ({human_bytes(n)} requested)" if n else ""
        return OrtAllocationError(f"{what}: ONNX Runtime could not allocate memory{size}", n, setting)
    return BadInput(f"{what}: ONNX Runtime failed ({clean_ort_message(raw)})")


def run_session(
    sess: Any, feeds: dict[str, Any], what: str, outputs: Sequence[str] | None = None
) -> list[Any]:
    """`sess.run` with ONNX Runtime's exceptions converted (see `ort_error`)."""
    import onnxruntime as ort

    ro = ort.RunOptions()
    ro.log_severity_level = QUIET
    try:
        return sess.run(list(outputs) if outputs is not None else None, feeds, ro)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - ORT's own types are not RuntimeError subclasses
        raise ort_error(e, what) from None


# ----------------------------------------------------------------------------------------------- static checks


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """Parse an .onnx file (without external data) into a ModelProto, or BadInput naming the file."""
    import onnx

    p = Path(path)
    try:
        return onnx.load(str(p), load_external_data=False)
    except OSError as e:
        raise BadInput(f"{p.name}: cannot read the file ({e.strerror or type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError, RecursionError, ValueError, ...
        raise BadInput(
            f"{p.name}: not a valid ONNX model (the file does not parse as an ONNX protobuf: {type(e).__name__}); "
            "export it again or check the upload"
        ) from None


def check_onnx(path: str | os.PathLike[str], model: Any = None) -> None:
    """Refuse files that are not valid ONNX models or do not take one float image batch (BadInput)."""
    import onnx

    p = Path(path)
    if model is None:
        model = load_onnx(p)
    if uses_external_data(model):  # before the checker, which would look the named files up on this server
        raise BadInput(
            f"{p.name}: the model keeps weights in external data files; convlens takes self-contained .onnx "
            "files (save it again with all tensors inside the file)"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx raises many types for corrupt files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = "".join(c if c.isprintable() else " " for c in first)[:160]
        raise BadInput(f"{p.name}: not a valid ONNX model ({type(e).__name__}: {first})") from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BadInput(f"{p.name}: expected one image input, found {len(inputs)} inputs")
    if not model.graph.output:
        raise BadInput(f"{p.name}: the graph has no outputs")
    if not inputs[0].type.HasField("tensor_type"):
        raise BadInput(f"{p.name}: the input must be a float32 tensor (N,C,H,W)")
    t = inputs[0].type.tensor_type
    if t.elem_type != onnx.TensorProto.FLOAT:
        try:
            kind = onnx.TensorProto.DataType.Name(t.elem_type)
        except ValueError:
            kind = f"type {t.elem_type}"
        raise BadInput(f"{p.name}: the image input must be float32, got {kind}")
    if len(t.shape.dim) != 4:
        raise BadInput(f"{p.name}: the image input must have rank 4 (N,C,H,W), got rank {len(t.shape.dim)}")
    c = t.shape.dim[1].dim_value
    if c not in (0, 1, 3):
        raise BadInput(f"{p.name}: input must have 1 or 3 channels (N,C,H,W), got C={c}")
    for o in model.graph.output:
        if not o.type.HasField("tensor_type"):
            raise BadInput(f"{p.name}: every output must be a tensor (sequences and maps are not supported)")


def uses_external_data(model: Any) -> bool:
    """Whether any tensor of the model (initializers, constants, subgraphs) points at an external data file."""
    import onnx

    def external(t: Any) -> bool:
        return t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0

    def graph_uses(g: Any, depth: int = 0) -> bool:
        if depth > 64:  # protobuf limits nesting anyway
            return True
        if any(external(t) for t in g.initializer):
            return True
        if any(external(st.values) or external(st.indices) for st in g.sparse_initializer):
            return True
        for node in g.node:
            for a in node.attribute:
                if (a.HasField("t") and external(a.t)) or any(external(t) for t in a.tensors):
                    return True
                if (a.HasField("g") and graph_uses(a.g, depth + 1)) or any(
                    graph_uses(sub, depth + 1) for sub in a.graphs
                ):
                    return True
        return False

    return graph_uses(model.graph)


def onnx_io_shapes(
    path: str | os.PathLike[str] | None, model: Any = None
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Input shapes (with batch) and output shapes (without batch) of an ONNX model; unknown dims are -1."""
    if model is None:
        if path is None:
            raise BadInput("no ONNX file")
        model = load_onnx(path)
    inits = {i.name for i in model.graph.initializer}

    def dims(v: Any) -> tuple[int, ...]:
        return tuple(d.dim_value if d.dim_value > 0 else -1 for d in v.type.tensor_type.shape.dim)

    ins = [dims(i) for i in model.graph.input if i.name not in inits]
    outs = [dims(o)[1:] for o in model.graph.output]
    return ins, outs


# ----------------------------------------------------------------------------------------------- sessions


def sessions_started() -> int:
    """How many ONNX Runtime sessions `make_session` has started in this process (the pool shares them)."""
    return _STARTED[0]


def gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is loadable (GPU providers cannot start without one)."""
    import ctypes.util

    if settings.get("CONVLENS_FORCE_GPU_PROBE"):
        return True
    return ctypes.util.find_library("cuda") is not None or Path("/dev/nvidiactl").exists()


def default_threads() -> int:
    """Intra-op threads: the cores this process may use (respects affinity and CONVLENS_THREADS)."""
    env = settings.get("CONVLENS_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def provider_options(provider: str, fp16: bool = False) -> dict[str, Any]:
    """Options per GPU provider: TensorRT caches its engines (and timing) next to the ONNX cache, so a model is
    built once per machine, and runs fp16 when asked; CUDA searches conv algorithms exhaustively (batched
    sweeps reuse one shape) and copies in the default stream."""
    if provider == "TensorrtExecutionProvider":
        from .export import cache_dir

        d = cache_dir().parent / "trt"
        d.mkdir(parents=True, exist_ok=True)
        return {
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(d),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(d),
            "trt_fp16_enable": "True" if fp16 else "False",
        }
    if provider == "CUDAExecutionProvider":
        return {"cudnn_conv_algo_search": "EXHAUSTIVE", "do_copy_in_default_stream": "True"}
    return {}


def session_options(threads: int | None = None, optimized_path: str | os.PathLike[str] | None = None) -> Any:
    """SessionOptions as convlens uses them: full graph optimisation, quiet logs, no busy-waiting unless
    CONVLENS_ORT_SPIN, `threads` intra-op threads (default: `default_threads()`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = QUIET
    # No per-session CPU arena: it grows to the sum of the runs in flight on a shared session and never shrinks
    # (8 concurrent occlusions on lite0 kept ~0.8 GiB); plain malloc is as fast here (625-window sweep 5.89 vs
    # 5.83 s, incremental 3.47 vs 3.72 s) and gives memory back (`alloc.release_memory`).
    so.enable_cpu_mem_arena = False
    if not settings.get("CONVLENS_ORT_SPIN"):  # shared machines: do not busy-wait between ops
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return so


def make_session(
    path: str | os.PathLike[str],
    providers: tuple[str, ...] | None = None,
    threads: int | None = None,
    optimized_path: str | os.PathLike[str] | None = None,
    fp16: bool = False,
) -> tuple[Any, str, list[str]]:
    """Start an InferenceSession on the best provider that really starts; returns (session, provider, failures).

    For convlens' own graphs (exports, stages); an uploaded graph runs in `accel.runtime.sandbox` instead."""
    import onnxruntime as ort

    ort.set_default_logger_severity(QUIET)
    avail = set(ort.get_available_providers())
    failures: list[str] = []
    order = []
    for p in providers or PROVIDER_ORDER:
        if p not in avail:
            continue
        if p != "CPUExecutionProvider" and not gpu_driver_present():
            failures.append(f"{p}: skipped, no NVIDIA driver (libcuda) on this machine")
            continue
        order.append(p)
    if "CPUExecutionProvider" not in order:
        order.append("CPUExecutionProvider")
    alloc: OrtAllocationError | None = None
    for prov in order:
        so = session_options(threads, optimized_path if prov == "CPUExecutionProvider" else None)
        plist: list[Any] = (
            [prov]
            if prov == "CPUExecutionProvider"
            else [(prov, provider_options(prov, fp16)), "CPUExecutionProvider"]
        )
        try:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=plist)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - ORT's own exception types
            err = ort_error(e, Path(path).name)
            if isinstance(err, OrtAllocationError):
                alloc = err
            failures.append(f"{prov}: {type(e).__name__}: {clean_ort_message(str(e), 120)}")
            continue
        with _STARTED_LOCK:
            _STARTED[0] += 1
        if sess.get_providers()[0] != prov:
            failures.append(f"{prov}: session fell back to {sess.get_providers()[0]}")
            continue
        return sess, prov, failures
    if alloc is not None:
        raise BadInput(f"{alloc}; the graph needs more memory than this machine gives it") from None
    raise BadInput(
        f"{Path(path).name}: no ONNX Runtime provider could start a session: " + "; ".join(failures)
    )
