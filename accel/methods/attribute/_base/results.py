"""The Result of every attribution map: float32 HxW at the input size, never NaN, with the common meta."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ....errors import BadInput
from ....result import Result
from .targets import input_tensor, require_head, target_meta

if TYPE_CHECKING:
    from ....backbone import Backbone


class MapRun:
    """One attribution run under way: its clock, backbone and preprocessed input (`x`), and `result`, which
    packages the map with the common meta; every map method starts and ends through it."""

    def __init__(
        self, net: Backbone, img: Image.Image, method: str | None = None, target: int | None = None
    ) -> None:
        """Start the clock; with `method` (a class explanation) refuse a headless net or a bad `target` before
        any pass; then preprocess `img`."""
        self.t0 = time.perf_counter()
        self.net = net
        if method is not None:
            require_head(net, method)
            net.check_target(target)
        self.x = input_tensor(net, img)

    def result(
        self,
        data: np.ndarray,
        t: int | None,
        logits: np.ndarray | None,
        *,
        passes: int,
        backend: str = "torch",
        extras: dict[str, Any] | None = None,
        **meta: Any,
    ) -> Result:
        """A "map" Result: float32 HxW at the input size, the preprocessed input as image, the explained class `t`
        (index, label, logit, probability from `logits`; None when a layer's unit is explained) and the meta."""
        m = np.ascontiguousarray(data, dtype=np.float32)
        h, w = self.x.shape[-2:]
        if m.shape != (h, w):
            raise AssertionError(f"map shape {m.shape} != input size {(h, w)}")
        if not np.isfinite(m).all():
            raise BadInput(
                "the attribution is not finite (NaN or inf); check the parameters and the input image"
            )
        info: dict[str, Any] = {
            "target": None if t is None or logits is None else target_meta(self.net, t, logits),
            "passes": int(passes),
            "backend": backend,
            "wall_s": round(time.perf_counter() - self.t0, 4),
        }
        info.update(meta)
        return Result("map", m, info, image=self.net.deprocess(self.x), extras=extras or {})
