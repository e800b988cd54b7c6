"""Exact receptive fields of every layer, computed from the module graph (torch.fx), not measured.

Why: max-activating patches need the input region a unit sees, and the layer map shows (size, stride).
Measuring it with gradients is slow and fooled by dead units; the graph gives the exact geometry.

How: the module is traced symbolically (conv and pooling modules, and ``leaf_types``, stay leaves), the
graph is run once on a fake (shape-only) tensor to learn every node's shape and constant arguments, and
a (size, jump, start) triple per spatial axis is pushed through the nodes:

* conv / pool with kernel ``k``, stride ``s``, left padding ``p``, dilation ``d`` (``e = d*(k-1)+1``):
  ``size += (e-1)*jump``, ``start -= p*jump``, ``jump *= s``;
* pointwise and elementwise ops (activations, norms, dropout, add, mul, channel cat, ...) keep the field;
  with several inputs the field is the union of theirs (inputs must share the jump);
* explicit padding (``F.pad``, ``nn.ZeroPad2d``, TF "SAME" padding) shifts ``start``;
* global pooling, flatten/view, linear layers and reductions over spatial axes make the field global.

Conventions: coordinates are input pixels of the tensor given to the model (after preprocessing); ``start``
is the TOP-LEFT corner of unit (0, 0)'s field, unclipped, so it is negative where the field hangs over
the padded border. Unit ``(i, j)`` sees rows ``start[0] + i*stride[0]`` to that plus ``size[0]`` (exclusive).

Approximations, stated: normalisation statistics (instance/group/layer norm) are treated as constants,
so those layers count as pointwise; non-zero padding modes (reflect, replicate, circular) are treated like
zero padding (only border units differ); an adaptive pooling whose input does not divide evenly by its
output size is reported as global (its windows have varying sizes). Modules called more than once report
the field of their last call (what a forward hook that keeps the last output sees).
"""

from __future__ import annotations

import math
import operator
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["RF", "ReceptiveFieldError", "receptive_fields", "rf_for"]


class ReceptiveFieldError(ValueError):
    """The module graph cannot be analysed (untraceable, or an op whose geometry is unknown)."""


@dataclass(frozen=True)
class RF:
    """Receptive field of the units of one layer, in input pixels.

    size: (h, w) extent of one unit's field. stride: (h, w) input pixels between adjacent units (the
    "jump"). start: (top, left) input coordinate of the top-left corner of unit (0, 0)'s field, unclipped
    (negative where it overhangs the padding). global_: the units see the whole image (after global
    pooling, flatten, linear); then size is the input size, stride (0, 0) and start (0, 0).
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    start: tuple[float, float]
    global_: bool = False

    def box(self, i: int, j: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (i, j)'s field clipped to a height x width image.

        bottom/right are exclusive, so ``img[top:bottom, left:right]`` crops the field.
        """
        if self.global_:
            return 0, 0, height, width
        top = math.floor(self.start[0] + i * self.stride[0])
        left = math.floor(self.start[1] + j * self.stride[1])
        bottom, right = top + self.size[0], left + self.size[1]
        return (
            min(max(top, 0), height),
            min(max(left, 0), width),
            min(max(bottom, 0), height),
            min(max(right, 0), width),
        )

    def center(self, i: int, j: int) -> tuple[float, float]:
        """Input coordinate (row, col) of the centre of unit (i, j)'s field (unclipped)."""
        if self.global_:
            return (self.size[0] - 1) / 2, (self.size[1] - 1) / 2
        return (
            self.start[0] + i * self.stride[0] + (self.size[0] - 1) / 2,
            self.start[1] + j * self.stride[1] + (self.size[1] - 1) / 2,
        )


# --------------------------------------------------------------------------------------------------
# internal geometry: one entry per spatial axis of a tensor


@dataclass(frozen=True)
class _Geo:
    """Field of a node's units: per spatial axis (size, jump, start) and where those axes sit."""

    size: tuple[int, ...] = ()
    jump: tuple[int, ...] = ()
    start: tuple[int, ...] = ()
    axes: tuple[int, ...] = ()  # tensor dims holding the spatial axes (H, W) or (L,)
    global_: bool = False


_GLOBAL = _Geo(global_=True)

_CONV = (nn.Conv1d, nn.Conv2d)
_MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d)
_AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d)
_LPPOOL = (nn.LPPool1d, nn.LPPool2d)
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_PADS = (
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
)
_SPATIAL_LEAVES = (nn.modules.conv._ConvNd, *_MAXPOOL, *_AVGPOOL, *_LPPOOL, *_ADAPTIVE, *_PADS)

_CONV_FNS = {"conv1d", "conv2d"}
_MAXPOOL_FNS = {
    "max_pool1d",
    "max_pool2d",
    "_max_pool1d",
    "_max_pool2d",
    "max_pool1d_with_indices",
    "max_pool2d_with_indices",
}
_AVGPOOL_FNS = {"avg_pool1d", "avg_pool2d"}
_ADAPTIVE_FNS = {
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "_adaptive_max_pool1d",
    "_adaptive_max_pool2d",
    "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices",
}
_PAD_FNS = {"pad", "constant_pad_nd"}
_RESHAPE_FNS = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "unflatten", "view_as", "reshape_as"}
_REDUCE_FNS = {
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "logsumexp",
    "prod",
    "nansum",
    "nanmean",
    "std",
    "var",
    "median",
    "argmax",
    "argmin",
    "all",
    "any",
}
_DIM_FNS = {"softmax", "log_softmax", "softmin", "cumsum", "cumprod"}  # pointwise unless dim is spatial
_MIXER_FNS = {"flip", "fliplr", "flipud", "roll", "rot90", "grid_sample", "affine_grid"}


def _fn_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


_TRACE_LOCK = threading.Lock()  # fx patches nn.Module.__call__ / __getattr__ process-wide while it traces


class _Tracer(fx.Tracer):
    """fx tracer keeping conv/pool/pad modules and ``leaf_types`` as leaves; remembers module outputs.

    Thread-safe: fx patches `nn.Module.__call__` for the whole process while tracing, so a forward pass in another
    thread would be traced into this graph (and fail: "module is not installed as a submodule"). Calls and
    attribute reads from any thread but the tracing one pass straight through, and traces run one at a time."""

    def __init__(self, leaf_types: tuple[type, ...]) -> None:
        super().__init__()
        self._leaf_types = tuple(leaf_types)
        self.outputs: dict[str, fx.Node] = {}
        self._thread = threading.get_ident()

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        with _TRACE_LOCK:
            self._thread = threading.get_ident()
            return super().trace(root, concrete_args)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if threading.get_ident() != self._thread:  # another thread's forward: plain attribute
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, _SPATIAL_LEAVES) or (self._leaf_types and isinstance(m, self._leaf_types)):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if (
            threading.get_ident() != self._thread
        ):  # another thread's forward during the trace: run it untraced
            return forward(*args, **kwargs)
        out = super().call_module(m, forward, args, kwargs)
        try:
            name = self.path_of_module(m)
        except NameError:
            name = None
        if name is not None and isinstance(out, fx.Proxy):
            self.outputs[name] = out.node  # last call wins
        return out


class _Recorder(fx.Interpreter):
    """Runs the graph once and keeps every node's value, tensors as data-free meta tensors of the same shape,
    dtype and strides (so memory stays that of one forward pass: each real activation is freed after its last use)."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = _meta_like(out)
        return out


def _meta_like(v: Any) -> Any:
    """`v` with every tensor replaced by an empty meta tensor of the same shape, strides and dtype."""
    if isinstance(v, torch.Tensor):
        return torch.empty_strided(tuple(v.shape), tuple(v.stride()), dtype=v.dtype, device="meta")
    if isinstance(v, (tuple, list)):
        return (
            type(v)(_meta_like(x) for x in v) if not hasattr(v, "_fields") else type(v)(*map(_meta_like, v))
        )
    if isinstance(v, dict):
        return {k: _meta_like(x) for k, x in v.items()}
    return v


def _record_values(gm: fx.GraphModule, x_shape: Sequence[int], device: torch.device, dtype: torch.dtype):
    """Node values (shapes) from one real run on a zero tensor. Not FakeTensorMode: constructing it imports
    torch._dynamo (+150 MiB resident in every process that asks for a layer index)."""
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(torch.zeros(tuple(x_shape), device=device, dtype=dtype))
    return rec.values


# --------------------------------------------------------------------------------------------------
# geometry rules


def _tup(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return (int(v[0]),) * n
        return tuple(int(x) for x in v)
    return (int(v),) * n


def _arg(args: Sequence[Any], kwargs: dict[str, Any], idx: int, name: str, default: Any) -> Any:
    if len(args) > idx:
        return args[idx]
    return kwargs.get(name, default)


def _nodes_in(obj: Any) -> list[fx.Node]:
    found: list[fx.Node] = []

    def keep(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg(obj, keep)
    return found


def _shape_of(v: Any) -> tuple[int, ...] | None:
    return tuple(v.shape) if isinstance(v, torch.Tensor) else None


class _Propagator:
    """Pushes _Geo through the graph, node by node."""

    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, Any], local_gates: bool) -> None:
        self.gm = gm
        self.values = values
        self.local_gates = local_gates
        self.modules = dict(gm.named_modules())
        self.geo: dict[fx.Node, _Geo | None] = {}
        self.first_placeholder: fx.Node | None = None

    # -- helpers ------------------------------------------------------------------------------------
    def fail(self, node: fx.Node, why: str) -> ReceptiveFieldError:
        if node.op == "call_module":
            what = f"module {node.target!r} ({type(self.modules[node.target]).__name__})"
        else:
            what = f"{node.op} {_fn_name(node)!r}"
        return ReceptiveFieldError(f"receptive field: node {node.name!r} ({what}): {why}")

    def concrete(self, obj: Any) -> Any:
        return fx.node.map_arg(obj, lambda n: self.values.get(n))

    def in_geos(self, node: fx.Node) -> list[tuple[fx.Node, _Geo]]:
        out = []
        for n in _nodes_in((node.args, node.kwargs)):
            g = self.geo.get(n)
            if g is not None:
                out.append((n, g))
        return out

    def local_input(self, node: fx.Node) -> tuple[fx.Node, _Geo] | _Geo | None:
        """The node's first spatial input and its field; None without one, _GLOBAL when it sees everything.

        Every windowed or layout rule starts here: no spatial input means no field, a global input stays global.
        """
        ins = self.in_geos(node)
        if not ins:
            return None
        return _GLOBAL if ins[0][1].global_ else ins[0]

    def sizes_at(self, v: Any, axes: tuple[int, ...]) -> tuple[int, ...] | None:
        shp = _shape_of(v)
        if shp is None or any(a >= len(shp) for a in axes):
            return None
        return tuple(shp[a] for a in axes)

    def same_layout(self, in_v: Any, g: _Geo, out_v: Any) -> bool:
        si, so = _shape_of(in_v), _shape_of(out_v)
        if si is None or so is None or len(si) != len(so):
            return False
        return self.sizes_at(in_v, g.axes) == self.sizes_at(out_v, g.axes)

    # -- rules --------------------------------------------------------------------------------------
    def window(
        self,
        node: fx.Node,
        src: fx.Node,
        g: _Geo,
        kernel: tuple[int, ...],
        stride: tuple[int, ...],
        pad_left: tuple[int, ...],
        pad_right: tuple[int, ...],
        dilation: tuple[int, ...],
        ceil_mode: bool = False,
    ) -> _Geo:
        """A sliding window (conv or pool) over the trailing spatial axes."""
        nd = len(g.axes)
        in_shape = _shape_of(self.values[src])
        out_shape = _shape_of(self.values[node])
        if in_shape is None or g.axes != tuple(range(len(in_shape) - nd, len(in_shape))):
            raise self.fail(node, "window op on a tensor whose spatial axes are not the trailing ones")
        if len(kernel) != nd:
            raise self.fail(node, f"{len(kernel)}-d window on a tensor with {nd} spatial axes")
        size, jump, start = list(g.size), list(g.jump), list(g.start)
        for a in range(nd):
            eff = dilation[a] * (kernel[a] - 1) + 1
            length = in_shape[g.axes[a]]
            span = length + pad_left[a] + pad_right[a] - eff
            if span < 0:
                raise self.fail(node, f"window {eff} larger than padded input {length}")
            n_out = (-(-span // stride[a]) if ceil_mode else span // stride[a]) + 1
            if ceil_mode and (n_out - 1) * stride[a] >= length + pad_left[a]:
                n_out -= 1
            if out_shape is not None and out_shape[g.axes[a]] != n_out:
                raise self.fail(
                    node,
                    f"output size {out_shape[g.axes[a]]} along axis {g.axes[a]} does not match kernel "
                    f"{kernel[a]}, stride {stride[a]}, padding ({pad_left[a]}, {pad_right[a]}), dilation "
                    f"{dilation[a]} (expected {n_out}); a conv subclass that pads in forward must set "
                    "`same_padding = True`",
                )
            size[a] = size[a] + (eff - 1) * jump[a]
            start[a] = start[a] - pad_left[a] * jump[a]
            jump[a] = jump[a] * stride[a]
        return _Geo(tuple(size), tuple(jump), tuple(start), g.axes)

    def conv_module(self, node: fx.Node, m: nn.modules.conv._ConvNd) -> _Geo | None:
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        if not isinstance(m, _CONV):
            raise self.fail(node, f"{type(m).__name__} is not supported (only 1-d and 2-d convolutions)")
        nd = len(g.axes)
        k, s, d = _tup(m.kernel_size, nd), _tup(m.stride, nd), _tup(m.dilation, nd)
        in_sizes = self.sizes_at(self.values[src], g.axes) or (0,) * nd
        pre_l, pre_r = [0] * nd, [0] * nd
        # a conv subclass holding its own pad module (EfficientNet's "static same padding" pattern)
        if type(m) not in _CONV:
            for child in m.children():
                if isinstance(child, _PADS):
                    pl, pr = self.pad_amounts(child.padding, nd)
                    pre_l = [a + b for a, b in zip(pre_l, pl)]
                    pre_r = [a + b for a, b in zip(pre_r, pr)]
        if getattr(m, "same_padding", False) is True or "DynamicSamePadding" in type(m).__name__:
            for a in range(nd):
                length = in_sizes[a] + pre_l[a] + pre_r[a]
                total = max((-(-length // s[a]) - 1) * s[a] + (k[a] - 1) * d[a] + 1 - length, 0)
                pre_l[a] += total // 2
                pre_r[a] += total - total // 2
        if isinstance(m.padding, str):
            p_l, p_r = self.string_padding(m.padding, k, d)
        else:
            p = _tup(m.padding, nd)
            p_l, p_r = p, p
        left = tuple(a + b for a, b in zip(pre_l, p_l))
        right = tuple(a + b for a, b in zip(pre_r, p_r))
        return self.window(node, src, g, k, s, left, right, d)

    @staticmethod
    def string_padding(mode: str, k: tuple[int, ...], d: tuple[int, ...]):
        if mode == "valid":
            return (0,) * len(k), (0,) * len(k)
        total = [di * (ki - 1) for ki, di in zip(k, d)]
        return tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)

    @staticmethod
    def pad_amounts(pad: Any, nd: int) -> tuple[list[int], list[int]]:
        """F.pad order (last axis first: left, right, top, bottom) -> per spatial axis (left, right)."""
        if isinstance(pad, int):
            pad = (pad,) * (2 * nd)
        pad = [int(p) for p in pad]
        left, right = [0] * nd, [0] * nd
        for a in range(nd):
            pos = nd - 1 - a  # 0 = last axis
            if 2 * pos + 1 < len(pad):
                left[a], right[a] = pad[2 * pos], pad[2 * pos + 1]
        return left, right

    def pad(self, node: fx.Node, pad: Any) -> _Geo | None:
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        shp = _shape_of(self.values[src])
        nd = len(g.axes)
        if shp is None or g.axes != tuple(range(len(shp) - nd, len(shp))):
            raise self.fail(node, "padding a tensor whose spatial axes are not the trailing ones")
        left, _ = self.pad_amounts(pad, nd)
        start = tuple(s - p * j for s, p, j in zip(g.start, left, g.jump))
        return _Geo(g.size, g.jump, start, g.axes)

    def pool(self, node: fx.Node, kind: str, args: Sequence[Any], kwargs: dict[str, Any]) -> _Geo | None:
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        nd = len(g.axes)
        k = _tup(_arg(args, kwargs, 1, "kernel_size", 1), nd)
        stride = _arg(args, kwargs, 2, "stride", None)
        no_stride = stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0)
        s = k if no_stride else _tup(stride, nd)
        p = _tup(_arg(args, kwargs, 3, "padding", 0), nd)
        if kind == "max":
            d = _tup(_arg(args, kwargs, 4, "dilation", 1), nd)
            ceil = bool(_arg(args, kwargs, 5, "ceil_mode", False))
        else:
            d = (1,) * nd
            ceil = bool(_arg(args, kwargs, 4, "ceil_mode", False))
        return self.window(node, src, g, k, s, p, p, d, ceil)

    def pool_module(self, node: fx.Node, m: nn.Module) -> _Geo | None:
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        nd = len(g.axes)
        k = _tup(m.kernel_size, nd)
        s = k if m.stride is None else _tup(m.stride, nd)
        if isinstance(m, _LPPOOL):
            p, d = (0,) * nd, (1,) * nd
        else:
            p = _tup(m.padding, nd)
            d = _tup(getattr(m, "dilation", 1), nd)
        return self.window(node, src, g, k, s, p, p, d, bool(getattr(m, "ceil_mode", False)))

    def adaptive(self, node: fx.Node) -> _Geo | None:
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        in_sizes = self.sizes_at(self.values[src], g.axes)
        out_sizes = self.sizes_at(self.values[node], g.axes)
        if in_sizes is None or out_sizes is None:
            raise self.fail(node, "cannot read the adaptive pooling's shapes")
        if all(o == 1 for o in out_sizes) or any(i % o for i, o in zip(in_sizes, out_sizes)):
            return _GLOBAL  # 1x1 output, or uneven windows: every unit treated as seeing everything
        k = tuple(i // o for i, o in zip(in_sizes, out_sizes))
        nd = len(g.axes)
        return self.window(node, src, g, k, k, (0,) * nd, (0,) * nd, (1,) * nd)

    def union(self, node: fx.Node) -> _Geo | None:
        """Elementwise / pointwise op: output units see the union of their inputs' fields."""
        ins = self.in_geos(node)
        if not ins:
            return None
        out_v = self.values.get(node)
        spatial = [(n, g) for n, g in ins if not g.global_]
        if len(spatial) < len(ins) and not (self.local_gates and spatial):
            return _GLOBAL if _has_tensor(out_v) else None
        ref_n, ref = spatial[0]
        for n, g in spatial[1:]:
            if g.axes != ref.axes:
                raise self.fail(node, f"inputs {ref_n.name!r} and {n.name!r} have different layouts")
            if g.jump != ref.jump:
                raise self.fail(
                    node, f"inputs {ref_n.name!r} (stride {ref.jump}) and {n.name!r} (stride {g.jump}) differ"
                )
        outs = _tensors(out_v)
        if not outs or any(not self.same_layout(self.values[ref_n], ref, o) for o in outs):
            raise self.fail(
                node,
                f"changes the spatial size ({_shape_of(self.values[ref_n])} -> "
                f"{[tuple(o.shape) for o in outs] or type(out_v).__name__}) and its geometry is unknown",
            )
        lo = [min(g.start[a] for _, g in spatial) for a in range(len(ref.axes))]
        hi = [max(g.start[a] + g.size[a] for _, g in spatial) for a in range(len(ref.axes))]
        return _Geo(tuple(h - low for h, low in zip(hi, lo)), ref.jump, tuple(lo), ref.axes)

    def reshape(self, node: fx.Node) -> _Geo | None:
        """flatten / view / reshape / squeeze: same layout keeps the field, merged spatial axes -> global."""
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        in_v, out_v = self.values[src], self.values[node]
        si, so = _shape_of(in_v), _shape_of(out_v)
        if si is None or so is None:
            return _GLOBAL if _has_tensor(out_v) else None
        nd = len(g.axes)
        trailing = g.axes == tuple(range(len(si) - nd, len(si)))
        if (
            trailing
            and len(so) >= nd + 1
            and so[-nd:] == si[-nd:]
            and math.prod(so[:-nd]) == math.prod(si[:-nd])
        ):
            axes = tuple(range(len(so) - nd, len(so)))
            return _Geo(g.size, g.jump, g.start, axes)
        return _GLOBAL

    def reduce(self, node: fx.Node, args: Sequence[Any], kwargs: dict[str, Any]) -> _Geo | None:
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        if len(args) > 1 and isinstance(args[1], torch.Tensor):  # torch.max(a, b): elementwise
            return self.union(node)
        in_shape = _shape_of(self.values[src])
        out_v = self.values[node]
        out = out_v if isinstance(out_v, torch.Tensor) else next(iter(_tensors(out_v)), None)
        if in_shape is None or out is None:
            return _GLOBAL if _has_tensor(out_v) else None
        dim = _arg(args, kwargs, 1, "dim", None)
        if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
            return _GLOBAL
        dims = {int(x) % len(in_shape) for x in (dim if isinstance(dim, (list, tuple)) else (dim,))}
        if dims & set(g.axes):
            return _GLOBAL
        keep = out.dim() == len(in_shape)
        axes = g.axes if keep else tuple(a - sum(1 for x in dims if x < a) for a in g.axes)
        if self.sizes_at(out, axes) != self.sizes_at(self.values[src], g.axes):
            raise self.fail(node, "reduction output layout not understood")
        return _Geo(g.size, g.jump, g.start, axes)

    def with_dim(self, node: fx.Node, args: Sequence[Any], kwargs: dict[str, Any]) -> _Geo | None:
        """softmax / cumsum along a dim: pointwise unless that dim is spatial (then global)."""
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        dim = _arg(args, kwargs, 1, "dim", None)
        shp = _shape_of(self.values[src])
        if dim is None or shp is None or (int(dim) % len(shp)) in g.axes:
            return _GLOBAL
        return self.union(node)

    def permute(self, node: fx.Node, name: str, args: Sequence[Any]) -> _Geo | None:
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        shp = _shape_of(self.values[src])
        if shp is None:
            raise self.fail(node, "cannot read the input shape")
        n = len(shp)
        if name == "permute":
            perm = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            perm = [int(p) % n for p in perm]
        else:  # transpose / swapaxes / swapdims / movedim with two ints
            a, b = int(args[1]) % n, int(args[2]) % n
            perm = list(range(n))
            if name == "movedim":
                perm.remove(a)
                perm.insert(b, a)
            else:
                perm[a], perm[b] = perm[b], perm[a]
        axes = tuple(perm.index(a) for a in g.axes)
        if list(axes) != sorted(axes):
            raise self.fail(node, "swaps the spatial axes with each other")
        return _Geo(g.size, g.jump, g.start, axes)

    def linear(self, node: fx.Node) -> _Geo | None:
        """Linear layers mix their last axis: pointwise on channels-last maps, global otherwise."""
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        shp = _shape_of(self.values[src])
        if shp is None or (len(shp) - 1) in g.axes:
            return _GLOBAL
        return self.union(node)

    def getitem(self, node: fx.Node) -> _Geo | None:
        src = node.args[0]
        if not isinstance(src, fx.Node):
            return None
        g = self.geo.get(src)
        if g is None:
            return None
        src_v = self.values.get(src)
        if not isinstance(src_v, torch.Tensor):
            return g if _has_tensor(self.values.get(node)) else None  # element of a tuple output
        if g.global_:
            return _GLOBAL
        return self.slice(node, g, src_v, self.concrete(node.args[1]))

    def slice(self, node: fx.Node, g: _Geo, src_v: torch.Tensor, index: Any) -> _Geo:
        idx = list(index) if isinstance(index, tuple) else [index]
        used = sum(1 for t in idx if t is not None and t is not Ellipsis)
        if any(not (t is None or t is Ellipsis or isinstance(t, (int, slice))) for t in idx):
            raise self.fail(node, "advanced indexing of a spatial tensor is not supported")
        if Ellipsis in idx:
            e = idx.index(Ellipsis)
            idx[e : e + 1] = [slice(None)] * (src_v.dim() - used)
        idx += [slice(None)] * (src_v.dim() - sum(1 for t in idx if t is not None))
        size, jump, start = list(g.size), list(g.jump), list(g.start)
        axes = [0] * len(g.axes)
        d_in = d_out = 0
        for t in idx:
            if t is None:
                d_out += 1
                continue
            if d_in in g.axes:
                a = g.axes.index(d_in)
                if not isinstance(t, slice):
                    raise self.fail(node, "integer index on a spatial axis")
                lo, _, step = t.indices(src_v.shape[d_in])
                start[a] += lo * jump[a]
                jump[a] *= step
                axes[a] = d_out
            if isinstance(t, slice):
                d_out += 1
            d_in += 1
        return _Geo(tuple(size), tuple(jump), tuple(start), tuple(axes))

    # -- dispatch -----------------------------------------------------------------------------------
    def node_geo(self, node: fx.Node, input_geo: _Geo) -> _Geo | None:
        if node.op == "placeholder":
            return input_geo if node is self.first_placeholder else None
        if node.op in ("get_attr", "output"):
            return None
        if not self.in_geos(node):
            return None
        args, kwargs = self.concrete(node.args), self.concrete(node.kwargs)
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, nn.modules.conv._ConvNd):
                return self.conv_module(node, m)
            if isinstance(m, (*_MAXPOOL, *_AVGPOOL, *_LPPOOL)):
                return self.pool_module(node, m)
            if isinstance(m, _ADAPTIVE):
                return self.adaptive(node)
            if isinstance(m, _PADS):
                return self.pad(node, m.padding)
            if isinstance(m, (nn.Flatten, nn.Unflatten)):
                return self.reshape(node)
            if isinstance(m, (nn.Linear, nn.Bilinear)):
                return self.linear(node)
            if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
                return self.with_dim(node, (None, m.dim), {})
            for child in m.modules():
                spatial = isinstance(child, (*_MAXPOOL, *_AVGPOOL, *_LPPOOL, *_ADAPTIVE, *_PADS)) or (
                    isinstance(child, nn.modules.conv._ConvNd)
                    and any(k > 1 for k in _tup(child.kernel_size, 1) + _tup(child.stride, 1))
                )
                if spatial:
                    raise self.fail(node, f"leaf module contains spatial layer {type(child).__name__}")
            return self.union(node)
        name = _fn_name(node)
        if node.op == "call_function" and node.target is operator.getitem:
            return self.getitem(node)
        if name in _CONV_FNS:
            return self.conv_fn(node, args, kwargs)
        if name in _MAXPOOL_FNS:
            return self.pool(node, "max", args, kwargs)
        if name in _AVGPOOL_FNS:
            return self.pool(node, "avg", args, kwargs)
        if name in _ADAPTIVE_FNS:
            return self.adaptive(node)
        if name in _PAD_FNS:
            return self.pad(node, _arg(args, kwargs, 1, "pad", 0))
        if name in _RESHAPE_FNS:
            return self.reshape(node)
        if name in _REDUCE_FNS:
            return self.reduce(node, args, kwargs)
        if name in _DIM_FNS:
            return self.with_dim(node, args, kwargs)
        if name in ("permute", "transpose", "swapaxes", "swapdims", "movedim"):
            return self.permute(node, name, args)
        if name in ("linear", "matmul", "mm", "bmm", "einsum"):
            return self.linear(node) if name == "linear" else _GLOBAL
        if name in _MIXER_FNS:
            raise self.fail(node, "rearranges pixels; its receptive field is not a box")
        return self.union(node)

    def conv_fn(self, node: fx.Node, args: Sequence[Any], kwargs: dict[str, Any]) -> _Geo | None:
        src_g = self.local_input(node)
        if not isinstance(src_g, tuple):
            return src_g
        src, g = src_g
        nd = len(g.axes)
        weight = _arg(args, kwargs, 1, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise self.fail(node, "cannot read the convolution weight")
        k = tuple(int(x) for x in weight.shape[2:])
        s = _tup(_arg(args, kwargs, 3, "stride", 1), nd)
        d = _tup(_arg(args, kwargs, 5, "dilation", 1), nd)
        padding = _arg(args, kwargs, 4, "padding", 0)
        if isinstance(padding, str):
            p_l, p_r = self.string_padding(padding, k, d)
        else:
            p_l = p_r = _tup(padding, nd)
        return self.window(node, src, g, k, s, p_l, p_r, d)

    def run(self, input_geo: _Geo) -> dict[fx.Node, _Geo | None]:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        self.first_placeholder = placeholders[0] if placeholders else None
        for node in self.gm.graph.nodes:
            self.geo[node] = self.node_geo(node, input_geo)
        return self.geo


def _tensors(v: Any) -> list[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (list, tuple)):
        return [t for x in v for t in _tensors(x)]
    return []


def _has_tensor(v: Any) -> bool:
    return bool(_tensors(v))


def _to_rf(g: _Geo, hw: tuple[int, int]) -> RF:
    if g.global_:
        return RF(size=hw, stride=(0, 0), start=(0.0, 0.0), global_=True)
    if len(g.axes) == 1:  # 1-d signal: the height axis is a single row
        return RF(size=(1, g.size[0]), stride=(1, g.jump[0]), start=(0.0, float(g.start[0])))
    return RF(
        size=(g.size[0], g.size[1]),
        stride=(g.jump[0], g.jump[1]),
        start=(float(g.start[0]), float(g.start[1])),
    )


def _param_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def receptive_fields(
    module: nn.Module,
    input_shape: tuple[int, ...] = (1, 3, 224, 224),
    leaf_types: tuple[type, ...] = (),
    local_gates: bool = False,
) -> dict[str, RF]:
    """Exact receptive field of every module (by ``named_modules()`` name) whose output is spatial or global.

    ``input_shape`` is (N, C, H, W) (or (N, C, L) for 1-d nets); sizes matter for TF "SAME" padding and
    adaptive pooling. ``leaf_types`` are module types fx must not trace into (their output must keep the
    spatial size, or an error is raised). ``local_gates``: ignore global inputs of elementwise ops (so an
    SE / attention gate multiplying a map keeps the map's local field; exact analysis says global).
    The root module is reported under ``""``. Raises ReceptiveFieldError (a ValueError) when the module
    cannot be traced or contains an op whose geometry is unknown.
    """
    if len(input_shape) not in (3, 4):
        raise ReceptiveFieldError(f"input_shape must be (N, C, H, W) or (N, C, L), got {tuple(input_shape)}")
    nd = len(input_shape) - 2
    hw = (int(input_shape[2]), int(input_shape[3])) if nd == 2 else (1, int(input_shape[2]))
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        tracer = _Tracer(tuple(leaf_types))
        try:
            graph = tracer.trace(module)
        except Exception as exc:
            raise ReceptiveFieldError(
                f"receptive field: cannot trace {type(module).__name__} with torch.fx ({type(exc).__name__}: "
                f"{exc}); pass the offending module types as leaf_types"
            ) from exc
        gm = fx.GraphModule(tracer.root, graph)
        device, dtype = _param_device_dtype(module)
        try:
            values = _record_values(gm, input_shape, device, dtype)
        except Exception as exc:
            raise ReceptiveFieldError(
                f"receptive field: running the traced {type(module).__name__} on shape {tuple(input_shape)} "
                f"failed ({type(exc).__name__}: {exc})"
            ) from exc
        input_geo = _Geo((1,) * nd, (1,) * nd, (0,) * nd, tuple(range(2, 2 + nd)))
        geo = _Propagator(gm, values, local_gates).run(input_geo)
    finally:
        for m, mode in modes.items():
            m.training = mode

    node_of = dict(tracer.outputs)
    outs = [n for n in graph.nodes if n.op == "output"]
    if outs and isinstance(outs[0].args[0], fx.Node):
        node_of[""] = outs[0].args[0]
    result: dict[str, RF] = {}
    for name, _ in module.named_modules():
        node = node_of.get(name)
        g = geo.get(node) if node is not None else None
        if g is not None:
            result[name] = _to_rf(g, hw)
    return result


def rf_for(
    module: nn.Module,
    layer_name: str,
    input_shape: tuple[int, ...] = (1, 3, 224, 224),
    leaf_types: Iterable[type] = (),
) -> RF:
    """Receptive field of one named layer; ValueError naming the known layers if it has none."""
    fields = receptive_fields(module, input_shape, tuple(leaf_types))
    if layer_name not in fields:
        known = ", ".join(list(fields)[:20])
        raise ReceptiveFieldError(
            f"receptive field: no spatial layer named {layer_name!r} (known: {known}{', ...' if len(fields) > 20 else ''})"
        )
    return fields[layer_name]
