"""torch -> ONNX export of a backbone with its taps as extra outputs and a dynamic batch axis, cached on disk.

The cache key covers the weights hash, taps, input shape, opset and library versions, so a changed model or
library never reuses a stale graph. Files are written atomically; an unreadable cache entry is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import BadInput

if TYPE_CHECKING:
    from ..zoo import Backbone

EXPORT_VERSION = "2"  # 2: zero Pads folded into Conv (graphopt.fold_pads)
DEFAULT_OPSET = 17


def cache_dir() -> Path:
    """Where exports live: $CONVLENS_CACHE or the user cache directory."""
    env = os.environ.get("CONVLENS_CACHE")
    if env:
        root = Path(env)
    else:
        from platformdirs import user_cache_dir

        root = Path(user_cache_dir("convlens"))
    d = root / "onnx"
    d.mkdir(parents=True, exist_ok=True)
    return d


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
        from .runner import forward_taps

        out = forward_taps(self.net, x, self.taps)
        return tuple(out[t] for t in self.taps)


def export_key(net: Backbone, taps: list[str], opset: int) -> str:
    """Cache key: weights, taps, input shape, opset, library versions."""
    import onnx

    try:
        import onnxruntime as ort

        ortv = ort.__version__
    except Exception:  # noqa: BLE001
        ortv = "none"
    blob = json.dumps(
        {
            "w": net.weights_hash(),
            "taps": list(taps),
            "shape": list(net.input_shape),
            "opset": opset,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "ort": ortv,
            "v": EXPORT_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _valid(path: Path) -> bool:
    import onnx

    try:
        onnx.checker.check_model(str(path))
        return True
    except Exception:  # noqa: BLE001
        return False


def export_backbone(
    net: Backbone, taps: list[str], opset: int = DEFAULT_OPSET, out: Path | None = None
) -> Path:
    """Export `net` with `taps` as outputs (cached unless `out` is given); returns the .onnx path."""
    if not taps:
        raise BadInput("export needs at least one tap (e.g. 'logits')")
    if len(set(taps)) != len(taps):
        raise BadInput(f"duplicate taps in {taps}")
    target = (
        out
        or cache_dir() / f"{net.name.replace('/', '_').replace('@', '_')}-{export_key(net, taps, opset)}.onnx"
    )
    if out is None and target.exists():
        if _valid(target):
            return target
        warnings.warn(f"ONNX cache entry {target.name} is corrupt; rebuilding it", stacklevel=2)
        target.unlink(missing_ok=True)
    wrapper = TapModule(net, taps).eval()
    x = torch.zeros(2, *net.input_shape)
    names = [safe_name(t) for t in taps]
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(
                wrapper,
                (x,),
                str(tmp),
                input_names=["input"],
                output_names=names,
                dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    from .graphopt import fold_pads

    fold_pads(tmp)
    _stamp_metadata(tmp, net, taps)
    os.replace(tmp, target)
    return target


def _stamp_metadata(path: Path, net: Backbone, taps: list[str]) -> None:
    """Record the preprocessing convention and labels in the model, so the file is self-describing."""
    import dataclasses

    import onnx

    m = onnx.load(str(path))
    labels: object = None
    if net.labels is not None:
        from ..zoo import imagenet_labels

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
