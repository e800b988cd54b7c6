"""ONNX Runtime sessions: provider choice (TensorRT > CUDA > CPU, each only if a session really starts) and the
boundary where ONNX Runtime's own exceptions become convlens errors (static facts of .onnx files, which need no
session, live in `accel.onnxfile`).

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


def usable_cores() -> int:
    """The cores this process may run on (its affinity), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Intra-op threads: the cores this process may use (respects affinity and CONVLENS_THREADS)."""
    env = settings.get("CONVLENS_THREADS")
    if env:
        return max(1, int(env))
    return usable_cores()


def provider_options(provider: str, fp16: bool = False) -> dict[str, Any]:
    """Options per GPU provider: TensorRT caches its engines (and timing) next to the ONNX cache, so a model is
    built once per machine, and runs fp16 when asked; CUDA searches conv algorithms exhaustively (batched
    sweeps reuse one shape) and copies in the default stream."""
    if provider == "TensorrtExecutionProvider":
        from .cache import cache_dir

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


def session_options(
    threads: int | None = None, optimized_path: str | os.PathLike[str] | None = None, arena: bool = True
) -> Any:
    """SessionOptions as convlens uses them: full graph optimisation, quiet logs, no busy-waiting unless
    CONVLENS_ORT_SPIN, `threads` intra-op threads (default: `default_threads()`); `arena=False` for sessions
    shared by many callers (see below)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.log_severity_level = QUIET
    # Pooled sessions drop the CPU arena where the heap is tuned (`alloc.pooled_arena` says why); other sessions keep
    # it: its allocation failures state the size asked for, malloc's only say "bad_alloc". On a tuned heap plain
    # malloc is as fast (625-window sweep 5.89 vs 5.83 s, incremental 3.47 vs 3.72 s) and gives memory back
    # (`alloc.release_memory`).
    so.enable_cpu_mem_arena = bool(arena)
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
    arena: bool = True,
) -> tuple[Any, str, list[str]]:
    """Start an InferenceSession on the best provider that really starts; returns (session, provider, failures).

    For convlens' own graphs (exports, stages); an uploaded graph runs in `accel.runtime.sandbox` instead.
    `arena=False` for the pooled sessions every browser session shares (see `session_options`)."""
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
        so = session_options(threads, optimized_path if prov == "CPUExecutionProvider" else None, arena)
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
