"""The pieces of a network cut for incremental occlusion, and their cached ONNX graphs, verified before use.

A crop `Stage` runs chain elements (lo, hi] on crops of the activation after `lo`; the `Tail` runs the rest of
the network whole and returns the taps. Each piece is exported through the one export path
(`accel.runtime.export.export_module`: SHA-256 sidecar, one builder across threads and processes) and, every
time a piece is opened, checked twice: the file must match the SHA-256 recorded when it was built, and its outputs
must equal its torch module's on a probe input (the one parity rule, `module_parity`). A cached graph that fails
either is rebuilt with a warning and recorded in the engine's meta; a fresh one that fails is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ..errors import BadInput
from .cache import cache_dir, clean_stale_temporaries
from .cuts import Geom, decomposed, relative
from .export import (
    DEFAULT_OPSET,
    PARITY_RTOL,
    GraphSpec,
    discard,
    export_module,
    module_parity,
    recorded_problem,
)
from .session import run_session

if TYPE_CHECKING:
    from ..backbone import Backbone

STAGE_VERSION = "v5"  # v5: the one export path's SHA-256 record (v4: a record of its own; v3: unchecked)
PARITY_PROBE = 48  # side of the probe input of a dynamic-H/W stage (rounded up to its stride)


class Tail(nn.Module):
    """The network after chain element k: the remaining chain, the head, pooling, flatten, the classifier;
    returns the taps ('logits', 'embedding')."""

    def __init__(self, net: Backbone, k: int, taps: Sequence[str]) -> None:
        super().__init__()
        dec = decomposed(net)
        self.rest = nn.Sequential(*[m for _, m in dec.chain[k + 1 :]])
        self.head = dec.head
        self.pool = dec.pool
        self.fc = dec.fc
        self.taps = list(taps)

    def forward(self, a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The taps of a batch of activations after chain element k."""
        h = self.rest(a)
        if self.head is not None:
            h = self.head(h)
        emb = self.pool(h).flatten(1)
        outs = []
        for t in self.taps:
            if t == "embedding":
                outs.append(emb)
            elif t == "logits":
                if self.fc is None:
                    raise BadInput("this backbone has no classifier head ('logits')")
                outs.append(self.fc(emb))
            else:
                raise BadInput(f"incremental occlusion supports the taps 'logits' and 'embedding', not {t!r}")
        return tuple(outs)


@dataclass
class Stage:
    """Chain elements (lo, hi] run on crops of the activation after `lo` (-1: the image)."""

    lo: int
    hi: int
    module: nn.Module
    in_shape: tuple[int, ...]
    gy: Geom  # field of the stage's output units in units of its input
    gx: Geom
    align: int
    sess: Any = None


def make_stages(net: Backbone, chain: list[tuple[str, nn.Module]], idx: list[int]) -> list[Stage]:
    """One crop stage per cut (chain indices `idx`): the chain elements after the previous cut, with their field
    relative to it."""
    stages = []
    prev, prev_rf, in_shape = -1, None, tuple(net.input_shape)
    for hi in idx:
        li = net.layer(chain[hi][0])
        if li.rf is None or li.rf.global_:
            raise BadInput(f"no local receptive field for {chain[hi][0]!r}")
        gy = relative(prev_rf, li.rf, 0, li.out_shape[1], chain[hi][0])
        gx = relative(prev_rf, li.rf, 1, li.out_shape[2], chain[hi][0])
        module = nn.Sequential(*[m for _, m in chain[prev + 1 : hi + 1]]).eval()
        stages.append(Stage(prev, hi, module, in_shape, gy, gx, int(max(gy.stride, gx.stride))))
        prev, prev_rf, in_shape = hi, li.rf, tuple(li.out_shape)
    return stages


def stage_path(net: Backbone, part: str, taps: Sequence[str]) -> Path:
    """Where the cached graph of one piece lives (keyed by weights, piece and, for the tail, taps)."""
    tag = "_".join(taps) if part.startswith("tail") else "act"
    name = net.name.replace("/", "_").replace("@", "_")
    return cache_dir() / f"incr-{name}-{net.weights_hash()[:16]}-{part}-{tag}-{STAGE_VERSION}.onnx"


def stage_session(path: Path) -> Any:
    """An ONNX Runtime session of a piece, pooled with the engine: shared by every caller, so no CPU arena where
    the process's malloc is tuned (`alloc.pooled_arena`)."""
    from .alloc import pooled_arena
    from .session import make_session

    sess, _, _ = make_session(
        path, ("CPUExecutionProvider",) if not torch.cuda.is_available() else None, arena=pooled_arena()
    )
    return sess


def _fold_pads(path: Path) -> None:
    """Fold zero Pads into the convolutions of a freshly exported piece (the export's finishing step)."""
    from .graphopt import fold_pads

    fold_pads(path)


def _spec(shape: tuple[int, ...], outputs: int, dynamic_hw: bool) -> GraphSpec:
    """How a piece is exported: one input, `outputs` outputs, a dynamic batch (and H/W for crop stages), zero
    pads folded into the convolutions."""
    axes = {0: "batch", 2: "h", 3: "w"} if dynamic_hw else {0: "batch"}
    outs = [f"o{i}" for i in range(outputs)]
    return GraphSpec(
        example=(torch.zeros(2, *shape),),
        input_names=["input"],
        output_names=outs,
        dynamic_axes={"input": axes, **{o: axes for o in outs}},
        opset=DEFAULT_OPSET,
        finish=_fold_pads,
    )


def _build(module: nn.Module, spec: GraphSpec, path: Path) -> None:
    """Export a missing piece (temporaries of killed builders removed first; stages of older formats after)."""
    clean_stale_temporaries(path.parent, prefix="incr-")
    export_module(module, spec, path)
    for old in path.parent.glob("incr-*-v[34].onnx*"):  # stages (and records) of the older formats
        old.unlink(missing_ok=True)


def _check_opened(path: Path, module: nn.Module, probe: tuple[int, ...]) -> tuple[Any, str | None]:
    """A session of the graph at `path` and None, or what is wrong with it: it does not open, or its outputs
    differ from `module`'s on a fixed probe input by more than the parity rule allows."""
    try:
        sess = stage_session(path)
        x = np.random.default_rng(0).random((1, *probe), dtype=np.float32)
        gap = module_parity(module, sess, [x])
    except Exception as e:  # noqa: BLE001 - a damaged graph can fail inside ONNX Runtime any way
        return None, f"does not open in ONNX Runtime ({type(e).__name__})"
    if gap <= PARITY_RTOL:
        return sess, None
    if gap == float("inf"):
        return None, "disagrees with the torch model (outputs of another number or shape, or NaN)"
    return None, f"disagrees with the torch model (max abs diff {gap:.3g} of the output scale)"


def verified_stage(
    net: Backbone,
    module: nn.Module,
    part: str,
    taps: Sequence[str],
    shape: tuple[int, ...],
    dynamic_hw: bool,
    rebuilt: list[dict[str, str]],
    align: int = 1,
) -> tuple[Path, Any]:
    """The cached ONNX graph of one piece and its session, verified before use: the file must match the
    SHA-256 recorded when it was built, and its outputs must equal `module`'s (parity) on a probe input.
    A cached graph that fails either is rebuilt with a warning (and listed in `rebuilt`); a fresh one that fails
    is refused. Stages with dynamic H/W are probed on a crop-sized input (a multiple of `align`, as the sweep's
    crops are): every weight takes part at any size, and torch's side of the check stays cheap."""
    path = stage_path(net, part, taps)
    probe = shape
    if dynamic_hw:
        side = align * -(-PARITY_PROBE // align)
        probe = (shape[0], min(shape[1], side), min(shape[2], side))
    spec = _spec(shape, len(taps) if isinstance(module, Tail) else 1, dynamic_hw)
    for _attempt in range(2):
        fresh = not path.exists()
        problem = None if fresh else recorded_problem(path)
        if problem is None:
            if fresh:
                _build(module, spec, path)
            sess, problem = _check_opened(path, module, probe)
            if problem is None:
                return path, sess
        if fresh:
            raise BadInput(
                f"incremental occlusion: the freshly exported {part} of {net.name!r} {problem}; "
                "use backend='torch' (or the plain sweep, engine='plain')"
            )
        warnings.warn(
            f"incremental occlusion: cached stage {path.name} {problem}; rebuilding it", stacklevel=4
        )
        rebuilt.append({"file": path.name, "problem": problem})
        discard(path)
    raise BadInput(  # pragma: no cover - another process kept writing a bad graph between our two attempts
        f"incremental occlusion: the cached {part} of {net.name!r} failed verification twice; use backend='torch'"
    )


def quantize_pieces(
    net: Backbone, paths: list[Path], tail_path: Path
) -> tuple[list[Path], Path, np.ndarray, list]:
    """Static INT8 (QDQ) copies of every stage and the tail, each calibrated on the fp32 activations the
    packaged photos produce at its input; also returns the held-out photos and their fp32 outputs."""
    from .quantize import packaged_photo_batches, quantize_int8

    calib, held = packaged_photo_batches(net)
    n = len(calib)
    a = np.concatenate([calib, held])  # one fp32 pass per piece serves calibration and the reference
    q_paths = []
    for path in paths:
        q_paths.append(quantize_int8(path, a[:n]))
        a = run_session(stage_session(path), {"input": a}, "INT8 calibration")[0]
    q_tail = quantize_int8(tail_path, a[:n])
    ref = run_session(stage_session(tail_path), {"input": a[n:]}, "INT8 calibration")
    return q_paths, q_tail, held, ref
