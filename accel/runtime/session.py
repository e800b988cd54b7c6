"""ONNX Runtime sessions: provider choice (TensorRT > CUDA > CPU, each only if a session really starts) and checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import BadInput

PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def ort_available() -> bool:
    """Whether onnxruntime imports here."""
    try:
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def check_onnx(path: str | os.PathLike[str]) -> None:
    """Refuse files that are not valid ONNX models or do not take one float image batch (BadInput)."""
    import onnx

    p = Path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx raises many types for corrupt files
        raise BadInput(
            f"{p.name}: not a valid ONNX model ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
        ) from None
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BadInput(f"{p.name}: expected one image input, found {len(inputs)} inputs")
    t = inputs[0].type.tensor_type
    if t.elem_type != onnx.TensorProto.FLOAT:
        raise BadInput(
            f"{p.name}: input {inputs[0].name!r} must be float32, got {onnx.TensorProto.DataType.Name(t.elem_type)}"
        )
    if len(t.shape.dim) != 4:
        raise BadInput(
            f"{p.name}: input {inputs[0].name!r} must have rank 4 (N,C,H,W), got rank {len(t.shape.dim)}"
        )
    c = t.shape.dim[1].dim_value
    if c not in (0, 1, 3):
        raise BadInput(f"{p.name}: input must have 1 or 3 channels (N,C,H,W), got C={c}")


def onnx_io_shapes(
    path: str | os.PathLike[str] | None,
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Input and output shapes (without batch) of an ONNX model; unknown dims are -1."""
    import onnx

    if path is None:
        raise BadInput("no ONNX file")
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}

    def dims(v: Any) -> tuple[int, ...]:
        return tuple(d.dim_value if d.dim_value > 0 else -1 for d in v.type.tensor_type.shape.dim)

    ins = [dims(i) for i in model.graph.input if i.name not in inits]
    outs = [dims(o)[1:] for o in model.graph.output]
    return ins, outs


def gpu_driver_present() -> bool:
    """Whether an NVIDIA driver is loadable (GPU providers cannot start without one)."""
    import ctypes.util

    if os.environ.get("CONVLENS_FORCE_GPU_PROBE"):
        return True
    return ctypes.util.find_library("cuda") is not None or Path("/dev/nvidiactl").exists()


def default_threads() -> int:
    """Intra-op threads: the cores this process may use (respects affinity and CONVLENS_THREADS)."""
    env = os.environ.get("CONVLENS_THREADS")
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


def make_session(
    path: str | os.PathLike[str],
    providers: tuple[str, ...] | None = None,
    threads: int | None = None,
    optimized_path: str | os.PathLike[str] | None = None,
    fp16: bool = False,
) -> tuple[Any, str, list[str]]:
    """Start an InferenceSession on the best provider that really starts; returns (session, provider, failures)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
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
    for prov in order:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        if os.environ.get("CONVLENS_ORT_SPIN", "0") != "1":  # shared machines: do not busy-wait between ops
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if optimized_path is not None and prov == "CPUExecutionProvider":
            so.optimized_model_filepath = str(optimized_path)
        plist: list[Any] = (
            [prov]
            if prov == "CPUExecutionProvider"
            else [(prov, provider_options(prov, fp16)), "CPUExecutionProvider"]
        )
        try:
            sess = ort.InferenceSession(str(path), sess_options=so, providers=plist)
        except Exception as e:  # noqa: BLE001
            failures.append(f"{prov}: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")
            continue
        if sess.get_providers()[0] != prov:
            failures.append(f"{prov}: session fell back to {sess.get_providers()[0]}")
            continue
        return sess, prov, failures
    from ..errors import BadInput

    raise BadInput(f"{path}: no ONNX Runtime provider could start a session: " + "; ".join(failures))
