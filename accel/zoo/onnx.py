"""Forward-only backbones from a user's .onnx file: the static facts first (`accel.onnxfile`), the input convention
and labels from convlens' own metadata record (validated) or the input shape, then one probe pass through the
engine the caller supplies (`accel.load` gives ONNX Runtime's sandboxed runner), since the zoo runs nothing itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..backbone import Backbone, Engine, Preproc, file_sha256, imagenet_labels
from ..errors import BadInput
from ..onnxfile import static_facts


def onnx_preproc(
    name: str, meta: dict[str, str], ishape: tuple[int, ...], outs: list[tuple[int, ...]]
) -> tuple[Preproc, list[str] | None]:
    """The input convention and labels: recorded by convlens' own exports (validated: a damaged record could
    ask for any resize), else inferred from the input shape (ImageNet statistics, ImageNet labels at 1000)."""
    size = int(ishape[-1]) if ishape[-1] > 0 else (int(ishape[-2]) if ishape[-2] > 0 else 224)
    channels = "L" if ishape[1] == 1 else "RGB"
    pre = (
        Preproc(size, round(size * 256 / 224))
        if channels == "RGB"
        else Preproc(size, size, (0.5,), (0.5,), 1.0, "L")
    )
    classes = outs[0][-1] if len(outs[0]) == 1 else None
    labels: list[str] | None = imagenet_labels() if classes == 1000 else None
    if "convlens.preproc" not in meta:
        return pre, labels

    def damaged(what: str) -> BadInput:
        return BadInput(
            f"{name}: its convlens preprocessing record is damaged ({what}); export the model again"
        )

    try:
        d = json.loads(meta["convlens.preproc"])
        lab = json.loads(meta.get("convlens.labels", "null"))
    except ValueError:
        raise damaged("not JSON") from None
    if not isinstance(d, dict):
        raise damaged("not a record")
    try:
        rsize, resize, scale, chans = d["size"], d["resize"], d["scale"], d["channels"]
        mean, std = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
    except (KeyError, TypeError, ValueError):
        raise damaged("a field is missing or not a number") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (rsize, resize)):
        raise damaged("size and resize must be whole numbers")
    if rsize < 1 or (ishape[-1] > 0 and rsize != ishape[-1]) or (ishape[-2] > 0 and rsize != ishape[-2]):
        raise damaged(f"size {rsize} does not match the graph's input")
    if not rsize <= resize <= 4 * rsize:
        raise damaged(f"resize {resize} for size {rsize}")
    if chans not in ("RGB", "BGR", "L") or (ishape[1] > 0 and (ishape[1] == 1) != (chans == "L")):
        raise damaged(f"channels {str(chans)[:10]!r}")
    need = 1 if chans == "L" else 3
    if len(mean) < need or len(std) < need or not np.isfinite([*mean, *std]).all() or min(std[:need]) <= 0:
        raise damaged("mean/std")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < float(scale) <= 1e4:
        raise damaged("scale")
    pre = Preproc(rsize, resize, mean, std, float(scale), chans)
    if lab == "imagenet":
        labels = imagenet_labels()
    elif lab is None:
        labels = None
    elif isinstance(lab, list) and all(isinstance(v, str) for v in lab) and len(lab) <= 1_000_000:
        labels = lab
    else:
        raise damaged("labels")
    if labels is not None and classes is not None and classes > 0 and len(labels) != classes:
        raise damaged(f"{len(labels)} labels for {classes} classes")
    if labels is not None and classes is None:
        labels = None  # a feature extractor has no class names
    return pre, labels


def onnx_static(path: Path, label: str | None = None) -> tuple[Preproc, list[str] | None, tuple[int, ...]]:
    """Every check that needs no ONNX Runtime (parse, structure, input, weights, convlens metadata); returns
    the input convention, labels and the declared shape of the first output without batch (-1: unknown)."""
    name = label or path.name
    facts = static_facts(path, name)
    pre, labels = onnx_preproc(name, facts.metadata, facts.input_shape, facts.output_shapes)
    return pre, labels, tuple(facts.output_shapes[0])


def check_onnx_runs(net: Backbone, label: str | None = None, declared: tuple[int, ...] | None = None) -> None:
    """One probe forward pass through the backbone's engine (the sandbox: timeout and memory cap): it must run
    the graph, its outputs must be finite and have the declared shape; say why if not."""
    name = label or (net.onnx_path.name if net.onnx_path is not None else net.name)
    if net.engine is None:
        raise BadInput(f"{name}: an ONNX file needs a forward engine to be probed; load it with accel.load")
    gen = torch.Generator().manual_seed(0)
    x01 = torch.rand(1, 3, net.pre.size, net.pre.size, generator=gen)  # one image: no batch halving here
    out = np.asarray(net.engine(net, net.normalize(x01).numpy()))
    if declared is None:
        declared = net.output_shape
    got = tuple(out.shape[1:])
    if len(declared) != len(got) or any(d > 0 and d != g for d, g in zip(declared, got)):
        shown = tuple(d if d > 0 else "?" for d in declared)
        raise BadInput(f"{name}: the graph declares outputs of shape (N, {shown}) but gives (N, {got})")
    if net.has_head and net.labels is not None and got[-1] != len(net.labels):
        raise BadInput(f"{name}: the graph gives {got[-1]} class scores for {len(net.labels)} labels")


def from_onnx(path: Path, label: str | None = None, *, engine: Engine | None = None) -> Backbone:
    """A forward-only backbone from a user's .onnx file: static checks first, then one probe through `engine`
    (which becomes the backbone's forward pass; `accel.load` passes the runtime's sandboxed runner)."""
    name = label or path.name
    pre, labels, declared = onnx_static(path, name)
    if engine is None:
        raise BadInput(
            f"{name}: an ONNX file runs in ONNX Runtime's sandbox, which accel.zoo does not reach; load it with "
            "accel.load"
        )
    has_head = len(declared) == 1  # (N, classes); anything else is a feature map, not class scores
    net = Backbone(
        path.stem,
        None,
        pre,
        labels,
        source=f"ONNX file {name} (sha256 {file_sha256(path)[:12]}), forward-only",
        has_head=has_head,
        onnx_path=path,
        engine=engine,
    )
    check_onnx_runs(net, name, declared)
    return net


__all__ = ["check_onnx_runs", "from_onnx", "onnx_preproc", "onnx_static"]
