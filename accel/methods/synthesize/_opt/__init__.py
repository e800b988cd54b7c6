"""Optimise pixels against objectives: the one kit behind every synthesis technique (after Lucent's plan).

`param` (image parameterisations), `transforms` (random robustness transforms), `objectives` (losses that form an
algebra: ``-class_score(281) + 1e-4 * l2() + 0.1 * tv()``), `forward` (the one capturing pass per step and the
memory check), `loop` (`optimize`), `render` (`OptResult`, image conversions and Results), `checks` (shared
parameter checks) and `styles` (style layers and style images). Techniques use it as ``from . import _opt``.
"""

from .checks import non_negative, parse_names, parse_weights
from .forward import check_layers, check_memory, estimate_bytes, forward, memory_budget_bytes
from .loop import OPTIMIZERS, check_steps_lr, make_optimizer, optimize
from .objectives import (
    Ctx,
    Objective,
    channel,
    class_score,
    feature_error,
    gram,
    gram_loss,
    gram_targets,
    l2,
    layer_l2,
    neuron,
    objective,
    style_distance,
    style_objective,
    tv,
)
from .param import FourierImage, ImageParam, PixelImage, make_param
from .render import (
    OptResult,
    amplified_difference,
    image_result,
    pil_to01,
    quantize,
    records,
    resize01,
    to_pil,
    to_uint8,
)
from .styles import (
    PROCEDURAL_STYLES,
    default_content_layer,
    default_style_layers,
    load_style_image,
    procedural_style,
)
from .transforms import Transform, blur, compose, gaussian_blur, jitter, random_rotate, random_scale

__all__ = [
    "OPTIMIZERS",
    "PROCEDURAL_STYLES",
    "Ctx",
    "FourierImage",
    "ImageParam",
    "Objective",
    "OptResult",
    "PixelImage",
    "Transform",
    "amplified_difference",
    "blur",
    "channel",
    "check_layers",
    "check_memory",
    "check_steps_lr",
    "class_score",
    "compose",
    "default_content_layer",
    "default_style_layers",
    "estimate_bytes",
    "feature_error",
    "forward",
    "gaussian_blur",
    "gram",
    "gram_loss",
    "gram_targets",
    "image_result",
    "jitter",
    "l2",
    "layer_l2",
    "load_style_image",
    "make_optimizer",
    "make_param",
    "memory_budget_bytes",
    "neuron",
    "non_negative",
    "objective",
    "optimize",
    "parse_names",
    "parse_weights",
    "pil_to01",
    "procedural_style",
    "quantize",
    "random_rotate",
    "random_scale",
    "records",
    "resize01",
    "style_distance",
    "style_objective",
    "to_pil",
    "to_uint8",
    "tv",
]
