"""The class-activation-map family's base (after pytorch-grad-cam): one class owns the hook, the passes and the
upsampling; a subclass defines only how channels are weighted (Grad-CAM, Grad-CAM++, Score-CAM, CAM, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ....errors import BadInput
from ....registry import SILENT, Observer
from ....result import Result
from ....runtime.runner import Runner, runner
from ....taps import resolve
from .gradients import upsample
from .results import MapRun
from .targets import (
    Score,
    check_layer,
    default_cam_layer,
    require_head,
    resolve_target,
    second_class,
    target_meta,
)

if TYPE_CHECKING:
    from ....backbone import Backbone


class CAMBase:
    """Class activation maps over one conv layer: owns the hook, the forward (and backward) pass and the upsampling.

    A subclass overrides `channel_weights(acts, grads, score)` only; the map is sum_k w_k A_k (ReLU'd when
    `relu`), bilinearly upsampled to the input size. One forward pass serves both the default target and the
    map; gradient-free subclasses (`uses_gradients = False`) may run that pass on ONNX Runtime (`backend`).
    """

    uses_gradients = True

    def __init__(
        self, net: Backbone, layer: str | None = None, relu: bool = True, backend: str = "torch"
    ) -> None:
        self.net = net
        self.layer = check_layer(net, layer or default_cam_layer(net), spatial=True)
        self.relu = relu
        self.passes = 0
        self.backend = "torch"
        self.requested_backend = backend
        self.x: torch.Tensor | None = None
        self.acts: torch.Tensor | None = None
        self.logits: np.ndarray | None = None
        self._logits_graph: torch.Tensor | None = None
        self.batch_size: int | None = None
        self.runner: Runner | None = None  # the forward-only runner, when the pass ran through one

    # -- passes ---------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> np.ndarray:
        """One forward pass recording the layer's activations (1,K,h,w); returns the logits (1, classes)."""
        require_head(self.net, f"CAM on layer {self.layer}")
        self.record(x)
        assert self.logits is not None
        return self.logits

    def record(self, x: torch.Tensor) -> None:
        """The forward pass itself: the layer's activations, and the logits when the backbone has a head (a
        class-free method such as Eigen-CAM also reads a headless backbone's feature map)."""
        self.x = x.detach().float()
        if not self.uses_gradients and self.requested_backend != "torch":
            # a user's ONNX file exposes one tap, "logits": its output, a feature map when it is headless
            taps = list(dict.fromkeys([self.layer, *(["logits"] if self.net.has_head else [])]))
            r = runner(self.net, taps, backend=self.requested_backend, batch_size=self.batch_size)
            self.runner = r
            out = r.run(self.x.numpy())
            self.backend = r.backend
            self.passes += r.last_passes  # this thread's passes (pooled runners are shared)
            self.acts = torch.from_numpy(out[self.layer])
            self.logits = out["logits"] if self.net.has_head else None
            return
        mod = self.net.require_module(f"CAM on layer {self.layer}")
        sub = resolve(mod, self.layer)
        store: dict[str, torch.Tensor] = {}

        def hook(_m: Any, _a: Any, out: Any) -> torch.Tensor:
            t = out[0] if isinstance(out, (tuple, list)) else out
            # cut the graph here (no backward through earlier layers); hand the network a copy, so that an
            # in-place op after this layer (a ReLU, a residual +=) cannot modify the recorded leaf
            leaf = t.detach().requires_grad_(self.uses_gradients)
            store["a"] = leaf
            return leaf.clone()

        h = sub.register_forward_hook(hook)
        try:
            with torch.enable_grad() if self.uses_gradients else torch.no_grad():
                logits = mod(self.x)
        finally:
            h.remove()
        self.passes += 1
        self.acts = store["a"]
        self._logits_graph = logits if self.uses_gradients else None
        self.logits = logits.detach().float().numpy() if self.net.has_head else None

    def gradients(self, score: Score) -> torch.Tensor:
        """d score / d activations (1,K,h,w) from the recorded forward pass (kept for repeated scores)."""
        if self._logits_graph is None or self.acts is None:
            raise RuntimeError("call forward() with uses_gradients before gradients()")
        (g,) = torch.autograd.grad(
            score(self._logits_graph).sum(), self.acts, retain_graph=True, allow_unused=True
        )
        return torch.zeros_like(self.acts) if g is None else g.detach()

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        """(1,K) weights of the K channels; the one thing each CAM method defines."""
        raise NotImplementedError

    def low_map(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        """(1,h,w) map before the ReLU: sum_k w_k A_k. Methods that weight each position, not each channel
        (HiResCAM, LayerCAM) or that need no class at all (EigenCAM) override this instead of the weights."""
        w = self.channel_weights(acts, grads, score).to(acts.dtype)
        return (w[:, :, None, None] * acts).sum(1)

    def compute(self, score: Score) -> tuple[np.ndarray, np.ndarray]:
        """(map HxW at input size, low-resolution map hxw) for the score, after `forward`."""
        if self.acts is None or self.x is None:
            raise RuntimeError("call forward() before compute()")
        grads = self.gradients(score) if self.uses_gradients else None
        acts = self.acts.detach()
        with torch.no_grad():
            cam = self.low_map(acts, grads, score)
            if self.relu:
                cam = cam.clamp(min=0)
            big = upsample(cam, tuple(self.x.shape[-2:]))
        return big[0].numpy().astype(np.float32), cam[0].numpy().astype(np.float32)


class GradCAMWeights(CAMBase):
    """Grad-CAM (Selvaraju et al.): w_k = spatial mean of d score / d A_k."""

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        assert grads is not None
        return grads.mean((2, 3))


def run_cam(
    cam: CAMBase,
    net: Backbone,
    img: Image.Image,
    target: int | None,
    method: str,
    *,
    foil: int | None = None,
    contrast: bool = False,
    obs: Observer = SILENT,
    **meta: Any,
) -> Result:
    """Resolve the target (and foil), run a CAM and package the Result."""
    run = MapRun(net, img, method, target)  # fails fast, before any pass
    if foil is not None:
        net.check_target(foil)
    logits = cam.forward(run.x)
    t = resolve_target(net, target, logits, method)
    coefs: dict[int, float] = {t: 1.0}
    extra_meta: dict[str, Any] = {}
    if contrast:
        b = second_class(logits, t) if foil is None else net.check_target(foil)
        assert b is not None
        if b == t:
            raise BadInput(f"{method}: foil {b} equals the target; choose a different class to contrast with")
        coefs[b] = -1.0
        extra_meta["foil"] = target_meta(net, b, logits)
    obs.progress(0.1, f"{method}: layer {cam.layer}")
    big, low = cam.compute(Score(coefs))
    obs.progress(1.0, "done")
    return run.result(
        big,
        t,
        logits,
        passes=cam.passes,
        backend=cam.backend,
        extras={"lowres": low},
        layer=cam.layer,
        **extra_meta,
        **meta,
    )
