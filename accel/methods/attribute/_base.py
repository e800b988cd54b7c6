"""Shared machinery for attribution methods: targets, gradients, rectifier backward rules, baselines, CAM base.

Every attribution map is float32 HxW at the preprocessed input size and is not normalised. Gradient work runs
on `net.module` with torch autograd; forward-only perturbation work goes through `accel.runner(...).sweep`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.overrides import TorchFunctionMode

from ...errors import BadInput
from ...result import Result

if TYPE_CHECKING:
    from ...zoo import Backbone

Progress = Callable[[float, str], None] | None

REDUCTIONS = ("abs_max", "max", "sum", "abs_sum", "l2")
BACKENDS = ("auto", "torch", "onnxruntime")


# ------------------------------------------------------------------------------------------------ inputs, targets


def input_tensor(net: Backbone, img: Image.Image) -> torch.Tensor:
    """The preprocessed network input (1,C,H,W) float32 for one PIL image."""
    if not isinstance(img, Image.Image):
        raise BadInput(f"expected a PIL image (use accel.open_image), got {type(img).__name__}")
    return net.preprocess(img).float().detach()


def require_head(net: Backbone, method: str) -> None:
    """BadInput unless the backbone has class scores (a classifier head)."""
    if not net.has_head:
        raise BadInput(
            f"{method} explains a class score, but {net.name!r} has no classifier head; "
            "choose a classifier (e.g. efficientnet_lite0, fashion_cnn) or, for guided_backprop/deconvnet, "
            "a layer and channel"
        )


@torch.no_grad()
def torch_logits(net: Backbone, x: torch.Tensor) -> np.ndarray:
    """Class scores (N, classes) of a preprocessed batch, computed with the torch module."""
    return net.require_module("computing class scores")(x).float().numpy()


def resolve_target(net: Backbone, target: int | None, logits: np.ndarray, method: str = "attribution") -> int:
    """The class to explain: `target` validated against the head, or the predicted class when None."""
    require_head(net, method)
    t = net.check_target(target)
    if t is None:
        t = int(np.argmax(logits.reshape(-1)))
    return t


def target_meta(net: Backbone, t: int, logits: np.ndarray) -> dict[str, Any]:
    """Index, label, logit and softmax probability of class `t` for the meta of a result."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    p = np.exp(z - z.max())
    p /= p.sum()
    label = net.labels[t] if net.labels and t < len(net.labels) else str(t)
    return {"index": int(t), "label": label, "logit": float(z[t]), "probability": float(p[t])}


def second_class(logits: np.ndarray, exclude: int) -> int:
    """The highest-scoring class other than `exclude` (the default foil of a contrastive map)."""
    z = np.asarray(logits, dtype=np.float64).reshape(-1).copy()
    z[exclude] = -np.inf
    return int(np.argmax(z))


class Score:
    """A linear combination of logits, e.g. {281: 1} (class score) or {281: 1, 282: -1} (contrast)."""

    def __init__(self, coefs: dict[int, float]) -> None:
        if not coefs:
            raise BadInput("a score needs at least one class")
        self.coefs = {int(k): float(v) for k, v in coefs.items()}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-sample score (N,) from logits (N, classes)."""
        out = logits.new_zeros(logits.shape[0])
        for k, v in self.coefs.items():
            out = out + v * logits[:, k]
        return out

    def __repr__(self) -> str:
        return " ".join(f"{v:+g}*logit[{k}]" for k, v in self.coefs.items())


# ------------------------------------------------------------------------------------------------ layers


def check_layer(net: Backbone, layer: str, spatial: bool = True) -> str:
    """Validate a layer name from `net.layers()`; with `spatial`, require a (C,H,W) feature map."""
    info = net.layer(layer)  # BadInput with suggestions when unknown
    if spatial and len(info.out_shape) != 3:
        convs = [li.name for li in net.conv_layers()]
        raise BadInput(
            f"layer {layer!r} of {net.name!r} outputs shape {info.out_shape}, not a (C,H,W) feature map; "
            f"choose a convolutional layer, e.g. {convs[-3:]}"
        )
    return layer


def default_cam_layer(net: Backbone) -> str:
    """The backbone's declared CAM layer, else the last layer with a spatial map larger than 1x1."""
    if net.module is None:
        raise BadInput(
            f"{net.name!r} is a forward-only ONNX file that exposes only its logits; CAM methods need a conv "
            "layer's activations: load the PyTorch weights (a zoo name or a checkpoint) instead"
        )
    if net.cam_layer:
        return net.cam_layer
    spatial = [li.name for li in net.conv_layers() if li.out_shape[1] > 1 or li.out_shape[2] > 1]
    if not spatial:
        raise BadInput(f"{net.name!r} has no convolutional layer with a spatial output for a CAM")
    return spatial[-1]


# ------------------------------------------------------------------------------------------------ rectifier rules


class _Rectify(torch.autograd.Function):
    """clamp(x, lo, hi) forward; backward by a modified rule (guided backprop or deconvnet)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: float, hi: float, rule: str) -> torch.Tensor:
        ctx.rule = rule
        # Same open interval as autograd's relu/hardtanh backward; stored as a fresh tensor so that an
        # in-place caller may overwrite x afterwards.
        ctx.mask = (x > lo) & (x < hi) if math.isfinite(hi) else x > lo
        return x.clamp(min=lo) if not math.isfinite(hi) else x.clamp(lo, hi)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        if ctx.rule == "guided":  # Springenberg et al.: only positive gradient through active units
            gi = g.clamp(min=0) * ctx.mask
        elif (
            ctx.rule == "deconvnet"
        ):  # Zeiler & Fergus: rectify the signal going back, ignore the forward mask
            gi = g.clamp(min=0)
        else:
            gi = g * ctx.mask
        return gi, None, None, None


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str, default: Any) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _relu_spec(inplace_always: bool) -> Callable[[Sequence[Any], dict[str, Any]], tuple[float, float, bool]]:
    def spec(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[float, float, bool]:
        return 0.0, math.inf, inplace_always or bool(_arg(args, kwargs, 1, "inplace", False))

    return spec


def _relu6_spec(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[float, float, bool]:
    return 0.0, 6.0, bool(_arg(args, kwargs, 1, "inplace", False))


def _hardtanh_spec(
    inplace_always: bool,
) -> Callable[[Sequence[Any], dict[str, Any]], tuple[float, float, bool]]:
    def spec(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[float, float, bool]:
        lo = float(_arg(args, kwargs, 1, "min_val", -1.0))
        hi = float(_arg(args, kwargs, 2, "max_val", 1.0))
        return lo, hi, inplace_always or bool(_arg(args, kwargs, 3, "inplace", False))

    return spec


# Every way a rectifier reaches torch: nn.ReLU -> F.relu, nn.ReLU6 -> F.hardtanh(0, 6), functional and method forms.
_RECTIFIERS: dict[Any, Callable[[Sequence[Any], dict[str, Any]], tuple[float, float, bool]]] = {
    F.relu: _relu_spec(False),
    F.relu_: _relu_spec(True),
    torch.relu: _relu_spec(False),
    torch.relu_: _relu_spec(True),
    torch.Tensor.relu: _relu_spec(False),
    torch.Tensor.relu_: _relu_spec(True),
    F.relu6: _relu6_spec,
    F.hardtanh: _hardtanh_spec(False),
    F.hardtanh_: _hardtanh_spec(True),
}


class _RectifierMode(TorchFunctionMode):
    """Intercepts every rectifier call during a forward pass and routes it through `_Rectify` with a rule."""

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        spec = _RECTIFIERS.get(func)
        if spec is not None and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            lo, hi, inplace = spec(args, kwargs)
            if lo == 0.0 and x.requires_grad:  # hardtanh(-1, 1) and friends are not rectifiers: leave them
                self.count += 1
                y = _Rectify.apply(x, lo, hi, self.rule)
                if inplace and not x.is_leaf:
                    x.copy_(y)  # keep in-place semantics; the gradient flows through y, not the old x
                    return x
                return y
        return func(*args, **kwargs)


@contextmanager
def rectifier_rule(rule: str | None) -> Iterator[_RectifierMode | None]:
    """Inside the block, ReLU/ReLU6 (modules, functional, in-place) backpropagate by `rule`:
    "guided" (guided backprop), "deconvnet" (Zeiler & Fergus) or None (ordinary gradient)."""
    if rule is None:
        yield None
        return
    if rule not in ("guided", "deconvnet", "gradient"):
        raise BadInput(f"unknown backward rule {rule!r}; use 'guided', 'deconvnet' or 'gradient'")
    mode = _RectifierMode(rule)
    with mode:
        yield mode


# ------------------------------------------------------------------------------------------------ gradients


def input_gradient(
    net: Backbone,
    x: torch.Tensor,
    objective: Callable[[torch.Tensor], torch.Tensor],
    *,
    layer: str | None = None,
    rule: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """d objective / d input for a batch x. The objective sees the logits, or the output of `layer` when given.

    Returns (gradient like x, the objective's input detached, rectifiers overridden by `rule`).
    """
    from ...taps import capture

    mod = net.require_module("gradient attribution")
    xg = x.detach().clone().float().requires_grad_(True)
    with rectifier_rule(rule) as mode, capture(mod, [layer] if layer else []) as store:
        out = mod(xg)
        src = store[layer] if layer else out
        score = objective(src)
    (g,) = torch.autograd.grad(score.sum(), xg)
    return g.detach(), src.detach(), (mode.count if mode is not None else 0)


def class_gradient(
    net: Backbone, x: torch.Tensor, target: int | None, method: str, rule: str | None = None
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One forward/backward: d logit[target] / d input for one image, the target defaulting to the prediction.

    Returns (gradient (C,H,W), logits (1, classes), resolved target, rectifiers overridden by `rule`).
    """
    require_head(net, method)
    net.check_target(target)
    mod = net.require_module(method)
    xg = x.detach().clone().float().requires_grad_(True)
    with rectifier_rule(rule) as mode:
        out = mod(xg)
    logits = out.detach().float().numpy()
    t = resolve_target(net, target, logits, method)
    (g,) = torch.autograd.grad(out[:, t].sum(), xg)
    return g[0].detach().numpy(), logits, t, (mode.count if mode is not None else 0)


def reduce_channels(a: np.ndarray, how: str) -> np.ndarray:
    """(C,H,W) attribution -> HxW map: abs_max (Simonyan), max, sum (signed), abs_sum, or l2 norm over channels."""
    if how == "abs_max":
        m = np.abs(a).max(0)
    elif how == "max":
        m = a.max(0)
    elif how == "sum":
        m = a.sum(0)
    elif how == "abs_sum":
        m = np.abs(a).sum(0)
    elif how == "l2":
        m = np.sqrt((a.astype(np.float64) ** 2).sum(0))
    else:
        raise BadInput(f"unknown channel reduction {how!r}; use one of {list(REDUCTIONS)}")
    return np.ascontiguousarray(m, dtype=np.float32)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N,h,w) maps -> (N,H,W) by bilinear interpolation with half-pixel centres (like cv2.INTER_LINEAR)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def gradient_rgb(g: np.ndarray) -> Image.Image:
    """A (C,H,W) gradient rendered as an RGB image centred on grey (the usual guided-backprop picture)."""
    a = g if g.shape[0] == 3 else np.repeat(g[:1], 3, 0)
    a = a - a.mean()
    s = float(a.std()) or 1.0
    a = np.clip(0.5 + 0.15 * a / s, 0.0, 1.0)
    return Image.fromarray((a.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))


# ------------------------------------------------------------------------------------------------ baselines


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a (C,H,W) float image (reflected borders)."""
    import cv2

    if sigma <= 0:
        raise BadInput(f"blur sigma must be > 0, got {sigma}")
    hwc = np.ascontiguousarray(x.transpose(1, 2, 0), dtype=np.float32)
    out = cv2.GaussianBlur(hwc, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)
    if out.ndim == 2:
        out = out[..., None]
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def make_baseline(
    net: Backbone, x: torch.Tensor, kind: str, sigma: float = 10.0, seed: int = 0
) -> np.ndarray:
    """A reference input (C,H,W) in network-input space: zero (the input-space origin; the dataset mean colour for
    mean/std-normalised nets), black (0 in pixel space), mean (the image's per-channel mean), blur, uniform noise."""
    x0 = x[0].detach().float().numpy()
    c, h, w = x0.shape
    if kind == "zero":
        return np.zeros_like(x0)
    if kind == "black":
        return net.normalize(torch.zeros(1, 3, h, w))[0].numpy().astype(np.float32)
    if kind == "mean":
        return np.broadcast_to(x0.mean((1, 2), keepdims=True), x0.shape).astype(np.float32).copy()
    if kind == "blur":
        return blur(x0, sigma)
    if kind == "uniform":
        g = torch.Generator().manual_seed(int(seed))
        return net.normalize(torch.rand(1, 3, h, w, generator=g))[0].numpy().astype(np.float32)
    raise BadInput(f"unknown baseline {kind!r}; use zero, black, mean, blur or uniform")


# ------------------------------------------------------------------------------------------------ results


def make_result(
    net: Backbone,
    x: torch.Tensor,
    data: np.ndarray,
    t0: float,
    *,
    target: dict[str, Any] | None,
    passes: int,
    backend: str = "torch",
    extras: dict[str, Any] | None = None,
    **meta: Any,
) -> Result:
    """A "map" Result: float32 HxW at the input size, the preprocessed input as image, and the common meta."""
    m = np.ascontiguousarray(data, dtype=np.float32)
    h, w = x.shape[-2:]
    if m.shape != (h, w):
        raise AssertionError(f"map shape {m.shape} != input size {(h, w)}")
    if not np.isfinite(m).all():
        raise BadInput("the attribution is not finite (NaN or inf); check the parameters and the input image")
    info: dict[str, Any] = {
        "target": target,
        "passes": int(passes),
        "backend": backend,
        "wall_s": round(time.perf_counter() - t0, 4),
    }
    info.update(meta)
    return Result("map", m, info, image=net.deprocess(x), extras=extras or {})


def progress_cb(progress: Progress, lo: float = 0.0, hi: float = 1.0) -> Progress:
    """A progress callback that maps 0..1 onto lo..hi of the caller's range (None stays None)."""
    if progress is None:
        return None
    return lambda f, msg: progress(lo + (hi - lo) * float(f), msg)


# ------------------------------------------------------------------------------------------------ modified backprop


def run_rule(
    net: Backbone,
    img: Image.Image,
    method: str,
    rule: str,
    *,
    target: int | None,
    layer: str | None,
    channel: int | None,
    row: int | None,
    col: int | None,
    reduce: str,
    progress: Progress = None,
) -> Result:
    """Guided backprop / deconvnet for a class score, or for a channel (or one unit) of an intermediate layer."""
    t0 = time.perf_counter()
    if layer is None and (channel is not None or row is not None or col is not None):
        raise BadInput(f"{method}: channel/row/col select a unit of a layer; give `layer` too")
    if layer is not None and target is not None:
        raise BadInput(f"{method}: give either a class `target` or a `layer` (+ channel), not both")
    if (row is None) != (col is None):
        raise BadInput(f"{method}: a single unit needs both row and col (or neither, for the whole channel)")
    x = input_tensor(net, img)
    extra: dict[str, Any] = {}
    if layer is None:
        grad, logits, t, n = class_gradient(net, x, target, method, rule=rule)
        tmeta: dict[str, Any] | None = target_meta(net, t, logits)
    else:
        shape = net.layer(layer).out_shape
        if len(shape) != 3 and (row is not None):
            raise BadInput(f"{method}: layer {layer!r} has output shape {shape}; row/col need a (C,H,W) map")
        nch = int(shape[0])
        if channel is not None and not 0 <= channel < nch:
            raise BadInput(f"{method}: channel {channel} is out of range for layer {layer!r} (0..{nch - 1})")
        if row is not None and col is not None and not (0 <= row < shape[1] and 0 <= col < shape[2]):
            raise BadInput(
                f"{method}: unit ({row}, {col}) is outside layer {layer!r}'s {shape[1]}x{shape[2]} map"
            )
        if channel is None:  # the layer's most active channel
            from ...taps import capture

            with torch.no_grad(), capture(net.require_module(method), [layer]) as st:
                net.module(x)  # type: ignore[misc]
            a = st[layer][0]
            channel = int(a.reshape(a.shape[0], -1).mean(1).argmax()) if a.ndim >= 2 else int(a.argmax())
            extra["channel_chosen"] = "most active (mean activation)"
        ch = int(channel)

        def objective(a: torch.Tensor) -> torch.Tensor:
            u = a[:, ch]
            if row is not None and col is not None:
                return u[:, row, col]
            return u.reshape(u.shape[0], -1).sum(1)

        g, _, n = input_gradient(net, x, objective, layer=layer, rule=rule)
        grad = g[0].numpy()
        tmeta = None
        extra.update(layer=layer, channel=ch, unit=None if row is None else (int(row), int(col)))
    if n == 0:
        extra["warning"] = f"{net.name} has no ReLU/ReLU6 on this path: the {rule} rule changed nothing"
    if progress is not None:
        progress(1.0, f"{method} done")
    return make_result(
        net,
        x,
        reduce_channels(grad, reduce),
        t0,
        target=tmeta,
        passes=1,
        extras={"gradient": grad, "rgb": gradient_rgb(grad)},
        rule=rule,
        rectifiers=n,
        reduction=reduce,
        **extra,
    )


# ------------------------------------------------------------------------------------------------ CAM family


class CAMBase:
    """Class activation maps over one conv layer: owns the hook, the forward (and backward) pass and the upsampling.

    A subclass overrides `channel_weights(acts, grads, score)` only; the map is sum_k w_k A_k (ReLU'd when
    `relu`), bilinearly upsampled to the input size. One forward pass serves both the default target and the
    map; gradient-free subclasses (`uses_gradients = False`) may run that pass on ONNX Runtime (`backend`).
    """

    uses_gradients = True

    def __init__(
        self, net: Backbone, layer: str | None = None, relu: bool = True, backend: str = "torch"
    ) -> None:
        self.net = net
        self.layer = check_layer(net, layer or default_cam_layer(net), spatial=True)
        self.relu = relu
        self.passes = 0
        self.backend = "torch"
        self.requested_backend = backend
        self.x: torch.Tensor | None = None
        self.acts: torch.Tensor | None = None
        self.logits: np.ndarray | None = None
        self._logits_graph: torch.Tensor | None = None
        self.batch_size: int | None = None
        self.runner: Any = None  # the forward-only runner, when the pass ran through one

    # -- passes ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> np.ndarray:
        """One forward pass recording the layer's activations (1,K,h,w); returns the logits (1, classes)."""
        self.x = x.detach().float()
        if not self.uses_gradients and self.requested_backend != "torch":
            from ...runtime.runner import runner

            r = runner(
                self.net, [self.layer, "logits"], backend=self.requested_backend, batch_size=self.batch_size
            )
            self.runner = r
            out = r.run(self.x.numpy())
            self.backend = r.backend
            self.passes += r.last_passes  # this thread's passes (pooled runners are shared)
            self.acts = torch.from_numpy(out[self.layer])
            self.logits = out["logits"]
            return self.logits
        from ...taps import resolve

        mod = self.net.require_module(f"CAM on layer {self.layer}")
        sub = resolve(mod, self.layer)
        store: dict[str, torch.Tensor] = {}

        def hook(_m: Any, _a: Any, out: Any) -> torch.Tensor:
            t = out[0] if isinstance(out, (tuple, list)) else out
            # cut the graph here (no backward through earlier layers); hand the network a copy, so that an
            # in-place op after this layer cannot modify the recorded leaf
            leaf = t.detach().requires_grad_(self.uses_gradients)
            store["a"] = leaf
            return leaf.clone() if self.uses_gradients else leaf

        h = sub.register_forward_hook(hook)
        try:
            with torch.enable_grad() if self.uses_gradients else torch.no_grad():
                logits = mod(self.x)
        finally:
            h.remove()
        self.passes += 1
        self.acts = store["a"]
        self._logits_graph = logits if self.uses_gradients else None
        self.logits = logits.detach().float().numpy()
        return self.logits

    def gradients(self, score: Score) -> torch.Tensor:
        """d score / d activations (1,K,h,w) from the recorded forward pass (kept for repeated scores)."""
        if self._logits_graph is None or self.acts is None:
            raise RuntimeError("call forward() with uses_gradients before gradients()")
        (g,) = torch.autograd.grad(
            score(self._logits_graph).sum(), self.acts, retain_graph=True, allow_unused=True
        )
        return torch.zeros_like(self.acts) if g is None else g.detach()

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        """(1,K) weights of the K channels; the one thing each CAM method defines."""
        raise NotImplementedError

    def compute(self, score: Score) -> tuple[np.ndarray, np.ndarray]:
        """(map HxW at input size, low-resolution map hxw) for the score, after `forward`."""
        if self.acts is None or self.x is None:
            raise RuntimeError("call forward() before compute()")
        grads = self.gradients(score) if self.uses_gradients else None
        acts = self.acts.detach()
        with torch.no_grad():
            w = self.channel_weights(acts, grads, score).to(acts.dtype)
            cam = (w[:, :, None, None] * acts).sum(1)
            if self.relu:
                cam = cam.clamp(min=0)
            big = upsample(cam, tuple(self.x.shape[-2:]))
        return big[0].numpy().astype(np.float32), cam[0].numpy().astype(np.float32)


class GradCAMWeights(CAMBase):
    """Grad-CAM (Selvaraju et al.): w_k = spatial mean of d score / d A_k."""

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        assert grads is not None
        return grads.mean((2, 3))


def run_cam(
    cam: CAMBase,
    net: Backbone,
    img: Image.Image,
    target: int | None,
    method: str,
    *,
    foil: int | None = None,
    contrast: bool = False,
    progress: Progress = None,
    **meta: Any,
) -> Result:
    """Resolve the target (and foil), run a CAM and package the Result."""
    t0 = time.perf_counter()
    x = input_tensor(net, img)
    require_head(net, method)
    net.check_target(target)  # fail fast, before any pass
    if foil is not None:
        net.check_target(foil)
    logits = cam.forward(x)
    t = resolve_target(net, target, logits, method)
    coefs: dict[int, float] = {t: 1.0}
    extra_meta: dict[str, Any] = {}
    if contrast:
        b = second_class(logits, t) if foil is None else net.check_target(foil)
        assert b is not None
        if b == t:
            raise BadInput(f"{method}: foil {b} equals the target; choose a different class to contrast with")
        coefs[b] = -1.0
        extra_meta["foil"] = target_meta(net, b, logits)
    if progress is not None:
        progress(0.1, f"{method}: layer {cam.layer}")
    big, low = cam.compute(Score(coefs))
    if progress is not None:
        progress(1.0, "done")
    return make_result(
        net,
        x,
        big,
        t0,
        target=target_meta(net, t, logits),
        passes=cam.passes,
        backend=cam.backend,
        extras={"lowres": low},
        layer=cam.layer,
        **extra_meta,
        **meta,
    )
