"""LayerCAM (Jiang et al. 2021): positive gradients weight the activations position by position, so shallow
layers give reliable maps too, and maps from several layers fuse into one finer map.

One layer: M(i,j) = ReLU(sum_k ReLU(dS/dA_k(i,j)) * A_k(i,j)), upsampled, not normalised. Several layers (the
paper's fusion, Sec. III-C, as TorchCAM implements it): each layer's map is upsampled to the input, scaled as in
the paper's Eq. 9, M' = tanh(gamma * M / max M) (shallow layers' maps have small values; without the scaling
the deepest layer would dominate), and the fused map is the elementwise maximum of the scaled maps (in [0, 1)).
All layers' gradients come from one forward and one backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ...registry import LAYERS, TARGET, Observer, param, register
from ...result import Result
from ...taps import resolve
from ..synthesize._opt import parse_names
from ._base import CAMBase, MapRun, Score, check_layer, resolve_target, run_cam, upsample
from ._base.targets import default_cam_layer

if TYPE_CHECKING:
    from ...zoo import Backbone


class LayerCAMMap(CAMBase):
    """M(i,j) = sum_k ReLU(dS/dA_k(i,j)) * A_k(i,j) (before the final ReLU)."""

    def low_map(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        assert grads is not None
        return (grads.clamp(min=0) * acts).sum(1)


def layer_grads(
    net: Backbone, x: torch.Tensor, layers: list[str], method: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass recording the named layers' outputs with the graph kept: (logits, {layer: output}).

    Each hook hands the network a copy of the output, so an in-place op after the layer (a ReLU, a residual
    `+=`) cannot change the recorded tensor."""
    mod = net.require_module(method)
    store: dict[str, torch.Tensor] = {}

    def hook_for(name: str) -> Any:
        def hook(_m: Any, _a: Any, out: Any) -> torch.Tensor:
            t = out[0] if isinstance(out, (tuple, list)) else out
            store[name] = t
            return t.clone()

        return hook

    handles = [resolve(mod, name).register_forward_hook(hook_for(name)) for name in layers]
    try:
        with torch.enable_grad():
            logits = mod(x.detach().clone().requires_grad_(True))
    finally:
        for h in handles:
            h.remove()
    return logits, store


def fuse(maps: list[torch.Tensor], gamma: float) -> torch.Tensor:
    """Elementwise max over layers of tanh(gamma * M / max M) (Eq. 9); a map that is 0 everywhere stays 0."""
    scaled = []
    for m in maps:
        top = float(m.max())
        scaled.append(torch.tanh(gamma * m / top) if top > 0 else torch.zeros_like(m))
    return torch.stack(scaled).amax(0)


def run_fused(net: Backbone, img: Image.Image, p: LayerCAMParams, layers: list[str], obs: Observer) -> Result:
    """LayerCAM on several layers from one forward/backward, fused (see the module docstring)."""
    run = MapRun(net, img, "layercam", p.target)
    logits, acts = layer_grads(net, run.x, layers, "layercam")
    z = logits.detach().float().numpy()
    t = resolve_target(net, p.target, z, "layercam")
    obs.progress(0.3, f"layercam: {len(layers)} layers")
    order = [acts[name] for name in layers]
    grads = torch.autograd.grad(logits[:, t].sum(), order, allow_unused=True)
    size = tuple(run.x.shape[-2:])
    low, big = {}, []
    with torch.no_grad():
        for name, a, g in zip(layers, order, grads):
            g = torch.zeros_like(a) if g is None else g
            m = (g.clamp(min=0) * a.detach()).sum(1).clamp(min=0)
            low[name] = m[0].float().numpy()
            big.append(upsample(m, size)[0].float())
        fused = fuse(big, p.gamma)
    obs.progress(1.0, "done")
    return run.result(
        fused.numpy(),
        t,
        z,
        passes=1,
        extras={"lowres": low, "per_layer": torch.stack(big).numpy()},
        layers=layers,
        gamma=p.gamma,
    )


@dataclass
class LayerCAMParams:
    target: int | None = TARGET()
    layers: str = LAYERS(
        "", "comma-separated conv layers; several are fused (empty = the backbone's CAM layer)"
    )
    gamma: float = param(
        2.0, "fusion scale: tanh(gamma * M / max M) per layer (the paper's 2)", min=0.01, max=100.0
    )


@register(
    "layercam",
    "attribute",
    LayerCAMParams,
    paper="Jiang et al. 2021, LayerCAM: Exploring Hierarchical Class Activation Maps for Localization",
    needs_grad=True,
)
def run(net: Backbone, img: Image.Image, p: LayerCAMParams, obs: Observer) -> Result:
    """ReLU(sum_k ReLU(dS/dA_k) * A_k) on one layer; on several, the elementwise max of their scaled maps."""
    layers = parse_names(p.layers, "layercam layers") if p.layers.strip() else [default_cam_layer(net)]
    layers = list(dict.fromkeys(check_layer(net, name, spatial=True) for name in layers))
    if len(layers) == 1:
        return run_cam(LayerCAMMap(net, layers[0]), net, img, p.target, "layercam", obs=obs)
    return run_fused(net, img, p, layers, obs)
