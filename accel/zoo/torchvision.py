"""torchvision classifiers by name: pretrained weights from the torch cache or a download (unless offline), else
random weights with a warning; preprocessing and labels from torchvision's own weight metadata."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbone import Backbone, Preproc
from ..errors import BadInput
from ..settings import get as get_setting
from .packaged import ZOO


def torchvision_names() -> list[str]:
    """Classification architectures torchvision can build by name."""
    from torchvision import models

    return sorted(models.list_models(module=models))


def _pretrained_state(name: str, weights: Any, pretrained: bool | None) -> tuple[dict[str, Any] | None, str]:
    """The pretrained state dict of `weights` (torch cache first, then a download unless CONVLENS_OFFLINE), or
    None and why not."""
    if weights is None:
        return None, "torchvision has no pretrained weights for it"
    if pretrained is False:
        return None, "pretrained=False was asked for"
    fname = os.path.basename(weights.url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / fname
    if cached.exists():
        return torch.load(cached, map_location="cpu", weights_only=True), ""
    if get_setting("CONVLENS_OFFLINE"):
        return None, f"{fname} is not in the torch cache ({cached.parent}) and CONVLENS_OFFLINE is set"
    try:
        return weights.get_state_dict(progress=False, check_hash=True), ""
    except Exception as e:  # noqa: BLE001 - no network here is the common case
        return None, f"downloading {fname} failed ({type(e).__name__}: {str(e)[:80]})"


def build_torchvision(name: str, pretrained: bool | None) -> Backbone:
    """A torchvision classifier by name; `pretrained=None` falls back to random weights with a warning,
    `pretrained=True` refuses instead."""
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
    state, why = _pretrained_state(name, weights, pretrained)
    loaded = state is not None
    if state is not None:
        module.load_state_dict(state)
    else:
        if pretrained:
            raise BadInput(f"pretrained weights for {name!r} are not available: {why}")
        warnings.warn(
            f"{name}: using RANDOM weights ({why}). Results will not reflect a trained network.",
            stacklevel=4,  # the caller of accel.load
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
    net.cam_layer = auto_cam_layer(net) if convs else None
    return net


def auto_cam_layer(net: Backbone) -> str | None:
    """The last layer with a spatial output (the usual Grad-CAM target)."""
    spatial = [li for li in net.layers() if len(li.out_shape) == 3 and li.out_shape[1] > 1]
    return spatial[-1].name if spatial else None


__all__ = ["auto_cam_layer", "build_torchvision", "torchvision_names"]
