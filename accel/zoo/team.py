"""The team's own models: a TOML file a deployer edits (CONVLENS_TEAM_MODELS), read when a name is looked up, each
entry loaded through the same checks as packaged weights (safetensors or a weights_only state dict, SHA-256 when
given, shapes fitted by name, a finite probe); and `from_module`, which wraps a live `nn.Module` (local Python use).

An entry:

    [[model]]
    name = "defects_resnet18"                # what users pick (sidebar, --model, accel.load)
    architecture = "resnet18"                # a zoo or torchvision architecture ...
    # factory = "team_models.nets:build"     # ... or an importable callable returning an nn.Module
    weights = "defects_resnet18.safetensors" # relative to the TOML file
    sha256 = "..."                           # optional; checked on every load
    description = "ResNet-18 fine-tuned on the line-3 defect photos"
    input_size = 224                         # preprocessing (defaults: ImageNet's 224/256, mean, std)
    resize = 256
    mean = [0.485, 0.456, 0.406]
    std = [0.229, 0.224, 0.225]
    labels = ["ok", "scratch", "dent"]       # or labels_file = "labels.txt" (one per line)

The factory is code the deployer chose to run (it is named in a file only the deployer writes); weights are never
unpickled beyond tensors.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
import torch
from torch import nn

from .. import settings
from ..backbone import IMAGENET_MEAN, IMAGENET_STD, Backbone, Preproc, file_sha256
from ..errors import BadInput
from .checkpoints import from_checkpoint, read_state_dict

KEYS = {
    "name", "architecture", "factory", "weights", "sha256", "description", "input_size", "resize", "mean", "std",
    "labels", "labels_file", "channels",
}  # fmt: skip


@dataclass(frozen=True)
class TeamModel:
    """One entry of the team's models file, validated."""

    name: str
    weights: Path | None
    architecture: str | None = None
    factory: str | None = None
    sha256: str | None = None
    description: str = ""
    preproc: Preproc = field(default_factory=lambda: Preproc(224, 256))
    labels: list[str] | None = None


def models_file() -> Path | None:
    """The configured models file (CONVLENS_TEAM_MODELS), or None when the deployment lists no team models."""
    p = settings.get("CONVLENS_TEAM_MODELS")
    return Path(p) if p else None


def _text_list(v: Any, what: str) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise BadInput(f"{what} must be a non-empty list of strings")
    return list(v)


def _preproc(e: dict[str, Any], where: str) -> Preproc:
    """The entry's input convention (ImageNet's by default), with its numbers checked."""
    size = e.get("input_size", 224)
    resize = e.get("resize", round(size * 256 / 224) if isinstance(size, int) else 256)
    if not isinstance(size, int) or not isinstance(resize, int) or not 8 <= size <= resize <= 4096:
        raise BadInput(f"{where}: input_size and resize must be whole numbers with 8 <= input_size <= resize")
    channels = e.get("channels", "RGB")
    if channels not in ("RGB", "BGR", "L"):
        raise BadInput(f"{where}: channels must be RGB, BGR or L")
    n = 1 if channels == "L" else 3
    mean, std = e.get("mean", list(IMAGENET_MEAN)[:n]), e.get("std", list(IMAGENET_STD)[:n])
    for key, v in (("mean", mean), ("std", std)):
        if not (isinstance(v, list) and len(v) == n and all(isinstance(x, (int, float)) for x in v)):
            raise BadInput(f"{where}: {key} must be a list of {n} numbers")
    if any(x <= 0 for x in std):
        raise BadInput(f"{where}: std values must be positive")
    return Preproc(size, resize, tuple(map(float, mean)), tuple(map(float, std)), 1.0, channels)


def _entry(e: Any, i: int, root: Path) -> TeamModel:
    """One [[model]] table -> TeamModel, or BadInput naming the entry and what is wrong."""
    where = f"team models file, entry {i + 1}"
    if not isinstance(e, dict):
        raise BadInput(f"{where}: expected a [[model]] table")
    unknown = set(e) - KEYS
    if unknown:
        raise BadInput(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(KEYS)}")
    name = e.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise BadInput(f"{where}: `name` must be a non-empty string without '/'")
    where = f"team model {name!r}"
    if (e.get("architecture") is None) == (e.get("factory") is None):
        raise BadInput(f"{where}: give exactly one of `architecture` and `factory`")
    weights = e.get("weights")
    if weights is None and e.get("architecture") is not None:
        raise BadInput(f"{where}: an architecture needs `weights` (a .safetensors or .pt state dict)")
    labels = _text_list(e["labels"], f"{where}: labels") if "labels" in e else None
    if "labels_file" in e:
        try:
            lines = (root / str(e["labels_file"])).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise BadInput(f"{where}: cannot read labels_file {e['labels_file']!r} ({err})") from None
        labels = _text_list([x.strip() for x in lines if x.strip()], f"{where}: labels_file")
    return TeamModel(
        name,
        None if weights is None else (root / str(weights)),
        e.get("architecture"),
        e.get("factory"),
        e.get("sha256"),
        str(e.get("description", "")),
        _preproc(e, where),
        labels,
    )


def team_models() -> dict[str, TeamModel]:
    """The entries of the configured models file by name ({} when none is configured); BadInput for a file that
    cannot be read or parsed, naming the variable, the entry and the problem."""
    path = models_file()
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"CONVLENS_TEAM_MODELS={path}: cannot read it ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"CONVLENS_TEAM_MODELS={path} is not valid TOML: {e}") from None
    items = data.get("model", [])
    if not isinstance(items, list):
        raise BadInput(f"CONVLENS_TEAM_MODELS={path}: models are [[model]] tables")
    out: dict[str, TeamModel] = {}
    for i, table in enumerate(items):
        m = _entry(table, i, path.parent)
        if m.name in out:
            raise BadInput(f"CONVLENS_TEAM_MODELS={path}: the name {m.name!r} is listed twice")
        out[m.name] = m
    return out


def _check_hash(m: TeamModel) -> None:
    """Refuse weights whose SHA-256 differs from the one the file records."""
    if m.sha256 and m.weights is not None:
        have = file_sha256(m.weights)
        if have.lower() != m.sha256.lower():
            raise BadInput(f"team model {m.name!r}: {m.weights.name} has SHA-256 {have[:12]}..., the file lists "
                           f"{m.sha256[:12]}...; the weights changed since they were listed")  # fmt: skip


def _factory_module(m: TeamModel) -> nn.Module:
    """Call the entry's `module:callable` factory; the result must be an nn.Module."""
    assert m.factory is not None
    mod_name, _, fn_name = m.factory.partition(":")
    if not mod_name or not fn_name:
        raise BadInput(
            f"team model {m.name!r}: factory must read 'package.module:callable', got {m.factory!r}"
        )
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise BadInput(f"team model {m.name!r}: cannot import the factory {m.factory!r} ({e})") from None
    module = fn()
    if not isinstance(module, nn.Module):
        raise BadInput(
            f"team model {m.name!r}: the factory returned {type(module).__name__}, not an nn.Module"
        )
    return module


def load_team(m: TeamModel) -> Backbone:
    """Build the entry's backbone: its weights checked (hash, safe reading, fit) and its preprocessing and labels."""
    _check_hash(m)
    if m.architecture is not None:
        assert m.weights is not None
        net = from_checkpoint(m.weights, m.architecture, trust=False, label=f"team model {m.name!r}")
        net.pre = m.preproc
        if m.labels is not None:
            net.labels = m.labels
        net.weights_changed()
    else:
        module = _factory_module(m)
        if m.weights is not None:
            sd = read_state_dict(m.weights, False, f"team model {m.name!r}")
            try:
                module.load_state_dict(sd)
            except RuntimeError as e:
                raise BadInput(f"team model {m.name!r}: the weights do not fit the factory's network: "
                               f"{' '.join(str(e).split())[:300]}") from None  # fmt: skip
        net = from_module(module, name=m.name, preproc=m.preproc, labels=m.labels)
    net.name = m.name
    net.source = m.description or f"team model ({m.architecture or m.factory})"
    return net


def from_module(
    module: nn.Module,
    *,
    name: str | None = None,
    preproc: Preproc | None = None,
    labels: list[str] | None = None,
) -> Backbone:
    """A backbone around a live `nn.Module` (local Python use): ImageNet preprocessing unless given; a classifier
    head is assumed when the module's output on a probe is (1, classes)."""
    if not isinstance(module, nn.Module):
        raise BadInput(f"expected a torch.nn.Module, got {type(module).__name__}")
    pre = preproc or Preproc(224, 256)
    module = module.eval()
    with torch.no_grad():
        try:
            out = module(torch.zeros(1, 1 if pre.channels == "L" else 3, pre.size, pre.size))
        except Exception as e:  # noqa: BLE001 - any failure of the user's module is a clear input error
            raise BadInput(
                f"the module fails on a {pre.size}x{pre.size} input: {type(e).__name__}: {e}"
            ) from None
    head = isinstance(out, torch.Tensor) and out.ndim == 2
    if labels is not None and head and len(labels) != out.shape[1]:
        raise BadInput(f"{len(labels)} labels for a module with {out.shape[1]} outputs")
    return Backbone(
        name or type(module).__name__, module, pre, labels, source="a Python nn.Module", has_head=head
    )


__all__ = ["TeamModel", "from_module", "load_team", "models_file", "team_models"]
