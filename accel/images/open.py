"""Safe image opening: `open_image`, the one boundary that turns user-supplied bytes into pixels.

Pillow identifies the file (restricted to SUPPORTED_FORMATS) and decodes it inside a guard that turns *every*
exception of Pillow and the libraries underneath into `BadInput` (`ResourceLimit` for size and memory) with a message
saying what was wrong and what to do. A pixel budget is checked from the header before anything is decoded, TIFF
variants Pillow has no pixel mode for (float or signed RGB, planar 16-bit, ...) are decoded with tifffile, and PIL's
global settings are never changed (so it is safe to call from several threads at once).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import IO, BinaryIO

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import BadInput, ResourceLimit
from .describe import describe_unidentified
from .formats import decodable_formats
from .guard import bomb_message, check_size, guarded, memory_error, pixel_limit, quiet_pil_warnings, why
from .modes import to_rgb
from .tiff import TIFF_MAGIC, decode_tiff, import_tifffile, silence_libtiff

__all__ = ["ImageSource", "open_image"]

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | Image.Image

_SNIFF_BYTES = 4096
_MAX_NAME = 200  # characters of a caller-supplied name shown in messages


def open_image(
    src: ImageSource,
    *,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    label: str | None = None,
) -> Image.Image:
    """A path, bytes or binary file as a fully loaded, upright RGB image, or `BadInput` saying what is wrong.

    Images over `max_pixels` (default: CONVLENS_MAX_PIXELS, else 50 M) are refused from the header alone. `label`
    is what messages call the input (e.g. the user's original file name instead of a server-side storage path)."""
    limit = pixel_limit(max_pixels)
    bg = _check_background(background)
    shown = _shown_name(label)
    if isinstance(src, Image.Image):
        what = shown or "image"
        guarded(lambda: check_size(src.size, limit, what), what, "image", limit)
        return guarded(lambda: to_rgb(src, bg).copy(), what, "image", limit)
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        what = shown or "image bytes"
        if not data:
            raise BadInput(f"{what}: the input is empty (0 bytes)")
        return _decode(io.BytesIO(data), what, limit, bg)
    if isinstance(src, (str, os.PathLike)):
        what = shown or _path_label(src)
        path = _check_path(src, what)
        try:
            fp = open(path, "rb")  # noqa: SIM115 - closed below, after decoding
        except OSError as e:
            raise BadInput(f"{what}: cannot be read ({e.strerror or type(e).__name__})") from None
        with fp:
            return _decode(fp, what, limit, bg)
    if hasattr(src, "read"):
        stream_name = getattr(src, "name", None)
        what = shown or (repr(stream_name[:_MAX_NAME]) if isinstance(stream_name, str) else "image stream")
        try:
            data = src.read()
        except Exception as e:  # noqa: BLE001 - a caller's stream may raise anything; it is their input
            raise BadInput(f"{what}: cannot be read ({why(e)})") from None
        if isinstance(data, str):
            raise BadInput(f"{what}: is a text stream; open the file in binary mode ('rb')")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise BadInput(f"{what}: read() returned {type(data).__name__}, not bytes")
        if not data:
            raise BadInput(f"{what}: the input is empty (0 bytes)")
        return _decode(io.BytesIO(bytes(data)), what, limit, bg)
    raise BadInput(
        f"cannot open an image from a {type(src).__name__}; pass a file path, bytes, or a binary file object"
    )


def _shown_name(name: str | None) -> str | None:
    """The caller's name for the input, quoted and shortened for messages (None: describe the input itself)."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise BadInput(
            f"label must be a string (the file name to show in messages), got {type(name).__name__}"
        )
    text = name.strip() or "(unnamed file)"
    if len(text) > _MAX_NAME:
        text = text[: _MAX_NAME - 3] + "..."
    return repr(text)


def _path_label(src: str | os.PathLike[str]) -> str:
    """A path as messages show it: quoted, long ones cut from the left (the file name is what matters)."""
    text = os.fspath(src)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return repr(text if len(text) <= 2 * _MAX_NAME else "..." + text[-2 * _MAX_NAME :])


def _check_background(background: Sequence[int]) -> tuple[int, int, int]:
    """The composite background for transparent images, checked to be three 0..255 integers."""
    try:
        bg = tuple(int(v) for v in background)
    except (TypeError, ValueError):
        bg = ()
    if len(bg) != 3 or not all(0 <= v <= 255 for v in bg):
        raise BadInput(f"background must be three integers in 0..255 (r, g, b), got {background!r}")
    return bg[0], bg[1], bg[2]


def _check_path(src: str | os.PathLike[str], label: str) -> Path:
    """The path of an existing, non-empty regular file; URLs, folders and missing files are refused by name."""
    text = os.fspath(src)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if re.match(r"^(https?|ftp)://", text, re.IGNORECASE):
        raise BadInput(f"{label}: is a URL; download the image first and pass the file or its bytes")
    if text.lower().startswith("data:"):
        raise BadInput("the input is a data: URL (text); decode its base64 payload and pass the bytes")
    try:
        path = Path(text).expanduser()
        st = path.stat()
    except FileNotFoundError:
        raise BadInput(f"{label}: file not found (no such file)") from None
    except (OSError, ValueError, RuntimeError) as e:  # permissions, NUL bytes, names too long, ~nosuchuser
        raise BadInput(f"{label}: cannot be accessed ({getattr(e, 'strerror', None) or why(e)})") from None
    if path.is_dir():
        raise BadInput(f"{label}: is a directory, not an image file")
    if st.st_size == 0:
        raise BadInput(f"{label}: the file is empty (0 bytes)")
    return path


# --------------------------------------------------------------------------------------------- decoding


_LOGGERS_QUIET: list[bool] = []


def _quiet_library_loggers() -> None:
    """Pillow and tifffile log damaged headers (e.g. PIL.TiffImagePlugin at ERROR level); with no handler
    configured, Python's last-resort handler would print those lines to stderr beside our one-line message.
    A NullHandler (what libraries are meant to add themselves) stops that; configured logging still gets them."""
    if _LOGGERS_QUIET:
        return
    _LOGGERS_QUIET.append(True)
    for name in ("PIL", "tifffile"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())


def _decode(fp: IO[bytes], label: str, limit: int, bg: tuple[int, int, int]) -> Image.Image:
    """Identify, size-check, decode and convert one image from a seekable binary stream."""
    _quiet_library_loggers()
    try:
        head = fp.read(_SNIFF_BYTES)
        fp.seek(0)
    except OSError as e:
        raise BadInput(f"{label}: cannot be read ({e.strerror or type(e).__name__})") from None
    if not head:
        raise BadInput(f"{label}: the input is empty (0 bytes)")
    tiff = head.startswith(TIFF_MAGIC)
    if tiff:
        silence_libtiff()
        # variants Pillow decodes wrongly or not at all (float, signed, 16/32-bit, planar) go to tifffile
        out = decode_tiff(fp, label, limit, bg, fallback=False)
        if out is not None:
            return out
    try:
        return _decode_pillow(fp, label, limit, bg, head)
    except ResourceLimit:
        raise
    except BadInput as e:
        if not tiff:
            raise
        if import_tifffile() is None:
            raise BadInput(
                f"{e}. If the TIFF is valid, it may hold samples Pillow has no mode for (float, signed, 32-bit "
                "or planar): install tifffile (pip install tifffile) to decode those, or re-save it as 8/16-bit PNG"
            ) from None
        better = decode_tiff(fp, label, limit, bg, fallback=True)
        if better is None:  # tifffile cannot parse it either: Pillow's message stands
            raise
        return better


def _decode_pillow(
    fp: IO[bytes], label: str, limit: int, bg: tuple[int, int, int], head: bytes
) -> Image.Image:
    """Pillow's path: identify, check the size, decode, turn upright by EXIF and convert to RGB, all guarded."""
    im = _identify(fp, label, head, limit)  # not closed here: that would close the caller's file
    fmt = im.format or "image"
    check_size(im.size, limit, label)
    guarded(lambda: _load(im), label, fmt, limit)
    upright = guarded(lambda: _exif_upright(im), label, fmt, limit)
    check_size(upright.size, limit, label)
    return guarded(lambda: to_rgb(upright, bg), label, fmt, limit)


def _load(im: Image.Image) -> None:
    """Decode the pixels. TIFF loading re-reads its tags and warns about damaged ones (we raise or decode instead);
    past PIL's own warning limit TIFF/GIF decoding re-checks the size: both quietly (briefly holds the lock)."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    if im.format == "TIFF" or (pil_limit is not None and im.size[0] * im.size[1] > pil_limit):
        with quiet_pil_warnings():
            im.load()
    else:
        im.load()


def _exif_upright(im: Image.Image) -> Image.Image:
    """The image turned upright by its EXIF orientation; malformed EXIF keeps a readable picture unrotated."""
    try:
        return ImageOps.exif_transpose(im)
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001
        return im.copy()


def _identify(fp: IO[bytes], label: str, head: bytes, limit: int) -> ImageFile.ImageFile:
    """Let Pillow identify the file among the decodable formats (header only, nothing decoded yet)."""
    formats = decodable_formats()
    try:
        with quiet_pil_warnings():
            return Image.open(fp, formats=formats)
    except Image.DecompressionBombError as e:
        raise ResourceLimit(bomb_message(e, label, limit)) from None
    except MemoryError:
        raise memory_error(label) from None
    except UnidentifiedImageError:
        raise BadInput(f"{label}: {describe_unidentified(head)}") from None
    except Exception as e:  # noqa: BLE001 - a decoder that recognised the magic but could not parse the header
        raise BadInput(f"{label}: {describe_unidentified(head, why(e))}") from None
