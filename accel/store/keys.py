"""Cache keys: the same weights, method, parameters and image pixels give the same request key, so a stored run
answers a repeated request."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BadInput

__all__ = ["image_key", "jsonable", "request_key"]


def image_key(img: Image.Image) -> str:
    """SHA-256 of an image's pixels (with mode and size), so the same picture keys the same cached runs."""
    if not isinstance(img, Image.Image):
        raise BadInput(f"image_key expects a PIL image, got {type(img).__name__}")
    h = hashlib.sha256(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def jsonable(v: Any) -> Any:
    """A JSON-safe copy of plain parameter values (images become their pixel hash, arrays their content hash)."""
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else repr(v)
    if isinstance(v, np.generic):
        return jsonable(v.item())
    if isinstance(v, Image.Image):
        return {"image": image_key(v)}
    if isinstance(v, np.ndarray):
        return {
            "array": hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest(),
            "shape": list(v.shape),
        }
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        items = sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v
        return [jsonable(x) for x in items]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return jsonable(dataclasses.asdict(v))
    return repr(v)


def request_key(model_hash: str, method: str, params: dict[str, Any], image_key: str | None) -> str:
    """The cache key of a request: same weights, method, parameters and image pixels give the same key."""
    payload = {"model": model_hash, "method": method, "params": jsonable(dict(params)), "image": image_key}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
