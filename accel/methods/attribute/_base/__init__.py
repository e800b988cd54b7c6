"""The attribution base: what every attribution technique shares, one room per concept.

`targets` (input, class, foil, layer), `rules` (guided/deconvnet rectifier rules), `gradients` (input gradients,
channel reductions, upsampling), `baselines` (reference inputs), `results` (the map Result), `backprop`
(modified-backprop maps) and `cam` (the CAM family's base). Every map is float32 HxW at the preprocessed input
size and is not normalised; gradient work runs on `net.module`, forward-only work through `accel.runner`.
"""

from .backprop import run_rule
from .baselines import blur, make_baseline
from .cam import CAMBase, GradCAMWeights, run_cam
from .gradients import REDUCTIONS, class_gradient, gradient_rgb, input_gradient, reduce_channels, upsample
from .results import make_result
from .rules import rectifier_rule
from .targets import (
    Score,
    check_layer,
    default_cam_layer,
    input_tensor,
    require_head,
    resolve_target,
    second_class,
    target_meta,
    torch_logits,
)

__all__ = [
    "REDUCTIONS",
    "CAMBase",
    "GradCAMWeights",
    "Score",
    "blur",
    "check_layer",
    "class_gradient",
    "default_cam_layer",
    "gradient_rgb",
    "input_gradient",
    "input_tensor",
    "make_baseline",
    "make_result",
    "rectifier_rule",
    "reduce_channels",
    "require_head",
    "resolve_target",
    "run_cam",
    "run_rule",
    "second_class",
    "target_meta",
    "torch_logits",
    "upsample",
]
