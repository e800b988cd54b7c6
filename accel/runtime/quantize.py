"""Opt-in INT8 static quantization (QDQ) of an exported backbone, calibrated on the packaged photos.

Static QDQ makes convolutions run in int8 on CPUs with VNNI; dynamic quantization would not speed up convolutions
and fp16 on the CPU provider is slower than fp32, so neither is offered on CPU. The accuracy cost is measured
and returned, never hidden.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BadInput

if TYPE_CHECKING:
    from ..backbone import Backbone


def packaged_photo_batches(net: Backbone) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) preprocessed batches from the packaged photos, alternating so both are varied."""
    from ..images import foolbox_imagenet, open_image, sample_images

    paths = [p for p, _ in foolbox_imagenet()] + sorted(sample_images().values())
    if len(paths) < 4:
        raise BadInput("not enough packaged photos for calibration (install foolbox / scikit-image)")
    x = net.preprocess_batch([open_image(p) for p in paths]).numpy()
    return x[::2], x[1::2]


def _cached_copy(out: Path, build: Callable[[Path], None]) -> Path:
    """`out` if it matches its recorded SHA-256, else rebuilt by `build(tmp)` into a unique temporary (one
    builder at a time across threads and processes), recorded and moved into place."""
    from .cache import temp_name
    from .export import build_lock, discard, recorded_problem, write_record

    if out.exists() and recorded_problem(out) is None:
        return out
    with build_lock(out, cross_process=True):
        if out.exists():
            problem = recorded_problem(out)
            if problem is None:
                return out
            warnings.warn(f"ONNX cache entry {out.name} {problem}; rebuilding it", stacklevel=3)
        discard(out)
        tmp = temp_name(out)
        try:
            build(tmp)
            write_record(out, graph=tmp)
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (u8 x s8 dot products into int32). Without it ONNX Runtime's int8 kernels use
    vpmaddubsw, whose int16 pair sums saturate with full-range 8-bit weights; reduce_range (7-bit weights) avoids
    that (measured: lite0 int8 incremental map Spearman 0.56 -> see tests on an AVX2-only CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    except OSError:
        pass
    return True  # not Linux/x86 (ARM dot-product kernels do not saturate): keep full range


def quantize_int8(src: Path, calib: np.ndarray, input_name: str = "input") -> Path:
    """Write (or reuse) a QDQ int8 copy of the ONNX model `src` calibrated on `calib`; returns its path.

    Weights use 7 bits (reduce_range) on CPUs without VNNI, where 8-bit weights saturate ORT's int8 kernels."""
    reduce_range = not cpu_has_vnni()
    digest = hashlib.sha256(calib.tobytes() + bytes([reduce_range])).hexdigest()[:12]
    out = src.with_name(f"{src.stem}-int8-{digest}.onnx")

    def build(tmp: Path) -> None:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from .cache import temp_name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter([{input_name: calib[i : i + 1]} for i in range(len(calib))])

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.items, None)

        pre = temp_name(src.with_name(f"{src.stem}.pre.onnx"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                try:
                    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                    first = pre
                except Exception:  # noqa: BLE001 - pre-processing is an optimisation only
                    first = src
                quantize_static(
                    str(first),
                    str(tmp),
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    reduce_range=reduce_range,
                )
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # noqa: BLE001 - calibration runs ONNX Runtime (its own exception types)
                from .session import ort_error

                err = ort_error(e, f"INT8 quantization of {src.name}")
                raise BadInput(f"{err}; use precision='fp32'") from None
            finally:
                pre.unlink(missing_ok=True)

    return _cached_copy(out, build)


def accuracy_cost(
    ref: Sequence[np.ndarray], got: Sequence[np.ndarray], taps: Sequence[str]
) -> dict[str, Any]:
    """How much a reduced-precision path changes the outputs: max abs diff per tap, top-1 agreement on logits."""
    cost: dict[str, Any] = {"max_abs_diff": {}}
    for t, r, g in zip(taps, ref, got):
        cost["max_abs_diff"][t] = float(np.abs(r - g).max())
        if t == "logits":
            cost["top1_agreement"] = float((r.argmax(1) == g.argmax(1)).mean())
    return cost


def to_fp16(src: Path) -> Path:
    """Write (or reuse) an fp16 copy of the ONNX model `src` for GPU providers, float32 inputs and outputs kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = Path(src)
    out = src.with_name(f"{src.stem}-fp16.onnx")

    def build(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        onnx.save(m, str(tmp))

    return _cached_copy(out, build)
