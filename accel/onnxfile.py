"""Facts read from an .onnx file without ONNX Runtime: parsing, structure checks, input/output shapes, metadata.

Everything here reads the protobuf only (no session is started, no graph runs), so it is safe on an upload: files
that keep weights outside themselves are refused before the checker could look the named files up on this
server, and the declared input is bounded by the pixel cap before any memory is sized from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BadInput, ResourceLimit
from .limits import CAPS, cap


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """Parse an .onnx file (without external data) into a ModelProto, or BadInput naming the file."""
    import onnx

    p = Path(path)
    try:
        return onnx.load(str(p), load_external_data=False)
    except OSError as e:
        raise BadInput(f"{p.name}: cannot read the file ({e.strerror or type(e).__name__})") from None
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError, RecursionError, ValueError, ...
        raise BadInput(
            f"{p.name}: not a valid ONNX model (the file does not parse as an ONNX protobuf: {type(e).__name__}); "
            "export it again or check the upload"
        ) from None


def uses_external_data(model: Any) -> bool:
    """Whether any tensor of the model (initializers, constants, subgraphs) points at an external data file."""
    import onnx

    def external(t: Any) -> bool:
        return bool(t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0)

    def graph_uses(g: Any, depth: int = 0) -> bool:
        if depth > 64:  # protobuf limits nesting anyway
            return True
        if any(external(t) for t in g.initializer):
            return True
        if any(external(st.values) or external(st.indices) for st in g.sparse_initializer):
            return True
        for node in g.node:
            for a in node.attribute:
                if (a.HasField("t") and external(a.t)) or any(external(t) for t in a.tensors):
                    return True
                if (a.HasField("g") and graph_uses(a.g, depth + 1)) or any(
                    graph_uses(sub, depth + 1) for sub in a.graphs
                ):
                    return True
        return False

    return graph_uses(model.graph)


def check_onnx(path: str | os.PathLike[str], model: Any = None) -> None:
    """Refuse files that are not valid ONNX models or do not take one float image batch (BadInput)."""
    import onnx

    p = Path(path)
    if model is None:
        model = load_onnx(p)
    if uses_external_data(model):  # before the checker, which would look the named files up on this server
        raise BadInput(
            f"{p.name}: the model keeps weights in external data files; convlens takes self-contained .onnx "
            "files (save it again with all tensors inside the file)"
        )
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - onnx raises many types for corrupt files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        first = "".join(c if c.isprintable() else " " for c in first)[:160]
        raise BadInput(f"{p.name}: not a valid ONNX model ({type(e).__name__}: {first})") from None
    _check_signature(p.name, model)


def _check_signature(name: str, model: Any) -> None:
    """One float32 rank-4 image input with 1 or 3 channels, and at least one output, every output a tensor."""
    import onnx

    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BadInput(f"{name}: expected one image input, found {len(inputs)} inputs")
    if not model.graph.output:
        raise BadInput(f"{name}: the graph has no outputs")
    if not inputs[0].type.HasField("tensor_type"):
        raise BadInput(f"{name}: the input must be a float32 tensor (N,C,H,W)")
    t = inputs[0].type.tensor_type
    if t.elem_type != onnx.TensorProto.FLOAT:
        try:
            kind = onnx.TensorProto.DataType.Name(t.elem_type)
        except ValueError:
            kind = f"type {t.elem_type}"
        raise BadInput(f"{name}: the image input must be float32, got {kind}")
    if len(t.shape.dim) != 4:
        raise BadInput(f"{name}: the image input must have rank 4 (N,C,H,W), got rank {len(t.shape.dim)}")
    c = t.shape.dim[1].dim_value
    if c not in (0, 1, 3):
        raise BadInput(f"{name}: input must have 1 or 3 channels (N,C,H,W), got C={c}")
    for o in model.graph.output:
        if not o.type.HasField("tensor_type"):
            raise BadInput(f"{name}: every output must be a tensor (sequences and maps are not supported)")


def onnx_io_shapes(
    path: str | os.PathLike[str] | None, model: Any = None
) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """Input shapes (with batch) and output shapes (without batch) of an ONNX model; unknown dims are -1."""
    if model is None:
        if path is None:
            raise BadInput("no ONNX file")
        model = load_onnx(path)
    inits = {i.name for i in model.graph.initializer}

    def dims(v: Any) -> tuple[int, ...]:
        return tuple(d.dim_value if d.dim_value > 0 else -1 for d in v.type.tensor_type.shape.dim)

    ins = [dims(i) for i in model.graph.input if i.name not in inits]
    outs = [dims(o)[1:] for o in model.graph.output]
    return ins, outs


def onnx_metadata(path: str | os.PathLike[str], model: Any = None) -> dict[str, str]:
    """The file's metadata properties (convlens records its preprocessing and labels there)."""
    if model is None:
        model = load_onnx(path)
    return {p.key: p.value for p in model.metadata_props}


def check_onnx_input(path: Path, ishape: tuple[int, ...], label: str | None = None) -> None:
    """The declared image input must be square and within the pixel budget (a huge one would exhaust memory)."""
    name = label or path.name
    h, w = int(ishape[-2]), int(ishape[-1])
    if h > 0 and w > 0 and h != w:
        raise BadInput(f"{name}: the input is {h}x{w}; convlens needs a square (N,C,S,S) image input")
    side = max(h, w)
    limit = cap("pixels")
    if side > 0 and side * side > limit:
        raise ResourceLimit(
            f"{name}: the model takes {side}x{side} = {side * side:,} pixel inputs, over the limit of "
            f"{limit:,} pixels; raise it with the environment variable {CAPS['pixels'].env}=N if this is genuine"
        )


def check_onnx_weights(path: Path, model: Any = None, label: str | None = None) -> None:
    """Refuse damaged float initializers and NaN or inf in them, like state dicts (external data is refused by
    `check_onnx` before this runs)."""
    from onnx import numpy_helper

    name = label or path.name
    if model is None:
        model = load_onnx(path)
    bad = []
    for t in model.graph.initializer:
        try:
            a = numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - damaged tensors raise ValueError, TypeError, KeyError, ...
            raise BadInput(
                f"{name}: a weight tensor is damaged (its data does not match its declared type and shape)"
            ) from None
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            bad.append(t.name)
    if bad:
        shown = ["".join(c if c.isprintable() else "?" for c in b)[:60] for b in bad[:3]]
        raise BadInput(f"{name}: weights contain NaN or inf in {len(bad)} tensor(s), e.g. {shown}")


@dataclass(frozen=True)
class OnnxFacts:
    """What the static checks learned: the image input's shape (with batch), every output's shape (without
    batch; -1 where unknown) and the metadata properties."""

    input_shape: tuple[int, ...]
    output_shapes: list[tuple[int, ...]]
    metadata: dict[str, str] = field(default_factory=dict)


def static_facts(path: Path, label: str | None = None) -> OnnxFacts:
    """Every check that needs no ONNX Runtime (parse, structure, input, weights), naming the file `label` in
    messages; returns the facts a loader builds a backbone from."""
    name = label or path.name
    model = load_onnx(path)
    try:
        check_onnx(path, model)
    except BadInput as e:
        raise BadInput(str(e).replace(path.name, name, 1)) from None
    (ishape,), outs = onnx_io_shapes(path, model)
    check_onnx_input(path, ishape, name)
    check_onnx_weights(path, model, name)
    return OnnxFacts(tuple(ishape), outs, onnx_metadata(path, model))


__all__ = [
    "OnnxFacts",
    "check_onnx",
    "check_onnx_input",
    "check_onnx_weights",
    "load_onnx",
    "onnx_io_shapes",
    "onnx_metadata",
    "static_facts",
    "uses_external_data",
]
