"""The Result of every attribution map: float32 HxW at the input size, never NaN, with the common meta."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ....errors import BadInput
from ....result import Result

if TYPE_CHECKING:
    from ....backbone import Backbone


def make_result(
    net: Backbone,
    x: torch.Tensor,
    data: np.ndarray,
    t0: float,
    *,
    target: dict[str, Any] | None,
    passes: int,
    backend: str = "torch",
    extras: dict[str, Any] | None = None,
    **meta: Any,
) -> Result:
    """A "map" Result: float32 HxW at the input size, the preprocessed input as image, and the common meta."""
    m = np.ascontiguousarray(data, dtype=np.float32)
    h, w = x.shape[-2:]
    if m.shape != (h, w):
        raise AssertionError(f"map shape {m.shape} != input size {(h, w)}")
    if not np.isfinite(m).all():
        raise BadInput("the attribution is not finite (NaN or inf); check the parameters and the input image")
    info: dict[str, Any] = {
        "target": target,
        "passes": int(passes),
        "backend": backend,
        "wall_s": round(time.perf_counter() - t0, 4),
    }
    info.update(meta)
    return Result("map", m, info, image=net.deprocess(x), extras=extras or {})
