"""The attribution base: what every attribution technique shares, one room per concept.

`targets` (input, class, foil, layer), `rules` (guided/deconvnet rectifier rules), `gradients` (input gradients,
channel reductions, upsampling), `baselines` (reference inputs), `results` (a run's start and its map Result),
`backprop` (modified-backprop maps) and `cam` (the CAM family's base). Every map is float32 HxW at the preprocessed
input size and is not normalised; gradient work runs on `net.module`, forward-only work through `accel.runner`.
"""

from .backprop import RuleParams, run_rule
from .baselines import blur, make_baseline
from .cam import CAMBase, GradCAMWeights, run_cam
from .gradients import REDUCTIONS, class_gradient, gradient_rgb, input_gradient, reduce_channels, upsample
from .results import MapRun
from .targets import Score, check_layer, resolve_target, torch_logits

__all__ = [
    "REDUCTIONS",
    "CAMBase",
    "GradCAMWeights",
    "MapRun",
    "RuleParams",
    "Score",
    "blur",
    "check_layer",
    "class_gradient",
    "gradient_rgb",
    "input_gradient",
    "make_baseline",
    "reduce_channels",
    "resolve_target",
    "run_cam",
    "run_rule",
    "torch_logits",
    "upsample",
]
