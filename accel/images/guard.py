"""The decoding guard: the pixel budget, and every exception of Pillow or the libraries below turned into BadInput.

Decoders fail in many ways (corrupt data, decompression bombs, memory); `guarded` runs one step and words each
failure as `BadInput` or `ResourceLimit` without echoing the file's bytes.
"""

from __future__ import annotations

import re
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from PIL import Image

from ..errors import BadInput, ResourceLimit
from ..limits import CAPS, cap

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENV_MAX_PIXELS",
    "bomb_message",
    "check_size",
    "guarded",
    "memory_error",
    "pixel_limit",
    "quiet_pil_warnings",
    "why",
]

DEFAULT_MAX_PIXELS = CAPS["pixels"].default
ENV_MAX_PIXELS = CAPS["pixels"].env
# Python's warnings filters are process-global; this lock keeps our temporary filter consistent across threads.
_WARN_LOCK = threading.Lock()


def pixel_limit(max_pixels: int | None = None) -> int:
    """The pixel budget: the argument, else the CONVLENS_MAX_PIXELS setting (SettingError if malformed).

    Every check of an image's size (decoded files, ONNX inputs) asks this one function."""
    if max_pixels is None:
        max_pixels = cap("pixels")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
        raise BadInput(f"max_pixels must be a positive whole number, got {max_pixels!r}")
    return int(max_pixels)


def why(e: BaseException) -> str:
    """A library's exception as a short clause for a message, with any quoted file bytes blanked out."""
    text = str(e).strip() or type(e).__name__
    text = re.sub(r"""b(['"]).*?(?<!\\)\1""", "b'...'", text)  # bytes literals may quote the file's contents
    text = re.sub(r"\b(?:0x)?[0-9a-fA-F]{2}(?: [0-9a-fA-F]{2}){3,}\b", "...", text)  # hex dumps
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 120 else text[:117] + "..."


def memory_error(label: str) -> ResourceLimit:
    """The ResourceLimit for running out of memory while decoding, naming the setting that refuses earlier."""
    return ResourceLimit(
        f"{label}: ran out of memory while decoding the image; use a smaller image, or lower max_pixels / "
        f"{ENV_MAX_PIXELS} so that images this large are refused from their header"
    )


def guarded(step: Callable[[], Any], label: str, fmt: str, limit: int) -> Any:
    """Run one decoding step; every exception from Pillow or below becomes a BadInput subclass."""
    try:
        return step()
    except BadInput:
        raise
    except Image.DecompressionBombError as e:
        raise ResourceLimit(bomb_message(e, label, limit)) from None
    except MemoryError:
        raise memory_error(label) from None
    except Exception as e:  # noqa: BLE001 - the boundary: nothing from the decoders may pass as anything else
        raise BadInput(
            f"{label}: the {fmt} data is truncated or corrupt ({why(e)}); the file may be incomplete "
            "(an interrupted download or copy?)"
        ) from None


def bomb_message(e: Image.DecompressionBombError, label: str, limit: int) -> str:
    """ResourceLimit text for PIL's own hard limit, with the declared size when the traceback holds the image."""
    m = re.search(r"\((\d+) pixels\)", str(e))
    pixels = int(m.group(1)) if m else None
    size = _declared_size(e, pixels)
    if size is not None:
        what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels"
    elif pixels is not None:
        what = f"{pixels:,} pixels"
    else:
        what = f"more than {_pil_hard_limit()}"
    if pixels is None or pixels > limit:
        return (
            f"{label}: the image is {what}, over the limit of {limit:,} pixels (a guard against decompression "
            "bombs; refused from the header). If the image is genuine, raise the limit with "
            f"open_image(..., max_pixels=N) or the environment variable {ENV_MAX_PIXELS}=N"
        )
    return (
        f"{label}: the image is {what}, beyond PIL's own hard limit of {_pil_hard_limit()}; refused as a "
        "decompression bomb. If the image is genuine, raise PIL.Image.MAX_IMAGE_PIXELS as well as "
        f"max_pixels / {ENV_MAX_PIXELS}"
    )


def _pil_hard_limit() -> str:
    """PIL's own hard limit (twice its warning limit) in words, for messages."""
    limit = Image.MAX_IMAGE_PIXELS
    return f"{2 * limit:,} pixels" if limit else "its pixel count"


def _declared_size(e: BaseException, pixels: int | None) -> tuple[int, int] | None:
    """The (w, h) PIL refused, read from the refusing frames' image objects (only for the message)."""
    tb = e.__traceback__
    found = None
    while tb is not None:
        for key in ("size", "im", "self"):
            v = tb.tb_frame.f_locals.get(key)
            size = v.size if isinstance(v, Image.Image) else v
            if (
                isinstance(size, tuple)
                and len(size) == 2
                and all(isinstance(s, int) for s in size)
                and (pixels is None or size[0] * size[1] == pixels)
            ):
                found = (int(size[0]), int(size[1]))
        tb = tb.tb_next
    return found


@contextmanager
def quiet_pil_warnings() -> Iterator[None]:
    """Silence PIL's DecompressionBombWarning (we enforce our own limit) and its "could not identify" notes."""
    with _WARN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def check_size(size: tuple[int, int], limit: int, label: str) -> None:
    """BadInput for a zero dimension, ResourceLimit for more than `limit` pixels (a decompression-bomb guard)."""
    w, h = size
    if w <= 0 or h <= 0:
        raise BadInput(f"{label}: the image has a zero dimension ({w}x{h} pixels)")
    pixels = w * h
    if pixels > limit:
        raise ResourceLimit(
            f"{label}: the image is {w}x{h} = {pixels:,} pixels, over the limit of {limit:,} pixels "
            "(a guard against decompression bombs). If the image is genuine, raise the limit with "
            f"open_image(..., max_pixels=N) or the environment variable {ENV_MAX_PIXELS}=N"
        )
