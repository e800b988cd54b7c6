"""One batched forward interface with two implementations: PyTorch eager and ONNX Runtime, same outputs.

`runner(net, taps)` returns a Runner whose `.run(batch)` gives {tap: numpy array}. Taps are "logits",
"embedding" (the backbone's pooled feature vector) or any layer name from `net.layers()`. The ONNX Runtime
runner checks itself against torch before use; a cached export that disagrees is rebuilt once, and refused
(`ParityError`, a `BadInput`) if the fresh export disagrees too.

ONNX Runtime runners come from one pool keyed by the weights hash, taps and options (never the object's id), so
every caller holding a copy of the same weights (each dashboard session deep-copies its backbone) shares one
session. Pooled runners are shared between threads: `passes` is their running total, and `last_passes` the
passes of the calling thread's latest `run`/`sweep`. A user's .onnx file runs in a sandbox process
(`accel.runtime.sandbox`); outputs with NaN or inf are refused on every backend.

This module is the front door; the pieces live beside it: `forward` (the tap definition, the Runner base and
the torch runner), `ortrunner` (the ONNX Runtime runner) and `pool` (the one runner pool).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInput
from .export import ParityError
from .forward import Progress, Runner, TorchRunner, auto_batch_size, forward_taps, max_auto_batch
from .ortrunner import OrtRunner
from .pool import pooled_ort

if TYPE_CHECKING:
    from ..backbone import Backbone

__all__ = [
    "OrtRunner",
    "ParityError",
    "Progress",
    "Runner",
    "TorchRunner",
    "auto_batch_size",
    "forward_taps",
    "max_auto_batch",
    "onnx_logits",
    "runner",
]


def onnx_logits(net: Backbone, x: np.ndarray) -> np.ndarray:
    """The forward engine of a module-less backbone (an .onnx file): class scores of a preprocessed batch from
    the pooled ONNX Runtime runner, which runs a user's graph in its sandbox (`accel.load` injects this)."""
    return runner(net, ["logits"]).run(x)["logits"]


def runner(
    net: Backbone,
    taps: Sequence[str] = ("logits",),
    backend: str = "auto",
    batch_size: int | None = None,
    providers: tuple[str, ...] | None = None,
    precision: str = "fp32",
) -> Runner:
    """A batched forward runner: backend "torch", "onnxruntime", or "auto" (ONNX Runtime when it works).

    `precision="int8"` (ONNX Runtime on CPU, opt-in) quantizes statically and reports its accuracy cost in meta.
    ONNX Runtime runners are pooled (`accel.runtime.pool`); under "auto" an export that fails its parity check even
    after a rebuild falls back to torch with a warning, under "onnxruntime" it is refused (`ParityError`).
    """
    if precision != "fp32" and backend == "torch":
        raise BadInput("reduced precision is offered on the ONNX Runtime backend only")
    if backend not in ("auto", "torch", "onnxruntime", "ort"):
        raise BadInput(f"backend must be 'auto', 'torch' or 'onnxruntime', got {backend!r}")
    if backend == "torch":
        return TorchRunner(net, taps, batch_size)
    from .session import ort_available

    if backend in ("onnxruntime", "ort") or net.module is None:
        if not ort_available():
            raise BadInput("onnxruntime is not installed; use backend='torch'")
        return pooled_ort(net, taps, batch_size, providers, precision)
    if ort_available():
        try:
            return pooled_ort(net, taps, batch_size, providers, precision)
        except ParityError as e:
            warnings.warn(f"ONNX Runtime refused for {net.name} ({e}); using torch", stacklevel=2)
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001 - export or session failure: torch still works
            warnings.warn(f"ONNX Runtime unavailable for {net.name} ({e}); using torch", stacklevel=2)
    return TorchRunner(net, taps, batch_size)
