"""convlens engine: backbones, taps, runners (PyTorch and ONNX Runtime) and every technique, behind one verb."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

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
    "LoadOptions",
]

if TYPE_CHECKING:
    import os
    from typing import Unpack

    from .backbone import Backbone, LayerInfo
    from .images import open_image
    from .runtime.runner import runner


class LoadOptions(TypedDict, total=False):
    """How `accel.load` reads a backbone: `arch` (the architecture of a bare state dict), `pretrained` (None: the
    real weights when available), `trust` (allow full pickles) and `display_name` (how messages name the file);
    their defaults are `accel.zoo.load`'s."""

    arch: str | None
    pretrained: bool | None
    trust: bool
    display_name: str | None


def load(name: str | os.PathLike[str] | Any, **options: Unpack[LoadOptions]) -> Backbone:
    """A backbone by zoo name, team model name (CONVLENS_TEAM_MODELS), torchvision name, checkpoint path (+ `arch`),
    .onnx path, or a live `torch.nn.Module` (see `accel.zoo.load`); an .onnx file gets ONNX Runtime's sandboxed
    runner as its forward engine (the zoo sits below the runtime)."""
    from .runtime.runner import onnx_logits
    from .zoo import load as zoo_load

    return zoo_load(name, engine=onnx_logits, **options)


def __getattr__(name: str) -> Any:
    # Lazy: `import accel` stays cheap; torch and onnxruntime load on first use.
    if name == "open_image":
        from .images import open_image

        return open_image
    if name in ("Backbone", "LayerInfo"):
        from . import backbone

        return getattr(backbone, name)
    if name == "runner":
        from .runtime.runner import runner

        return runner
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'accel' has no attribute {name!r}")


_SUBMODULES = {
    "images",
    "backbone",
    "onnxfile",
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
