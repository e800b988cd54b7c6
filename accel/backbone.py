"""The Backbone value type: an eval-mode network with its input convention, labels and layer index.

Every backbone carries its own input convention (size, mean/std, scale, channel order), so techniques work in
0..1 RGB pixel space and call `net.normalize` / `net.denormalize` at the boundary. This module imports nothing of
`accel.runtime`: a forward-only backbone (an .onnx file) is given its forward engine by whoever loads it
(`accel.load` passes the runtime's sandboxed runner), so the value type never picks an engine itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .errors import BadInput, NotDifferentiable
from .onnxfile import onnx_io_shapes

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A forward-only backbone's engine: (backbone, preprocessed float32 batch N,C,H,W) -> class scores (N, classes).
Engine = Callable[["Backbone", np.ndarray], np.ndarray]


@dataclass(frozen=True)
class LayerInfo:
    """One tappable layer: name, module kind, output shape (C,H,W or D), receptive field (size, stride) in px."""

    name: str
    kind: str
    out_shape: tuple[int, ...]
    receptive_field: tuple[int, int] | None
    rf: Any = field(default=None, compare=False, repr=False)  # accel.receptive.RF, for cropping patches


@dataclass(frozen=True)
class Preproc:
    """A backbone's input convention: input = (x01 * scale - mean) / std, in `channels` order."""

    size: int
    resize: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 1.0
    channels: str = "RGB"  # "RGB", "BGR" or "L"


@lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names (shipped inside torchvision, no download).

    Read from torchvision's metadata file without importing torchvision when possible: its import loads the C
    extension (+160 MiB resident with the CUDA build), which a server on EfficientNet-Lite never needs."""
    spec = importlib.util.find_spec("torchvision")
    meta = Path(spec.origin).parent / "models" / "_meta.py" if spec and spec.origin else None
    if meta is not None and meta.is_file():
        names: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # a pure-Python list; if its layout changes, ask torchvision
            exec(compile(meta.read_text(), str(meta), "exec"), names)  # noqa: S102 - torchvision's own file
        cats = names.get("_IMAGENET_CATEGORIES")
        if isinstance(cats, list) and len(cats) == 1000 and all(isinstance(c, str) for c in cats):
            return list(cats)
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime): the one file hash of model cards and sources."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


class Backbone:
    """A network ready for inspection: eval-mode module, labels, preprocessing and a layer index."""

    def __init__(
        self,
        name: str,
        module: nn.Module | None,
        preproc: Preproc,
        labels: list[str] | None = None,
        *,
        source: str = "",
        pretrained: bool = True,
        has_head: bool = True,
        cam_layer: str | None = None,
        embedding_layer: str | None = None,
        card: dict[str, Any] | None = None,
        onnx_path: Path | None = None,
        engine: Engine | None = None,
    ) -> None:
        self.name = name
        self.module = module.eval() if module is not None else None
        if self.module is not None:
            for p in self.module.parameters():
                p.requires_grad_(False)
        self.pre = preproc
        self.labels = labels
        self.source = source
        self.pretrained = pretrained
        self.has_head = has_head
        self.cam_layer = cam_layer
        self.embedding_layer = embedding_layer
        self.card = card or {}
        self.onnx_path = onnx_path
        self.engine = engine  # the forward pass of a module-less backbone, injected by its loader
        self._layers: list[LayerInfo] | None = None
        self._onnx_out: tuple[int, ...] | None = None
        self._module_out: tuple[int, ...] | None = None
        self._hash: str | None = None

    def __repr__(self) -> str:
        kind = "pretrained" if self.pretrained else "random weights"
        return f"Backbone({self.name!r}, {kind}, input={self.input_shape}, source={self.source!r})"

    # -- conventions -------------------------------------------------------------------------------------------
    @property
    def differentiable(self) -> bool:
        """Whether a torch module is present (gradient methods need one)."""
        return self.module is not None

    @property
    def in_channels(self) -> int:
        """Channels of the network input: 1 for grayscale conventions, else 3."""
        return 1 if self.pre.channels == "L" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, S, S) of one preprocessed image."""
        return (self.in_channels, self.pre.size, self.pre.size)

    def _stats(self, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.in_channels
        mean = torch.tensor(self.pre.mean[:n], dtype=ref.dtype, device=ref.device).view(1, n, 1, 1)
        std = torch.tensor(self.pre.std[:n], dtype=ref.dtype, device=ref.device).view(1, n, 1, 1)
        return mean, std

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """0..1 RGB batch (N,3,H,W) -> the network's input convention (differentiable)."""
        if x01.ndim != 4 or x01.shape[1] != 3:
            raise BadInput(f"normalize expects an (N,3,H,W) RGB batch in 0..1, got shape {tuple(x01.shape)}")
        x = x01
        if self.pre.channels == "BGR":
            x = x.flip(1)
        elif self.pre.channels == "L":
            w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
        mean, std = self._stats(x)
        return (x * self.pre.scale - mean) / std

    def denormalize(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of `normalize`: network input -> 0..1 RGB batch (grayscale inputs are repeated to 3 channels)."""
        if t.ndim == 3:
            t = t[None]
        mean, std = self._stats(t)
        x = (t * std + mean) / self.pre.scale
        if self.pre.channels == "BGR":
            x = x.flip(1)
        elif self.pre.channels == "L":
            x = x.repeat(1, 3, 1, 1)
        return x

    def to_tensor01(self, img: Image.Image, size: int | None = None) -> torch.Tensor:
        """PIL image -> (1,3,S,S) float tensor in 0..1 after the backbone's resize and centre crop.

        An image that already has the input size is used as is (no resize), so `preprocess(deprocess(t))`
        reproduces `t` up to uint8 rounding.
        """
        from .images import resize_center_crop

        if not isinstance(img, Image.Image):
            raise BadInput(f"expected a PIL image (use accel.open_image), got {type(img).__name__}")
        s = size or self.pre.size
        resize = self.pre.resize if size is None else round(s * self.pre.resize / self.pre.size)
        img = img.convert("RGB")
        # an image already at input size is taken as is, so deprocess/preprocess invert
        if img.size != (s, s):
            img = resize_center_crop(img, s, resize)
        a = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()

    def input_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The region (x0, y0, x1, y1) of a photo of `size` (w, h) pixels that the network input covers (the resize
        + centre crop of `to_tensor01`); maps drawn at full resolution and user boxes map through it."""
        from .images.render import crop_box

        s = self.pre.size
        w, h = int(size[0]), int(size[1])
        if (w, h) == (s, s):
            return 0.0, 0.0, float(s), float(s)
        return crop_box(w, h, s, self.pre.resize)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """PIL image -> 1xCxHxW network input (the backbone's own size, mean/std and channel order)."""
        return self.normalize(self.to_tensor01(img))

    def preprocess_batch(self, imgs: Sequence[Image.Image]) -> torch.Tensor:
        """Several PIL images -> one NxCxHxW batch."""
        return torch.cat([self.preprocess(i) for i in imgs]) if imgs else torch.empty(0, *self.input_shape)

    def deprocess(self, t: torch.Tensor) -> Image.Image:
        """Network input (1xCxHxW or CxHxW) -> PIL RGB image; exact inverse of `preprocess` up to uint8 rounding."""
        x = self.denormalize(t.detach().float().cpu())[0].clamp(0, 1)
        a = (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(a)

    # -- running -----------------------------------------------------------------------------------------------
    def require_module(self, what: str = "this operation") -> nn.Module:
        """The torch module, or NotDifferentiable naming `what` for a forward-only backbone."""
        if self.module is None:
            raise NotDifferentiable(
                f"{what} needs the PyTorch module, but {self.name!r} is a forward-only ONNX backbone; "
                "load the PyTorch weights (a zoo name or a checkpoint) instead"
            )
        return self.module

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for a preprocessed batch (PyTorch path; differentiable)."""
        if not self.has_head:
            raise BadInput(
                f"{self.name!r} has no classifier head (convolutional features only); "
                "use a layer or the 'embedding' tap instead of class scores"
            )
        return self.require_module("computing class scores")(x)

    def check_target(self, target: int | None) -> int | None:
        """Validate a class index against the head size."""
        if target is None:
            return None
        n = self.num_classes
        if n is None:
            raise BadInput(f"{self.name!r} has no classifier head, so target={target} has no meaning")
        if not 0 <= int(target) < n:
            raise BadInput(f"target {target} is out of range for {self.name!r} (classes 0..{n - 1})")
        return int(target)

    @property
    def num_classes(self) -> int | None:
        """Size of the classifier head, or None for a feature extractor."""
        if not self.has_head:
            return None
        if self.labels is not None:
            return len(self.labels)
        shape = self.output_shape
        return int(shape[-1]) if shape else None

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the network's output without the batch axis (-1 where an ONNX file leaves it open)."""
        if self.module is None:
            if self._onnx_out is None:  # read once: parsing the file is not free
                self._onnx_out = tuple(onnx_io_shapes(self.onnx_path)[1][0])
            return self._onnx_out
        layers = self.layers()
        if layers and len(layers[-1].out_shape) == 1:
            return layers[-1].out_shape
        if self._module_out is None:  # the last module is not the output (a functional flatten after a pool)
            with torch.no_grad():
                out = self.module(torch.zeros(1, *self.input_shape))
            self._module_out = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else ()
        return self._module_out

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of a preprocessed batch without gradients: the torch module, else the injected engine."""
        if self.module is not None:
            with torch.no_grad():
                return self.module(x).float()
        if self.engine is None:
            raise BadInput(
                f"{self.name!r} has neither a torch module nor a forward engine; load it with accel.load, which "
                "gives an ONNX file its sandboxed runner"
            )
        return torch.from_numpy(np.asarray(self.engine(self, x.numpy()))).float()

    def predict(self, img: Image.Image, top: int = 5) -> list[tuple[str, float]]:
        """Top-k (label, probability) for one image; NaN or infinite class scores are a BadInput, never `nan%`."""
        if not self.has_head:
            raise BadInput(f"{self.name!r} has no classifier head, so it cannot predict classes")
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
            raise BadInput(f"top={top!r} asks for no classes; pass a whole number of at least 1")
        logits = self.class_scores(self.preprocess(img))
        if not bool(torch.isfinite(logits).all()):
            raise BadInput(
                f"{self.name!r} gives NaN or infinite class scores for this image, so there are no probabilities "
                "to show: its weights are damaged or overflow on this input; check the checkpoint or model file"
            )
        p = logits.softmax(-1)[0]
        k = min(int(top), p.numel())
        vals, idx = p.topk(k)
        names = self.labels or [str(i) for i in range(p.numel())]
        return [(names[i], float(v)) for v, i in zip(vals.tolist(), idx.tolist())]

    # -- structure ---------------------------------------------------------------------------------------------
    def layers(self) -> list[LayerInfo]:
        """Every tappable layer in execution order with output shape and exact receptive field."""
        if self._layers is not None:
            return self._layers
        if self.module is None:
            self._layers = [LayerInfo("logits", "output", self.output_shape, None)]
            return self._layers
        order = self._trace_layers(self.module)
        rfs: dict[str, Any] = {}
        try:
            from .receptive import receptive_fields

            rfs = receptive_fields(self.module, (1, *self.input_shape))
        except Exception as e:  # noqa: BLE001 - RFs are best effort for arbitrary user architectures
            warnings.warn(f"receptive fields unavailable for {self.name}: {e}", stacklevel=2)
        out = []
        for name, kind, shape in order:
            rf = rfs.get(name)
            pair = None
            if rf is not None and not getattr(rf, "global_", False):
                pair = (int(rf.size[0]), int(rf.stride[0]))
            out.append(LayerInfo(name, kind, shape, pair, rf))
        self._layers = out
        return out

    def _trace_layers(self, module: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
        """(name, kind, output shape) of every named submodule that outputs a tensor, in the order one forward
        pass on a zero image reaches them."""
        order: list[tuple[str, str, tuple[int, ...]]] = []
        seen: set[str] = set()
        handles = []
        for name, m in module.named_modules():
            if not name:
                continue

            def hook(_m: nn.Module, _a: tuple[Any, ...], out: Any, name: str = name) -> None:
                if name in seen or not isinstance(out, torch.Tensor):
                    return
                seen.add(name)
                order.append((name, type(_m).__name__.lower(), tuple(out.shape[1:])))

            handles.append(m.register_forward_hook(hook))
        try:
            with torch.no_grad():
                module(torch.zeros(1, *self.input_shape))
        finally:
            for h in handles:
                h.remove()
        return order

    def layer(self, name: str) -> LayerInfo:
        """The LayerInfo called `name`, or BadInput with suggestions."""
        for li in self.layers():
            if li.name == name:
                return li
        names = [li.name for li in self.layers()]
        raise BadInput(
            f"unknown layer {name!r} for {self.name!r}; layers: {names[:10]} ... ({len(names)} in all)"
        )

    def conv_layers(self) -> list[LayerInfo]:
        """Layers with a spatial (C,H,W) output, the candidates for activations, CAM and max patches."""
        return [li for li in self.layers() if len(li.out_shape) == 3]

    def spatial_layer(self, name: str, refuse: Callable[[LayerInfo, list[str]], str]) -> LayerInfo:
        """The layer called `name` when it outputs a (C,H,W) feature map; else BadInput worded by the calling family:
        `refuse(layer, names of the spatial layers)` (CAM and inspection methods each keep their own message)."""
        li = self.layer(name)
        if len(li.out_shape) != 3:
            raise BadInput(refuse(li, [x.name for x in self.conv_layers()]))
        return li

    def default_spatial_layer(self) -> str | None:
        """The declared CAM layer, else the last (C,H,W) layer whose map is larger than 1x1; None without one.
        The default of every method that reads one feature map (CAM, activations, max patches)."""
        if self.cam_layer:
            return self.cam_layer
        spatial = [li.name for li in self.conv_layers() if li.out_shape[1] > 1 or li.out_shape[2] > 1]
        return spatial[-1] if spatial else None

    def weights_hash(self) -> str:
        """SHA-256 over the module's parameters and buffers (keys the ONNX export cache and the runner pool)."""
        if self._hash is None:
            h = hashlib.sha256(self.name.encode())
            if self.module is not None:
                for k, v in self.module.state_dict().items():
                    h.update(k.encode())
                    h.update(v.detach().cpu().contiguous().numpy().tobytes())
            elif self.onnx_path is not None:
                h.update(file_sha256(self.onnx_path).encode())
            self._hash = h.hexdigest()
        return self._hash

    def weights_changed(self) -> None:
        """Forget the weights hash: call after editing weights in place, so exports and pooled runners keyed on
        it are not shared with the old weights (layer shapes and receptive fields do not depend on values)."""
        self._hash = None


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "Engine",
    "LayerInfo",
    "Preproc",
    "file_sha256",
    "imagenet_labels",
]
