"""Ablation-CAM (Desai & Ramaswamy 2020): a channel's weight is the share of the class score lost when that
channel is set to zero, w_k = (y - y_k) / y; the map is ReLU(sum_k w_k A_k), gradient-free.

The K ablated copies of the activation differ only after the layer, so only the graph after it sees the
batches of ablated activations (one pass per `batch_size` channels, never one forward per channel):
- "tail": where the architecture declares its decomposition (`accel.archs`, the one the incremental occlusion
  engine cuts) and the layer is a cut point of it, the runtime's `Tail` (or pool + fc after the head) runs alone;
- "suffix": otherwise a forward hook hands the rest of the network the ablated batch while the layers before it
  run on the one image; tensors from before the layer (a residual branch) broadcast over the batch, which is
  exact, since they are the same for every copy;
- "whole": where the architecture cannot take that (a concatenation with an earlier tensor, a reshape by the
  input's batch size), the whole network runs on the repeated image (pytorch-grad-cam's way).
Each path is checked once on two unablated copies against the recorded logits before it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ...archs import decomposition
from ...registry import LAYER, SILENT, TARGET, Observer, param, register
from ...result import Result
from ...runtime.stages import Tail
from ...taps import resolve
from ._base import CAMBase, Score, run_cam

if TYPE_CHECKING:
    from ...zoo import Backbone

BATCH_BUDGET = 256 * 2**20  # bytes of activations one batch of ablated copies may take (default batch size)
PARITY_RTOL = 1e-4  # the suffix-only pass must reproduce the recorded logits this closely


def declared_tail(net: Backbone, layer: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The network after `layer` as a function of its activations (batch -> logits), where the architecture's
    declared decomposition has a cut there (a chain element, or the head's output); None elsewhere."""
    dec = decomposition(net.module)
    if dec is None or dec.fc is None:
        return None
    names = [n for n, _ in dec.chain]
    if layer in names:
        tail = Tail(net, names.index(layer), ["logits"]).eval()
        return lambda a: tail(a)[0]
    mod = net.require_module("ablationcam")
    ends = [dec.head, *list(dec.head.children())[-1:]] if dec.head is not None else []
    if any(resolve(mod, layer) is m for m in ends):
        pool, fc = dec.pool, dec.fc
        return lambda a: fc(pool(a).flatten(1))
    return None


class AblationCAMWeights(CAMBase):
    """w_k = (y - y_k) / y with y the score and y_k the score with channel k of the layer zeroed (y = 0: y - y_k)."""

    uses_gradients = False

    def __init__(
        self, net: Backbone, layer: str | None = None, batch_size: int | None = None, obs: Observer = SILENT
    ) -> None:
        super().__init__(net, layer, relu=True, backend="torch")
        self.batch_size = batch_size
        self.obs = obs
        self.mode = (
            "suffix"  # "tail", "suffix" or "whole": how the graph after the layer runs (module docstring)
        )
        self.tail: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.score_value = 0.0
        self.weights = np.zeros(0, dtype=np.float32)

    def channel_weights(self, acts: torch.Tensor, grads: torch.Tensor | None, score: Score) -> torch.Tensor:
        assert self.logits is not None
        y = float(score(torch.from_numpy(self.logits).double())[0])
        ablated = self.ablated_scores(acts, score)
        self.score_value = y
        self.weights = ((y - ablated) / (y if y != 0 else 1.0)).astype(np.float32)
        return torch.from_numpy(self.weights)[None]

    def ablated_scores(self, acts: torch.Tensor, score: Score) -> np.ndarray:
        """y_k for every channel k, `batch_size` channels per pass through the graph after the layer."""
        mod = self.net.require_module(f"ablationcam on layer {self.layer}")
        feed: dict[str, torch.Tensor] = {}

        def hook(_m: Any, _a: Any, _out: Any) -> torch.Tensor:
            return feed["a"]

        k = acts.shape[1]
        out = np.empty(k, dtype=np.float64)
        handle = resolve(mod, self.layer).register_forward_hook(hook)
        try:
            with torch.no_grad():
                self.tail = declared_tail(self.net, self.layer)
                self.mode = "suffix" if self.tail is None else "tail"
                self.check_suffix(mod, feed, acts)
                step = self.batch_size or self.default_batch(k)
                for start in range(0, k, step):
                    idx = torch.arange(start, min(k, start + step))
                    batch = acts.repeat(len(idx), 1, 1, 1)
                    batch[torch.arange(len(idx)), idx] = 0
                    out[start : start + len(idx)] = score(self.after(mod, feed, batch).double()).numpy()
                    self.obs.progress(
                        0.1 + 0.9 * (start + len(idx)) / k, f"ablationcam {start + len(idx)}/{k}"
                    )
        finally:
            handle.remove()
        return out

    def default_batch(self, channels: int) -> int:
        """As many ablated copies as fit BATCH_BUDGET: each holds the layer's output and every later layer's
        (every layer's when the whole network runs per copy), at most all `channels` in one pass."""
        names = [li.name for li in self.net.layers()]
        later = names[names.index(self.layer) :] if self.mode != "whole" and self.layer in names else names
        shapes = {li.name: li.out_shape for li in self.net.layers()}
        per = 4 * sum(int(np.prod(shapes[n])) for n in later)
        return int(max(1, min(channels, BATCH_BUDGET // max(per, 1))))

    def after(self, mod: torch.nn.Module, feed: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        """Logits of the network with the layer's output replaced by `batch` (the hook reads `feed`)."""
        assert self.x is not None
        self.passes += 1
        if self.mode == "tail" and self.tail is not None:
            return self.tail(batch).float()
        feed["a"] = batch
        x = self.x if self.mode == "suffix" else self.x.expand(len(batch), *self.x.shape[1:])
        return mod(x).float()

    def check_suffix(self, mod: torch.nn.Module, feed: dict[str, torch.Tensor], acts: torch.Tensor) -> None:
        """Run two unablated copies through the tail or suffix path; fall back to whole passes unless both rows
        reproduce the recorded logits."""
        assert self.logits is not None
        want = torch.from_numpy(self.logits).float()
        try:
            z = self.after(mod, feed, acts.repeat(2, 1, 1, 1))
            ok = tuple(z.shape) == (2, want.shape[-1]) and bool(
                torch.allclose(
                    z, want.expand_as(z), rtol=PARITY_RTOL, atol=PARITY_RTOL * float(want.abs().max())
                )
            )
        except RuntimeError:  # a concatenation or reshape needing the same batch before and after the layer
            ok = False
        if not ok:
            self.mode = "whole"


@dataclass
class AblationCAMParams:
    target: int | None = TARGET()
    layer: str | None = LAYER()
    batch_size: int | None = param(
        None,
        "ablated copies per pass through the graph after the layer (default: as many as fit 256 MB)",
        min=1,
    )


@register(
    "ablationcam",
    "attribute",
    AblationCAMParams,
    paper="Desai & Ramaswamy 2020, Ablation-CAM: Visual Explanations for Deep Convolutional Network via "
    "Gradient-free Localization",
    needs_grad=False,
)
def run(net: Backbone, img: Image.Image, p: AblationCAMParams, obs: Observer) -> Result:
    """ReLU(sum_k w_k A_k) with w_k = (y - y_k) / y, the score's relative drop when channel k is zeroed."""
    cam = AblationCAMWeights(net, p.layer, p.batch_size, obs)
    res = run_cam(cam, net, img, p.target, "ablationcam", obs=obs)
    res.meta.update(ablated_channels=len(cam.weights), graph=cam.mode, score=cam.score_value)
    res.extras["weights"] = cam.weights
    return res
