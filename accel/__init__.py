"""convlens engine: backbones, taps, runners (PyTorch and ONNX Runtime) and every technique, behind one verb."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import BadInput, NotDifferentiable, ResourceLimit, UntrustedFile
from .registry import MethodSpec, Observer, ProgressObserver, get, run
from .registry import methods as list_methods
from .result import LossRecord, Result

__version__ = "0.1.0"

__all__ = [
    "BadInput",
    "NotDifferentiable",
    "ResourceLimit",
    "UntrustedFile",
    "MethodSpec",
    "Observer",
    "ProgressObserver",
    "LossRecord",
    "Result",
    "get",
    "list_methods",
    "run",
    "load",
    "open_image",
    "runner",
    "Backbone",
    "LayerInfo",
]

if TYPE_CHECKING:
    from .images import open_image
    from .runtime.runner import runner
    from .zoo import Backbone, LayerInfo, load


def __getattr__(name: str) -> Any:
    # Lazy: `import accel` stays cheap; torch and onnxruntime load on first use.
    if name == "open_image":
        from .images import open_image

        return open_image
    if name in ("load", "Backbone", "LayerInfo"):
        from . import zoo

        return getattr(zoo, name)
    if name == "runner":
        from .runtime.runner import runner

        return runner
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'accel' has no attribute {name!r}")


_SUBMODULES = {
    "images",
    "zoo",
    "taps",
    "receptive",
    "registry",
    "result",
    "errors",
    "runtime",
    "datasets",
    "store",
    "bench",
    "cli",
    "methods",
    "archs",
    "training",
    "fashion_mnist",
    "jobs",
}
