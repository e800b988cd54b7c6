"""What an attribution explains: the input tensor, the class (target, foil, linear scores) and the layer.

Every attribution method starts here: the preprocessed input, the head check, the target defaulting to the
prediction, its meta (index, label, logit, probability), and the layer a CAM reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ....errors import BadInput

if TYPE_CHECKING:
    from ....backbone import Backbone


def input_tensor(net: Backbone, img: Image.Image | torch.Tensor | np.ndarray) -> torch.Tensor:
    """The preprocessed network input (1,C,H,W) float32 for one PIL image, or an already preprocessed
    (1,C,H,W)/(C,H,W) tensor or array (what metrics that perturb the input, e.g. robustness, hand back)."""
    if isinstance(img, Image.Image):
        return net.preprocess(img).float().detach()
    if isinstance(img, (torch.Tensor, np.ndarray)):
        x = torch.as_tensor(np.asarray(img.detach().cpu() if isinstance(img, torch.Tensor) else img))
        x = x.float()
        if x.ndim == 3:
            x = x[None]
        want = tuple(net.input_shape)
        if x.ndim != 4 or len(x) != 1 or tuple(x.shape[1:]) != want:
            raise BadInput(
                f"{net.name} expects a preprocessed input of shape (1, {want}), got {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise BadInput("the preprocessed input contains NaN or inf")
        return x.detach().contiguous()
    raise BadInput(f"expected a PIL image (use accel.open_image), got {type(img).__name__}")


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


def check_layer(net: Backbone, layer: str, spatial: bool = True) -> str:
    """Validate a layer name from `net.layers()`; with `spatial`, require a (C,H,W) feature map."""
    if not spatial:
        net.layer(layer)  # BadInput with suggestions when unknown
        return layer
    net.spatial_layer(
        layer,
        lambda info, convs: (
            f"layer {layer!r} of {net.name!r} outputs shape {info.out_shape}, not a (C,H,W) feature map; "
            f"choose a convolutional layer, e.g. {convs[-3:]}"
        ),
    )
    return layer


def default_cam_layer(net: Backbone) -> str:
    """The backbone's declared CAM layer, else the last layer with a spatial map larger than 1x1."""
    if net.module is None:
        raise BadInput(
            f"{net.name!r} is a forward-only ONNX file that exposes only its logits; CAM methods need a conv "
            "layer's activations: load the PyTorch weights (a zoo name or a checkpoint) instead"
        )
    name = net.default_spatial_layer()
    if name is None:
        raise BadInput(f"{net.name!r} has no convolutional layer with a spatial output for a CAM")
    return name
