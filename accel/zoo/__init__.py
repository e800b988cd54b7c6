"""The model zoo: loaders only. `load` takes a zoo name (packaged real weights), a torchvision name, a user's
checkpoint (.pt/.safetensors with an architecture name) or an .onnx file, and returns a `Backbone`.

Rooms: `cards` (model card + SHA-256 of every shipped artifact), `packaged` (the named backbones), `torchvision`,
`checkpoints` and `budget` (user state dicts, read safely within the size caps), `onnx` (forward-only files). The
value type itself lives in `accel.backbone`; ONNX files are run by an engine the caller passes in (`accel.load`
supplies ONNX Runtime's sandbox), since the zoo sits below the runtime.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from ..backbone import Backbone, Engine, LayerInfo, Preproc, file_sha256, imagenet_labels
from ..errors import BadInput
from . import cards
from .cards import MODELS_DIR, read_card, site_file
from .checkpoints import from_checkpoint
from .onnx import from_onnx, onnx_static
from .packaged import DEFAULT_MODEL, ZOO, ZooEntry, load_numpy_pickle
from .team import from_module, load_team, models_file, team_models
from .torchvision import build_torchvision, torchvision_names

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx")


def is_file_path(p: Path) -> bool:
    """Whether `p` names a weight file (by its suffix or because it exists), not a zoo or torchvision name."""
    if p.suffix.lower() in WEIGHT_SUFFIXES:
        return True
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long or odd for the file system is no file
        return False


def _checked_file(p: Path, shown: str, label: str) -> None:
    """Refuse a folder, a missing file or an empty one before any loader reads it."""
    try:
        if p.is_dir():
            raise BadInput(f"{label} is a folder; pass a checkpoint file (.pt, .pth, .safetensors or .onnx)")
        if not p.is_file():
            raise BadInput(f"checkpoint {shown!r} does not exist")
        size = p.stat().st_size
    except OSError as e:
        raise BadInput(f"{label}: cannot read the file ({e.strerror or type(e).__name__})") from None
    if size == 0:
        raise BadInput(f"{label} is empty")


def load(
    name: str | os.PathLike[str],
    *,
    arch: str | None = None,
    pretrained: bool | None = None,
    trust: bool = False,
    display_name: str | None = None,
    engine: Engine | None = None,
) -> Backbone:
    """Load a backbone by zoo name, torchvision name, checkpoint path (+ `arch`) or ONNX path.

    `pretrained=None` uses pretrained weights when available and warns before falling back to random weights;
    `trust=True` allows full pickles in checkpoints (never the default); `display_name` is how messages name
    the file (an upload's own name instead of its storage name); `engine` runs an .onnx file (required for one:
    use `accel.load`, which passes ONNX Runtime's sandboxed runner).
    """
    if isinstance(name, nn.Module):
        return from_module(name, name=display_name)
    if not isinstance(name, (str, os.PathLike)):
        raise BadInput(f"expected a model name, a file path or an nn.Module, got {type(name).__name__}")
    s = os.fspath(name)
    p = Path(s)
    if is_file_path(p):
        _checked_file(p, display_name or s, display_name or p.name)
        if p.suffix.lower() == ".onnx":
            return from_onnx(p, display_name, engine=engine)
        return from_checkpoint(p, arch, trust, display_name)
    if s in ZOO:
        return ZOO[s].build()
    team = team_models()
    if s in team:
        return load_team(team[s])
    return build_torchvision(s, pretrained)


def zoo_table() -> list[dict[str, Any]]:
    """The packaged zoo, then the team's models (CONVLENS_TEAM_MODELS), with sources and whether the weight files
    are present, for `convlens models` and the dashboard's model list."""
    rows = [
        {
            "name": e.name,
            "description": e.description,
            "source": e.source,
            "weights_present": e.weights_present(),
        }
        for e in ZOO.values()
    ]
    for m in team_models().values():
        if m.name in ZOO:
            continue  # a packaged name wins; the team entry is unreachable, so not listed
        rows.append(
            {
                "name": m.name,
                "description": m.description or f"team model ({m.architecture or m.factory})",
                "source": f"team models file ({getattr(models_file(), 'name', '')})",  # no server path
                "weights_present": m.weights is None or m.weights.is_file(),
            }
        )
    return rows


__all__ = [
    "DEFAULT_MODEL",
    "MODELS_DIR",
    "ZOO",
    "Backbone",
    "LayerInfo",
    "Preproc",
    "ZooEntry",
    "cards",
    "file_sha256",
    "from_module",
    "imagenet_labels",
    "is_file_path",
    "load",
    "load_numpy_pickle",
    "onnx_static",
    "read_card",
    "site_file",
    "team_models",
    "torchvision_names",
    "zoo_table",
]
