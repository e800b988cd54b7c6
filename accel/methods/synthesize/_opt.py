"""Optimise pixels against objectives: the one framework behind every synthesis technique.

Lucent's shape (an image parameterisation, random transforms, objectives that form an algebra) with pystiche's
losses as composable terms (content, Gram, total variation). Objectives are losses to MINIMISE over a context
that holds the image and the activations captured in one shared forward pass per step; to raise a score, negate
it: ``-class_score(281) + 1e-4 * l2() + 0.1 * tv()``. One loop (`optimize`) runs Adam, plain gradient steps or
L-BFGS with progress, cancellation, early stop, NaN detection and a loss history.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from ...errors import BadInput, ResourceLimit
from ...limits import CAPS
from ...registry import SILENT, Observer
from ...result import LossRecord, Result
from ...taps import capture, resolve

Progress = Callable[[float, str], None]
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# --------------------------------------------------------------------------------------------- limits

ENV_MAX_MB = CAPS["synth_mb"].env
DEFAULT_MAX_MB = CAPS["synth_mb"].default
MAX_SIDE = 4096


def memory_budget_bytes() -> int:
    """Memory a synthesis run may plan for: $CONVLENS_SYNTH_MAX_MB (default 8192 MB)."""
    from ...limits import cap_float

    return int(cap_float("synth_mb") * 2**20)


def estimate_bytes(net: Any, h: int, w: int, batch: int = 1) -> int:
    """Rough peak memory of one forward+backward at HxW: every layer's activation, kept and its gradient, x1.5."""
    s0 = net.pre.size
    total = 0
    for li in net.layers():
        n = int(np.prod(li.out_shape)) if li.out_shape else 0
        total += n * h * w / (s0 * s0) if len(li.out_shape) == 3 else n
    return int(total * 4 * 3 * batch)


def check_memory(net: Any, h: int, w: int, batch: int = 1, what: str = "synthesis") -> int:
    """ResourceLimit (naming the knob) when a run at HxW would need more memory than the budget."""
    if h > MAX_SIDE or w > MAX_SIDE:
        raise ResourceLimit(f"{what}: {w}x{h} pixels exceeds the largest side this tool handles ({MAX_SIDE})")
    need, budget = estimate_bytes(net, h, w, batch), memory_budget_bytes()
    if need > budget:
        raise ResourceLimit(
            f"{what}: {w}x{h} pixels on {net.name} would need about {need / 2**30:.1f} GiB for activations and "
            f"gradients, over the budget of {budget / 2**30:.1f} GiB; use a smaller size, or raise the budget "
            f"with the environment variable {ENV_MAX_MB}=N (megabytes)"
        )
    return need


# --------------------------------------------------------------------------------------------- images


def pil_to01(img: Image.Image, size: int | None = None, square: bool = False) -> torch.Tensor:
    """PIL image -> (1,3,H,W) float tensor in 0..1; `size` is the longer side (or the square crop's side)."""
    if not isinstance(img, Image.Image):
        raise BadInput(f"expected a PIL image (use accel.open_image), got {type(img).__name__}")
    img = img.convert("RGB")
    if size is not None:
        size = int(size)
        if size < 8:
            raise BadInput(f"image size must be at least 8 pixels, got {size}")
        if square:
            from ...images import resize_center_crop

            if img.size != (size, size):
                img = resize_center_crop(img, size, max(size, round(size * 256 / 224)))
        else:
            w, h = img.size
            s = size / max(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), Image.Resampling.BICUBIC if s > 1 else Image.Resampling.LANCZOS)
    a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].contiguous()


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """(1,3,H,W) or (3,H,W) 0..1 tensor -> HxWx3 uint8; refuses NaN/inf (never shows a NaN image)."""
    t = x01.detach().float().cpu()
    if t.ndim == 4:
        t = t[0]
    if not torch.isfinite(t).all():
        raise BadInput(
            "the synthesized image contains NaN or inf values; the optimisation diverged (lower lr)"
        )
    a = t.clamp(0, 1).permute(1, 2, 0).numpy()
    return (a * 255.0 + 0.5).astype(np.uint8)


def to_pil(x01: torch.Tensor) -> Image.Image:
    """(1,3,H,W) 0..1 tensor -> PIL RGB image."""
    return Image.fromarray(to_uint8(x01))


def quantize(x01: torch.Tensor) -> torch.Tensor:
    """Round a 0..1 image to the 8-bit grid (what saving it as PNG does)."""
    return (x01.clamp(0, 1) * 255.0).round() / 255.0


def resize01(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear (antialiased when shrinking) resize of an (N,3,H,W) batch."""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def amplified_difference(a: torch.Tensor, b: torch.Tensor, gain: float = 0.0) -> np.ndarray:
    """(b - a) shown around mid grey, scaled by `gain` (0: so the largest change fills the range), as uint8."""
    d = (b - a).detach().float()
    if gain <= 0:
        m = float(d.abs().max())
        gain = 0.5 / m if m > 0 else 1.0
    return to_uint8((0.5 + gain * d).clamp(0, 1))


# --------------------------------------------------------------------------------------------- parameterisations


class ImageParam(nn.Module):
    """An image as a function of free parameters; `forward()` gives (1,3,H,W) in 0..1."""

    def forward(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def post_step(self) -> None:
        """Called after every optimiser step (e.g. to project onto the valid range)."""


class PixelImage(ImageParam):
    """One free value per pixel: "clamp" keeps pixels themselves (projected to 0..1), "sigmoid" their logits."""

    def __init__(self, init01: torch.Tensor, mode: str = "clamp") -> None:
        super().__init__()
        if mode not in ("clamp", "sigmoid"):
            raise BadInput(f"pixel mode must be 'clamp' or 'sigmoid', got {mode!r}")
        self.mode = mode
        x = init01.detach().float().clone()
        if mode == "sigmoid":
            x = torch.logit(x.clamp(1e-3, 1 - 1e-3))
        self.raw = nn.Parameter(x)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.raw) if self.mode == "sigmoid" else self.raw

    def post_step(self) -> None:
        if self.mode == "clamp":
            with torch.no_grad():
                self.raw.clamp_(0.0, 1.0)

    def set01(self, x01: torch.Tensor) -> None:
        """Overwrite the image (e.g. after an in-place blur), in 0..1."""
        with torch.no_grad():
            x = x01.clamp(0, 1) if self.mode == "clamp" else torch.logit(x01.clamp(1e-3, 1 - 1e-3))
            self.raw.copy_(x)


# ImageNet colour correlation (square root of the RGB covariance, from Lucid's published constants).
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


class FourierImage(ImageParam):
    """Lucid-style image: a scaled 2-D Fourier spectrum (1/f^decay), optionally colour-decorrelated, then sigmoid.

    Optimising the spectrum whitens the gradient, so feature visualisations have fewer high-frequency artefacts."""

    def __init__(
        self,
        h: int,
        w: int,
        generator: torch.Generator | None = None,
        sd: float = 0.01,
        decay: float = 1.0,
        decorrelate: bool = True,
        init01: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.h, self.w, self.decorrelate = int(h), int(w), bool(decorrelate)
        fy = torch.fft.fftfreq(self.h)[:, None]
        fx = torch.fft.rfftfreq(self.w)[None, :]
        freq = torch.sqrt(fx * fx + fy * fy)
        scale = 1.0 / torch.clamp(freq, min=1.0 / max(self.h, self.w)) ** decay
        self.register_buffer("scale", (scale * math.sqrt(self.h * self.w) / scale.max())[None, None])
        if init01 is not None:
            t = torch.logit(init01.detach().float().clamp(1e-3, 1 - 1e-3))
            if self.decorrelate:
                t = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_COLOR), t)
            spec = torch.fft.rfft2(t, norm="ortho") / self.scale
        else:
            shape = (1, 3, self.h, self.w // 2 + 1)
            re = torch.randn(shape, generator=generator) * sd
            im = torch.randn(shape, generator=generator) * sd
            spec = torch.complex(re, im)
        self.spec = nn.Parameter(torch.view_as_real(spec).contiguous())

    def forward(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spec) * self.scale
        t = torch.fft.irfft2(spec, s=(self.h, self.w), norm="ortho")
        if self.decorrelate:
            t = torch.einsum("ij,njhw->nihw", _COLOR.to(t.dtype), t)
        return torch.sigmoid(t)


def make_param(
    kind: str,
    h: int,
    w: int,
    generator: torch.Generator,
    init01: torch.Tensor | None = None,
    noise: float = 0.0,
) -> ImageParam:
    """An image parameterisation by name ("pixel", "sigmoid", "fourier"), from `init01` or mid grey, plus noise."""
    if init01 is None:
        init01 = torch.full((1, 3, h, w), 0.5)
    if noise > 0:
        init01 = (init01 + noise * torch.randn(init01.shape, generator=generator)).clamp(0, 1)
    if kind == "pixel":
        return PixelImage(init01, "clamp")
    if kind == "sigmoid":
        return PixelImage(init01, "sigmoid")
    if kind == "fourier":
        return FourierImage(h, w, generator, init01=init01)
    raise BadInput(f"unknown image parameterisation {kind!r}; choose pixel, sigmoid or fourier")


# --------------------------------------------------------------------------------------------- transforms


def _randint(g: torch.Generator, lo: int, hi: int) -> int:
    """A uniform integer in lo..hi (inclusive) from the generator."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g))


def jitter(d: int) -> Transform:
    """Shift the image by up to `d` pixels in x and y (reflection padding), a fresh shift each step."""

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if d <= 0:
            return x
        h, w = x.shape[-2:]
        p = min(d, h - 1, w - 1)
        xp = F.pad(x, (p, p, p, p), mode="reflect")
        dy, dx = _randint(g, 0, 2 * p), _randint(g, 0, 2 * p)
        return xp[..., dy : dy + h, dx : dx + w]

    return t


def random_scale(scales: Sequence[float]) -> Transform:
    """Resize by a factor drawn from `scales` each step (scale robustness)."""
    scales = list(scales)

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s = scales[_randint(g, 0, len(scales) - 1)]
        if s == 1.0:
            return x
        h, w = x.shape[-2:]
        return F.interpolate(
            x, size=(max(8, round(h * s)), max(8, round(w * s))), mode="bilinear", align_corners=False
        )

    return t


def random_rotate(degrees: Sequence[float]) -> Transform:
    """Rotate by an angle (degrees) drawn from `degrees` each step, reflecting at the borders."""
    angles = list(degrees)

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        a = math.radians(angles[_randint(g, 0, len(angles) - 1)])
        if a == 0.0:
            return x
        c, s = math.cos(a), math.sin(a)
        theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype)[None].expand(len(x), -1, -1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    return t


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of an (N,C,H,W) batch with reflection padding (deterministic)."""
    if sigma <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma)))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    if r < 1:
        return x
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def blur(sigma: float) -> Transform:
    """Gaussian blur as a transform (applied to what the network sees)."""
    return lambda x, g: gaussian_blur(x, sigma)


def compose(*transforms: Transform | None) -> Transform:
    """Apply transforms left to right."""
    ts = [t for t in transforms if t is not None]

    def t(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        for f in ts:
            x = f(x, g)
        return x

    return t


# --------------------------------------------------------------------------------------------- objectives


@dataclass
class Ctx:
    """What objectives see at one step: the image, what the network saw, captured activations and the logits."""

    image: torch.Tensor
    x: torch.Tensor
    net: Any
    acts: dict[str, torch.Tensor]
    logits: torch.Tensor | None
    step: int = 0

    def act(self, name: str) -> torch.Tensor:
        """The activation captured at layer `name`."""
        if name not in self.acts:
            raise BadInput(f"layer {name!r} was not captured; objectives must declare the layers they read")
        return self.acts[name]


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrices of (N,C,H,W) features, normalised by H*W (so they do not depend on the image size)."""
    n, c, h, w = f.shape
    x = f.reshape(n, c, h * w)
    return x @ x.transpose(1, 2) / (h * w)


class Objective:
    """A scalar loss over a `Ctx`; objectives add, subtract, negate and scale: ``-class_score(1) + 0.1 * tv()``.

    A leaf wraps a function and declares the layers (`taps`) it reads and whether it needs the logits, so one
    forward pass per step serves every term."""

    def __init__(
        self,
        fn: Callable[[Ctx], torch.Tensor] | None = None,
        name: str = "objective",
        taps: Iterable[str] = (),
        logits: bool = False,
        parts: list[tuple[float, Objective]] | None = None,
        const: float = 0.0,
    ) -> None:
        self.fn = fn
        self.name = name
        self._taps = frozenset(taps)
        self._logits = bool(logits)
        self.parts = parts if parts is not None else [(1.0, self)]
        self.const = float(const)

    # -- structure ---------------------------------------------------------------------------------------------
    @property
    def leaves(self) -> list[tuple[float, Objective]]:
        return self.parts

    @property
    def taps(self) -> frozenset[str]:
        out: set[str] = set()
        for _, leaf in self.parts:
            out |= leaf._taps
        return frozenset(out)

    @property
    def needs_logits(self) -> bool:
        return any(leaf._logits for _, leaf in self.parts)

    def __repr__(self) -> str:
        terms = []
        for c, leaf in self.parts:
            terms.append(leaf.name if c == 1.0 else ("-" + leaf.name if c == -1.0 else f"{c:g}*{leaf.name}"))
        if self.const:
            terms.append(f"{self.const:g}")
        return " + ".join(terms).replace("+ -", "- ") or "0"

    # -- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, ctx: Ctx) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss (a scalar tensor) and each term's unweighted value."""
        total: torch.Tensor | None = None
        terms: dict[str, float] = {}
        cache: dict[int, torch.Tensor] = {}
        for c, leaf in self.parts:
            if id(leaf) not in cache:
                assert leaf.fn is not None
                v = leaf.fn(ctx)
                if v.ndim:
                    v = v.mean()
                cache[id(leaf)] = v
            v = cache[id(leaf)]
            key = leaf.name
            while key in terms and id(leaf) != id(self._leaf_named(key)):
                key += "'"
            terms[key] = float(v.detach())
            total = c * v if total is None else total + c * v
        if total is None:
            total = torch.zeros(())
        return total + self.const, terms

    def _leaf_named(self, name: str) -> Objective | None:
        return next((leaf for _, leaf in self.parts if leaf.name == name), None)

    def __call__(self, ctx: Ctx) -> torch.Tensor:
        return self.evaluate(ctx)[0]

    # -- algebra -----------------------------------------------------------------------------------------------
    def _combine(self, other: Objective | float, sign: float) -> Objective:
        if isinstance(other, Objective):
            return Objective(
                name="sum",
                parts=self.parts + [(sign * c, leaf) for c, leaf in other.parts],
                const=self.const + sign * other.const,
            )
        if isinstance(other, (int, float)) and not isinstance(other, bool):
            return Objective(name="sum", parts=list(self.parts), const=self.const + sign * float(other))
        return NotImplemented  # type: ignore[return-value]

    def __add__(self, other: Objective | float) -> Objective:
        return self._combine(other, 1.0)

    def __radd__(self, other: float) -> Objective:
        return self._combine(other, 1.0)

    def __sub__(self, other: Objective | float) -> Objective:
        return self._combine(other, -1.0)

    def __rsub__(self, other: float) -> Objective:
        return (-self)._combine(other, 1.0)

    def __neg__(self) -> Objective:
        return self * -1.0

    def __mul__(self, k: float) -> Objective:
        if isinstance(k, Objective) or not isinstance(k, (int, float)) or isinstance(k, bool):
            return NotImplemented  # type: ignore[return-value]
        if not math.isfinite(k):
            raise BadInput(f"objective weights must be finite numbers, got {k}")
        return Objective(name="sum", parts=[(c * k, leaf) for c, leaf in self.parts], const=self.const * k)

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> Objective:
        if not isinstance(k, (int, float)) or k == 0:
            raise BadInput(f"objectives can only be divided by a non-zero number, got {k!r}")
        return self * (1.0 / k)


def objective(
    fn: Callable[[Ctx], torch.Tensor], name: str, taps: Iterable[str] = (), logits: bool = False
) -> Objective:
    """A custom leaf objective from a function of the context."""
    return Objective(fn, name, taps, logits)


def class_score(c: int) -> Objective:
    """The pre-softmax score (logit) of class `c`, averaged over the batch (negate it to maximise)."""
    return Objective(lambda ctx: ctx.logits[:, c], f"class_score({c})", logits=True)  # type: ignore[index]


def class_logprob(c: int) -> Objective:
    """The log-softmax probability of class `c`."""
    return Objective(lambda ctx: ctx.logits.log_softmax(-1)[:, c], f"class_logprob({c})", logits=True)  # type: ignore[union-attr]


def channel(layer: str, c: int) -> Objective:
    """The mean activation of channel `c` at `layer` (a feature map)."""
    return Objective(lambda ctx: ctx.act(layer)[:, c], f"channel({layer},{c})", taps=[layer])


def neuron(layer: str, c: int, y: int | None = None, x: int | None = None) -> Objective:
    """One unit: channel `c` at spatial position (y, x) of `layer` (default: the centre)."""

    def fn(ctx: Ctx) -> torch.Tensor:
        a = ctx.act(layer)
        if a.ndim == 2:
            return a[:, c]
        h, w = a.shape[-2:]
        return a[:, c, h // 2 if y is None else y, w // 2 if x is None else x]

    return Objective(fn, f"neuron({layer},{c})", taps=[layer])


def layer_l2(layer: str) -> Objective:
    """Mean squared activation of a layer (DeepDream's objective, to maximise)."""
    return Objective(lambda ctx: ctx.act(layer).pow(2).mean(), f"layer_l2({layer})", taps=[layer])


def l2(center: float = 0.5) -> Objective:
    """Mean squared distance of the image's pixels from `center` (mid grey): an L2 prior / decay."""
    return Objective(lambda ctx: (ctx.image - center).pow(2).mean(), "l2")


def tv(beta: float = 2.0) -> Objective:
    """Total variation of the image: mean of (dx^2 + dy^2)^(beta/2) (Mahendran & Vedaldi's prior)."""

    def fn(ctx: Ctx) -> torch.Tensor:
        x = ctx.image
        dx = x[..., :-1, 1:] - x[..., :-1, :-1]
        dy = x[..., 1:, :-1] - x[..., :-1, :-1]
        s = dx * dx + dy * dy
        return s.mean() if beta == 2.0 else (s + 1e-8).pow(beta / 2).mean()

    return Objective(fn, "tv")


def feature_error(layer: str, target: torch.Tensor, name: str | None = None) -> Objective:
    """Relative squared feature error ||F(x) - F0||^2 / ||F0||^2 at `layer` (inversion, content loss)."""
    t = target.detach()
    denom = float(t.pow(2).sum()) + 1e-12

    def fn(ctx: Ctx) -> torch.Tensor:
        a = ctx.act(layer)
        if a.shape != t.shape:
            a = F.interpolate(a, size=t.shape[-2:], mode="bilinear", align_corners=False)
        return (a - t).pow(2).sum() / denom

    return Objective(fn, name or f"features({layer})", taps=[layer])


def gram_loss(layer: str, target_gram: torch.Tensor, name: str | None = None) -> Objective:
    """Relative squared Gram-matrix error ||G(x) - G0||^2 / ||G0||^2 at `layer` (texture, style loss)."""
    t = target_gram.detach()
    denom = float(t.pow(2).sum()) + 1e-12
    return Objective(
        lambda ctx: (gram(ctx.act(layer)) - t).pow(2).sum() / denom, name or f"gram({layer})", taps=[layer]
    )


def gram_targets(net: Any, x01: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """Gram matrices of an image (1,3,H,W 0..1) at `layers`, as fixed targets."""
    with torch.no_grad():
        acts, _ = forward(net, x01, layers)
    return {name: gram(acts[name]).detach() for name in layers}


def style_objective(
    targets: dict[str, torch.Tensor], weights: Sequence[float] | None = None, prefix: str = "gram"
) -> Objective:
    """Weighted mean of the relative Gram losses over layers (weights normalised to sum 1)."""
    names = list(targets)
    ws = list(weights) if weights is not None else [1.0] * len(names)
    total = sum(ws)
    out: Objective | None = None
    for name, w in zip(names, ws):
        if w <= 0:
            continue
        term = (w / total) * gram_loss(name, targets[name], f"{prefix}({name})")
        out = term if out is None else out + term
    if out is None:
        raise BadInput("at least one style layer needs a positive weight")
    return out


def style_distance(
    net: Any, x01: torch.Tensor, targets: dict[str, torch.Tensor], weights: Sequence[float] | None = None
) -> float:
    """The style (Gram) loss of an image against targets, evaluated on its 8-bit version (for reporting)."""
    obj = style_objective(targets, weights)
    with torch.no_grad():
        x = quantize(x01)
        acts, _ = forward(net, x, obj.taps)
        return float(obj(Ctx(x, x, net, acts, None)))


# --------------------------------------------------------------------------------------------- forward


class _StopForward(Exception):
    """Raised by a hook once the deepest needed layer has run (the rest of the network is skipped)."""


def check_layers(net: Any, layers: Iterable[str]) -> None:
    """BadInput for a layer name the network does not have (listing some it does)."""
    for name in layers:
        net.layer(name.partition(":")[0])


# what torch says when a pooling or convolution window is larger than what is left of a tiny input
_TOO_SMALL = (
    "Output size is too small",
    "Kernel size can't be greater",
    "smaller than kernel",
    "input size is too small",
)


def forward(
    net: Any, x01: torch.Tensor, taps: Iterable[str], logits: bool = False
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """One forward pass of a 0..1 RGB batch, capturing `taps`; stops after the deepest tap unless logits are needed."""
    mod = net.require_module("optimising an image")
    taps = sorted(set(taps))
    if logits and not net.has_head:
        raise BadInput(
            f"{net.name!r} has no classifier head, so class scores cannot be optimised; use a layer"
        )
    stop_at = None
    if not logits and taps:
        order = {li.name: i for i, li in enumerate(net.layers())}
        bases = [t.partition(":")[0] for t in taps]
        if all(b in order for b in bases):
            stop_at = max(bases, key=lambda b: order[b])
    with capture(mod, taps) as store:
        handle = None
        if stop_at is not None:

            def stop(_m: nn.Module, _a: tuple, _o: object) -> None:
                raise _StopForward

            handle = resolve(mod, stop_at).register_forward_hook(stop)
        try:
            out = mod(net.normalize(x01))
        except _StopForward:
            out = None
        except RuntimeError as e:
            if not any(m in str(e) for m in _TOO_SMALL):
                raise
            h, w = x01.shape[-2:]
            raise BadInput(
                f"a {w}x{h} image is too small for {net.name} up to {stop_at or 'its output'}: a convolution or "
                f"pooling window no longer fits ({str(e).splitlines()[0][:120]}); use a larger size"
            ) from None
        finally:
            if handle is not None:
                handle.remove()
    return dict(store), (out if logits else None)


# --------------------------------------------------------------------------------------------- the loop


@dataclass
class OptResult:
    """What `optimize` returns: the final image (1,3,H,W in 0..1), losses per step, and why it stopped."""

    image: torch.Tensor
    loss_history: list[float]
    steps: int
    stopped: str | None
    terms: dict[str, float]
    terms_history: dict[str, list[float]] = field(default_factory=dict)
    wall_s: float = 0.0

    def records(self) -> list[LossRecord]:
        """The loss curve as typed records (what Result.losses holds): total and named terms per step."""
        return [
            LossRecord(i + 1, float(v), {k: float(h[i]) for k, h in self.terms_history.items() if i < len(h)})
            for i, v in enumerate(self.loss_history)
        ]

    def meta(self) -> dict[str, Any]:
        """The summary every technique puts in Result.meta."""
        h = self.loss_history
        return {
            "loss_history": [float(v) for v in h],
            "loss_start": float(h[0]) if h else None,
            "loss_final": float(h[-1]) if h else None,
            "steps_run": self.steps,
            "stopped": self.stopped,
            "terms": dict(self.terms),
            "terms_history": {k: [float(x) for x in v] for k, v in self.terms_history.items()},
            "optimize_s": round(self.wall_s, 3),
        }


class _Diverged(Exception):
    pass


def check_steps_lr(steps: int, lr: float, what: str) -> None:
    """BadInput for 0/negative steps or a non-positive / non-finite learning rate."""
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise BadInput(f"{what}: steps must be a whole number >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise BadInput(f"{what}: lr must be a positive finite number, got {lr!r}")


def optimize(
    net: Any,
    obj: Objective,
    param: ImageParam,
    *,
    steps: int,
    lr: float,
    optimizer: str = "adam",
    transform: Transform | None = None,
    seed: int = 0,
    observer: Observer | None = None,
    progress_span: tuple[float, float] = (0.0, 1.0),
    snapshot_every: int = 10,
    early_stop: int = 0,
    early_stop_tol: float = 1e-4,
    stop_when: Callable[[int, torch.Tensor], str | None] | None = None,
    grad_hook: Callable[[ImageParam], None] | None = None,
    post_step: Callable[[ImageParam, int], None] | None = None,
    lr_schedule: str = "constant",
    on_nan: str = "raise",
    what: str = "synthesis",
) -> OptResult:
    """Minimise `obj` over `param` for up to `steps` steps; returns the image, losses per step and the stop reason.

    optimizer: "adam", "sgd" (plain steps; pair with a `grad_hook` that normalises) or "lbfgs" (deterministic
    objectives only; the loss is rescaled by its starting value so networks with large activations, like the
    Caffe VGG19, do not stall it). `early_stop` = patience in steps without a relative improvement of
    `early_stop_tol`; `stop_when(step, image)` may return a reason to stop; `observer` gets progress (mapped onto
    `progress_span`), a snapshot every `snapshot_every` steps and a loss record per step, and cancels. A NaN/inf
    loss or image raises BadInput (on_nan="raise") or stops at the last finite image (on_nan="stop")."""
    check_steps_lr(steps, lr, what)
    if optimizer not in ("adam", "sgd", "lbfgs"):
        raise BadInput(f"{what}: optimizer must be adam, sgd or lbfgs, got {optimizer!r}")
    if optimizer == "lbfgs" and transform is not None:
        raise BadInput(
            f"{what}: L-BFGS needs a deterministic objective; turn random transforms off or use adam"
        )
    if on_nan not in ("raise", "stop"):
        raise BadInput(f"on_nan must be 'raise' or 'stop', got {on_nan!r}")
    check_layers(net, obj.taps)
    gen = torch.Generator().manual_seed(int(seed))
    params = [p for p in param.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        opt = torch.optim.LBFGS(
            params,
            lr=lr,
            max_iter=1,
            max_eval=25,  # the default (1.25 * max_iter) would allow the line search a single evaluation
            history_size=50,
            tolerance_grad=0.0,
            tolerance_change=0.0,
            line_search_fn="strong_wolfe",
        )
    taps, need_logits = obj.taps, obj.needs_logits
    history: list[float] = []
    terms_hist: dict[str, list[float]] = {}
    state: dict[str, Any] = {"scale": None, "terms": {}, "raw": None}
    step = 0
    t0 = time.perf_counter()
    lo, hi = progress_span
    obs = observer if observer is not None else SILENT

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        img = param()
        x = transform(img, gen) if transform is not None else img
        acts, logits = forward(net, x, taps, need_logits)
        loss, terms = obj.evaluate(Ctx(img, x, net, acts, logits, step))
        if not torch.isfinite(loss):
            raise _Diverged(float(loss.detach()))
        if state["scale"] is None:
            state["scale"] = 1.0 / max(abs(float(loss.detach())), 1e-12) if optimizer == "lbfgs" else 1.0
        scaled = loss * state["scale"]
        scaled.backward()
        if grad_hook is not None:
            grad_hook(param)
        if state["raw"] is None:
            state["raw"], state["terms"] = float(loss.detach()), terms
        return scaled

    def last_good() -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    stopped: str | None = None
    good = last_good()
    try:
        for step in range(steps):
            if obs.should_stop():
                stopped = f"cancelled at step {step}"
                break
            if lr_schedule == "cosine" and optimizer != "lbfgs":
                for g in opt.param_groups:
                    g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / steps)))
            state["raw"] = None
            if optimizer == "lbfgs":
                opt.step(closure)  # type: ignore[arg-type]
            else:
                closure()
                opt.step()
            # Projecting between L-BFGS steps would break its curvature pairs: it is projected once, at the end.
            if optimizer != "lbfgs":
                param.post_step()
            if post_step is not None:
                with torch.no_grad():
                    post_step(param, step)
            if not all(torch.isfinite(p).all() for p in params):
                raise _Diverged(float("nan"))
            good = last_good()
            loss_v = float(state["raw"])
            history.append(loss_v)
            for k, v in state["terms"].items():
                terms_hist.setdefault(k, []).append(v)
            obs.loss(LossRecord(step + 1, loss_v, {k: float(v) for k, v in state["terms"].items()}))
            obs.progress(lo + (hi - lo) * (step + 1) / steps, f"step {step + 1}/{steps}  loss {loss_v:.4g}")
            if snapshot_every > 0 and (step + 1) % snapshot_every == 0:
                with torch.no_grad():
                    obs.snapshot(to_pil(param()), step + 1)
            if stop_when is not None:
                with torch.no_grad():
                    reason = stop_when(step, param())
                if reason:
                    stopped = reason
                    step += 1
                    break
            if early_stop > 0 and len(history) > early_stop:
                best_before = min(history[:-early_stop])
                if min(history[-early_stop:]) >= best_before - early_stop_tol * abs(best_before):
                    stopped = f"early stop: no improvement over {early_stop} steps (converged)"
                    step += 1
                    break
        else:
            step = steps
    except _Diverged as e:
        with torch.no_grad():
            for p, g in zip(params, good):
                p.copy_(g)
        msg = (
            f"{what}: the optimisation diverged at step {step + 1} (loss became {e.args[0]}); "
            f"lower lr (was {lr}) or the loss weights"
        )
        if on_nan == "raise" or not history:
            raise BadInput(msg) from None
        stopped = msg + "; returning the last finite image"
    param.post_step()
    with torch.no_grad():
        final = param().detach().clone()
    final_terms = {k: v[-1] for k, v in terms_hist.items()}
    return OptResult(final, history, len(history), stopped, final_terms, terms_hist, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------- results and params


def image_result(
    x01: torch.Tensor,
    meta: dict[str, Any],
    *,
    image: Image.Image | None = None,
    extras: dict[str, Any] | None = None,
    opt: OptResult | None = None,
    losses: Sequence[LossRecord] | None = None,
) -> Result:
    """A kind-"image" Result: uint8 HxWx3 data (never NaN), the optimisation summary merged into meta and the loss
    curve in Result.losses (`losses`, else the records of `opt`)."""
    m = dict(meta)
    if opt is not None:
        m.update(opt.meta())
    curve = list(losses) if losses is not None else (opt.records() if opt is not None else [])
    return Result("image", to_uint8(x01), m, image, dict(extras or {}), curve)


def records(history: Sequence[float]) -> list[LossRecord]:
    """Loss records numbered 1.. from a plain list of per-step losses (loops that keep only the total)."""
    return [LossRecord(i + 1, float(v)) for i, v in enumerate(history)]


def parse_names(text: str, what: str) -> list[str]:
    """A comma-separated list of names (layers, styles) -> list, refusing an empty list."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise BadInput(f"{what}: give at least one name (comma-separated), got {text!r}")
    return items


def parse_weights(text: str, n: int, what: str) -> list[float]:
    """Comma-separated non-negative weights, exactly `n` of them (empty: all 1)."""
    if not str(text).strip():
        return [1.0] * n
    try:
        ws = [float(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise BadInput(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if len(ws) != n:
        raise BadInput(f"{what}: expected {n} weights (one per item), got {len(ws)} in {text!r}")
    if any(not math.isfinite(w) or w < 0 for w in ws):
        raise BadInput(f"{what}: weights must be finite and >= 0, got {ws}")
    if sum(ws) <= 0:
        raise BadInput(f"{what}: at least one weight must be positive, got {ws}")
    return ws


def non_negative(value: float, what: str) -> float:
    """BadInput unless `value` is a finite number >= 0 (loss weights)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise BadInput(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


# VGG layer choices (Gatys et al. use conv/relu x_1 for style and relu4_2 for content).
_VGG19_STYLE = tuple(f"features.block{b}_relu1" for b in range(1, 6))
_VGG16_STYLE = ("features.1", "features.6", "features.11", "features.18", "features.25")


def _top_spatial(net: Any) -> list[str]:
    """Spatial layers, preferring top-level blocks (at most one dot in the name) over their inner modules."""
    spatial = [li.name for li in net.conv_layers() if li.out_shape[1] > 1]
    return [n for n in spatial if n.count(".") <= 1] or spatial


def default_style_layers(net: Any) -> list[str]:
    """Style/texture layers for a backbone: relu{1..5}_1 on VGG, else five spatial layers spread over the depth."""
    names = {li.name for li in net.layers()}
    for cand in (_VGG19_STYLE, _VGG16_STYLE):
        if all(c in names for c in cand):
            return list(cand)
    convs = _top_spatial(net)
    if not convs:
        raise BadInput(f"{net.name!r} has no spatial layers to compute Gram matrices on")
    idx = sorted({round(i * (len(convs) - 1) / 4 * 0.75) for i in range(5)})
    return [convs[i] for i in idx]


def default_content_layer(net: Any) -> str:
    """Content layer: relu4_2 on VGG, else a spatial layer about 60% of the way through the network."""
    names = {li.name for li in net.layers()}
    for cand in ("features.block4_relu2", "features.20"):
        if cand in names and (cand != "features.20" or "features.25" in names):
            return cand
    convs = _top_spatial(net)
    if not convs:
        raise BadInput(f"{net.name!r} has no spatial layers")
    return convs[int(0.6 * (len(convs) - 1))]


# --------------------------------------------------------------------------------------------- style images

PROCEDURAL_STYLES = ("mosaic", "strokes")


def procedural_style(name: str, size: int = 512, seed: int = 0) -> Image.Image:
    """A painting-like style image generated from a seed (no files needed): "mosaic" or "strokes".

    "mosaic" is stained glass: Voronoi cells in saturated colours with dark lead lines; "strokes" is short curved
    brush strokes in blues and yellows following a swirling flow field (a nod to van Gogh)."""
    from ...errors import BadInput

    if name not in PROCEDURAL_STYLES:
        raise BadInput(f"unknown procedural style {name!r}; choose one of {PROCEDURAL_STYLES}")
    if not 16 <= int(size) <= 4096:
        raise BadInput(f"procedural style size must lie in 16..4096, got {size}")
    return _procedural(name, int(size), int(seed)).copy()


@functools.lru_cache(maxsize=8)
def _procedural(name: str, size: int, seed: int) -> Image.Image:
    """Generated once per (name, size, seed): "strokes" at 512 px takes about a second (callers get copies)."""
    rng = np.random.default_rng(seed)
    return _mosaic(size, rng) if name == "mosaic" else _strokes(size, rng)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = np.zeros((*h.shape, 3))
    for k, (r, g, b) in enumerate(table):
        m = i == k
        out[m] = np.stack([r[m], g[m], b[m]], -1)
    return out


def _mosaic(size: int, rng: np.random.Generator) -> Image.Image:
    from scipy.spatial import cKDTree

    n = max(8, int(170 * (size / 512) ** 2))
    seeds = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    pts = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
    d, idx = cKDTree(seeds).query(pts, k=2)
    hue = rng.choice([0.0, 0.08, 0.15, 0.33, 0.55, 0.62, 0.75, 0.9], n) + rng.normal(0, 0.02, n)
    colors = _hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 1.0, n), rng.uniform(0.55, 1.0, n))
    img = colors[idx[:, 0]].reshape(size, size, 3)
    shade = 1.0 - 0.25 * (d[:, 0] / (d[:, 0] + d[:, 1] + 1e-9)).reshape(size, size)
    img = img * shade[..., None] * rng.uniform(0.92, 1.0, (size, size, 1))
    edge = ((d[:, 1] - d[:, 0]) < max(1.5, 3.0 * size / 512)).reshape(size, size)
    img[edge] = (0.08, 0.07, 0.06)
    out = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    return out.filter(ImageFilter.GaussianBlur(0.6 * size / 512))


def _strokes(size: int, rng: np.random.Generator) -> Image.Image:
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.normal(size=(size, size)), size / 10, mode="wrap")
    field = (field - field.mean()) / (field.std() + 1e-9)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = field * 2.2 + 3.0 * np.sin(2 * np.pi * xx) * np.cos(2 * np.pi * yy)
    palette = np.array(
        [
            (20, 40, 110),
            (35, 70, 160),
            (60, 110, 190),
            (110, 160, 210),
            (235, 205, 70),
            (245, 230, 140),
            (250, 250, 235),
            (15, 25, 60),
            (90, 140, 80),
        ],
        dtype=np.float64,
    )
    probs = np.array([0.2, 0.2, 0.15, 0.1, 0.12, 0.08, 0.05, 0.07, 0.03])
    img = Image.new("RGB", (size, size), (30, 50, 120))
    draw = ImageDraw.Draw(img)
    scale = size / 512
    for _ in range(int(9000 * scale**2)):
        y, x = rng.uniform(0, size, 2)
        col = palette[rng.choice(len(palette), p=probs)] * rng.uniform(0.85, 1.15)
        col_t = tuple(int(c) for c in np.clip(col, 0, 255))
        width = max(1, int(round(rng.uniform(2.5, 5.0) * scale)))
        pts = [(x, y)]
        for _ in range(int(rng.integers(4, 9))):
            a = angle[int(y) % size, int(x) % size]
            x, y = x + 4.0 * scale * np.cos(a), y + 4.0 * scale * np.sin(a)
            pts.append((x, y))
        draw.line(pts, fill=col_t, width=width, joint="curve")
    return img.filter(ImageFilter.GaussianBlur(0.5 * scale))


def load_style_image(style: str) -> Image.Image:
    """A style image by procedural name ("mosaic", "strokes"), packaged sample name ("hubble_deep_field"), or path."""
    from ...errors import BadInput
    from ...images import open_image, sample_image, sample_images

    s = str(style).strip()
    if not s:
        raise BadInput(
            "style is empty: give a procedural style (mosaic, strokes), a sample name, or a file path"
        )
    if s in PROCEDURAL_STYLES:
        return procedural_style(s, 512, seed=0)
    if s.lower() in sample_images():
        return sample_image(s.lower())
    from pathlib import Path

    try:
        path = Path(s).expanduser()
        exists = path.is_file()
    except (OSError, RuntimeError, ValueError):  # "~nosuchuser/x" (no home), a 300-character name
        exists = False
    if not exists:
        raise BadInput(
            f"style {s!r} is not a procedural style {PROCEDURAL_STYLES}, a sample image "
            f"({', '.join(sample_images())}), nor an existing image file"
        )
    return open_image(path)
