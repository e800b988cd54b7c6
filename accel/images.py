"""Safe image opening and small image helpers (arrays, preprocessing crops, overlays, grids, sample photos).

Everything that turns user-supplied bytes into pixels goes through `open_image`, the one boundary for image bytes:
Pillow identifies the file (restricted to SUPPORTED_FORMATS) and decodes it inside a guard that turns *every*
exception of Pillow and the libraries underneath into `BadInput` (`ResourceLimit` for size and memory) with a message
saying what was wrong and what to do. A pixel budget is checked from the header before anything is decoded, TIFF
variants Pillow has no pixel mode for (float or signed RGB, planar 16-bit, ...) are decoded with tifffile, and PIL's
global settings are never changed (so it is safe to call from several threads at once).
"""

from __future__ import annotations

import codecs
import importlib.util
import io
import logging
import math
import os
import re
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError, features

from . import settings
from .errors import BadInput, ResourceLimit
from .limits import CAPS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENV_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "FOOLBOX_KINDS",
    "open_image",
    "image_extensions",
    "decodable_formats",
    "to_array",
    "from_array",
    "resize_center_crop",
    "overlay",
    "make_grid",
    "sample_images",
    "sample_image",
    "foolbox_imagenet",
    "foolbox_photos",
]

DEFAULT_MAX_PIXELS = CAPS["pixels"].default
ENV_MAX_PIXELS = CAPS["pixels"].env

# Raster formats we decode. Deliberately short: no EPS (runs Ghostscript), no ICO (embeds PNGs whose size the
# header does not declare), no TGA (no magic number, so it would "decode" arbitrary bytes).
SUPPORTED_FORMATS: tuple[str, ...] = (
    "PNG",
    "JPEG",
    "GIF",
    "WEBP",
    "BMP",
    "DIB",
    "TIFF",
    "PPM",
    "QOI",
    "AVIF",
)

FOOLBOX_KINDS: tuple[str, ...] = ("imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST")

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO | Image.Image

_SNIFF_BYTES = 4096
# Python's warnings filters are process-global; this lock keeps our temporary filter consistent across threads.
_WARN_LOCK = threading.Lock()
_MAX_NAME = 200  # characters of a caller-supplied name shown in messages


# --------------------------------------------------------------------------------------------- formats


_FORMATS: list[tuple[str, ...]] = []
_EXTENSIONS: list[frozenset[str]] = []


def decodable_formats() -> tuple[str, ...]:
    """The SUPPORTED_FORMATS this Pillow build registers and can decode (AVIF only where Pillow has libavif)."""
    if not _FORMATS:
        registered = set(Image.registered_extensions().values())
        _FORMATS.append(
            tuple(
                f
                for f in SUPPORTED_FORMATS
                if f in registered
                and (f != "AVIF" or features.check("avif"))
                and (f != "WEBP" or features.check("webp"))
            )
        )
    return _FORMATS[0]


def image_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) of every format `open_image` decodes, from Pillow's registry.

    Dataset folders and job inputs use this one list, so no decodable format is skipped by its file name."""
    if not _EXTENSIONS:
        formats = set(decodable_formats())
        exts = {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in formats}
        _EXTENSIONS.append(frozenset(exts))
    return _EXTENSIONS[0]


# --------------------------------------------------------------------------------------------- open_image


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
    limit = _pixel_limit(max_pixels)
    bg = _check_background(background)
    shown = _shown_name(label)
    if isinstance(src, Image.Image):
        what = shown or "image"
        _guarded(lambda: _check_size(src.size, limit, what), what, "image", limit)
        return _guarded(lambda: _to_rgb(src, bg).copy(), what, "image", limit)
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
            raise BadInput(f"{what}: cannot be read ({_why(e)})") from None
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
    text = os.fspath(src)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return repr(text if len(text) <= 2 * _MAX_NAME else "..." + text[-2 * _MAX_NAME :])


def _pixel_limit(max_pixels: int | None) -> int:
    """The pixel budget: the argument, else the CONVLENS_MAX_PIXELS setting (SettingError if malformed)."""
    if max_pixels is None:
        max_pixels = settings.get(ENV_MAX_PIXELS)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels <= 0:
        raise BadInput(f"max_pixels must be a positive whole number, got {max_pixels!r}")
    return int(max_pixels)


def _check_background(background: Sequence[int]) -> tuple[int, int, int]:
    try:
        bg = tuple(int(v) for v in background)
    except (TypeError, ValueError):
        bg = ()
    if len(bg) != 3 or not all(0 <= v <= 255 for v in bg):
        raise BadInput(f"background must be three integers in 0..255 (r, g, b), got {background!r}")
    return bg  # type: ignore[return-value]


def _check_path(src: str | os.PathLike[str], label: str) -> Path:
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
        raise BadInput(f"{label}: cannot be accessed ({getattr(e, 'strerror', None) or _why(e)})") from None
    if path.is_dir():
        raise BadInput(f"{label}: is a directory, not an image file")
    if st.st_size == 0:
        raise BadInput(f"{label}: the file is empty (0 bytes)")
    return path


# --------------------------------------------------------------------------------------------- the guard


def _why(e: BaseException) -> str:
    """A library's exception as a short clause for a message, with any quoted file bytes blanked out."""
    text = str(e).strip() or type(e).__name__
    text = re.sub(r"""b(['"]).*?(?<!\\)\1""", "b'...'", text)  # bytes literals may quote the file's contents
    text = re.sub(r"\b(?:0x)?[0-9a-fA-F]{2}(?: [0-9a-fA-F]{2}){3,}\b", "...", text)  # hex dumps
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 120 else text[:117] + "..."


def _memory_error(label: str) -> ResourceLimit:
    return ResourceLimit(
        f"{label}: ran out of memory while decoding the image; use a smaller image, or lower max_pixels / "
        f"{ENV_MAX_PIXELS} so that images this large are refused from their header"
    )


def _guarded(step: Callable[[], Any], label: str, fmt: str, limit: int) -> Any:
    """Run one decoding step; every exception from Pillow or below becomes a BadInput subclass."""
    try:
        return step()
    except BadInput:
        raise
    except Image.DecompressionBombError as e:
        raise ResourceLimit(_bomb_message(e, label, limit)) from None
    except MemoryError:
        raise _memory_error(label) from None
    except Exception as e:  # noqa: BLE001 - the boundary: nothing from the decoders may pass as anything else
        raise BadInput(
            f"{label}: the {fmt} data is truncated or corrupt ({_why(e)}); the file may be incomplete "
            "(an interrupted download or copy?)"
        ) from None


def _bomb_message(e: Image.DecompressionBombError, label: str, limit: int) -> str:
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
def _quiet_pil_warnings() -> Iterator[None]:
    """Silence PIL's DecompressionBombWarning (we enforce our own limit) and its "could not identify" notes."""
    with _WARN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


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
    tiff = head.startswith(_TIFF_MAGIC)
    if tiff:
        _silence_libtiff()
        # variants Pillow decodes wrongly or not at all (float, signed, 16/32-bit, planar) go to tifffile
        out = _decode_tiff(fp, label, limit, bg, fallback=False)
        if out is not None:
            return out
    try:
        return _decode_pillow(fp, label, limit, bg, head)
    except ResourceLimit:
        raise
    except BadInput as e:
        if not tiff:
            raise
        if _import_tifffile() is None:
            raise BadInput(
                f"{e}. If the TIFF is valid, it may hold samples Pillow has no mode for (float, signed, 32-bit "
                "or planar): install tifffile (pip install tifffile) to decode those, or re-save it as 8/16-bit PNG"
            ) from None
        better = _decode_tiff(fp, label, limit, bg, fallback=True)
        if better is None:  # tifffile cannot parse it either: Pillow's message stands
            raise
        return better


_LIBTIFF_QUIET: list[bool] = []


def _silence_libtiff() -> None:
    """Stop Pillow's libtiff printing its own error and warning lines to the process's stderr (a corrupt TIFF
    would add C-level lines before our one-line message). Done once; a no-op where the library is not found."""
    if _LIBTIFF_QUIET:
        return
    _LIBTIFF_QUIET.append(True)
    try:
        import ctypes

        from PIL import _imaging  # noqa: F401 - loads the libtiff Pillow links against

        maps = Path("/proc/self/maps")
        paths = {
            line.split()[-1] for line in maps.read_text().splitlines() if "libtiff" in line and "/" in line
        }
        for lib_path in paths:
            lib = ctypes.CDLL(lib_path)
            for fn in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
                setter = getattr(lib, fn)
                setter.restype = ctypes.c_void_p
                setter.argtypes = [ctypes.c_void_p]
                setter(None)
    except Exception:  # noqa: BLE001, S110 - cosmetic: without it libtiff only prints extra lines
        pass


def _decode_pillow(
    fp: IO[bytes], label: str, limit: int, bg: tuple[int, int, int], head: bytes
) -> Image.Image:
    im = _identify(fp, label, head, limit)  # not closed here: that would close the caller's file
    fmt = im.format or "image"
    _check_size(im.size, limit, label)
    _guarded(lambda: _load(im), label, fmt, limit)
    upright = _guarded(lambda: _exif_upright(im), label, fmt, limit)
    _check_size(upright.size, limit, label)
    return _guarded(lambda: _to_rgb(upright, bg), label, fmt, limit)


def _load(im: Image.Image) -> None:
    """Decode the pixels. TIFF loading re-reads its tags and warns about damaged ones (we raise or decode instead);
    past PIL's own warning limit TIFF/GIF decoding re-checks the size: both quietly (briefly holds the lock)."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    if im.format == "TIFF" or (pil_limit is not None and im.size[0] * im.size[1] > pil_limit):
        with _quiet_pil_warnings():
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
        with _quiet_pil_warnings():
            return Image.open(fp, formats=formats)
    except Image.DecompressionBombError as e:
        raise ResourceLimit(_bomb_message(e, label, limit)) from None
    except MemoryError:
        raise _memory_error(label) from None
    except UnidentifiedImageError:
        raise BadInput(f"{label}: {_describe_unidentified(head)}") from None
    except Exception as e:  # noqa: BLE001 - a decoder that recognised the magic but could not parse the header
        raise BadInput(f"{label}: {_describe_unidentified(head, _why(e))}") from None


def _check_size(size: tuple[int, int], limit: int, label: str) -> None:
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


# --------------------------------------------------------------------------------------------- describing


# Our own reading of the first bytes, only to word messages (Pillow alone decides what it decodes).
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"WEBP", 8, "WEBP"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),
    (b"MM\x00+", 0, "TIFF"),
    (b"qoif", 0, "QOI"),
)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_HEIF_BRANDS = ("heic", "heix", "heim", "heis", "hevc", "hevx")
_AVIF_BRANDS = ("avif", "avis", "mif1", "msf1")


def _magic_format(head: bytes) -> str | None:
    """The image format the first bytes announce (PNG, JPEG, ...), or None."""
    for magic, at, fmt in _MAGIC:
        if head[at : at + len(magic)] == magic and (fmt != "WEBP" or head.startswith(b"RIFF")):
            return fmt
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"1234567fF" and head[2:3].isspace():
        return "PPM/PGM/PBM"
    if head[4:8] == b"ftyp":
        size = int.from_bytes(head[:4], "big")
        brands = [head[i : i + 4].decode("ascii", "replace") for i in range(8, min(size, len(head), 64), 4)]
        compatible = brands[2:]  # after the major brand and the minor version
        if brands and (
            brands[0] in _HEIF_BRANDS
            or (
                brands[0] in ("mif1", "msf1")
                and "avif" not in compatible
                and any(b in _HEIF_BRANDS for b in compatible)
            )
        ):
            return "HEIF"
        if brands and brands[0] in _AVIF_BRANDS:
            return "AVIF"
    return None


def _describe_unidentified(head: bytes, detail: str = "Pillow cannot read it") -> str:
    """Why Pillow could not identify the input, in words (never the input's bytes); `detail`: the library's say."""
    n = len(head)
    if n <= 3:
        return (
            f"is only {n} byte{'s' if n != 1 else ''} long, too short to be an image of any format "
            "(an interrupted download or copy?)"
        )
    fmt = _magic_format(head)
    if fmt == "HEIF":
        return "is a HEIF/HEIC image, which this installation cannot decode; convert it to PNG or JPEG"
    if fmt == "AVIF" and "AVIF" not in decodable_formats():
        return "is an AVIF image, which this installation cannot decode (Pillow without AVIF); convert it to PNG or JPEG"
    if fmt is not None:
        return (
            f"looks like {'an' if fmt[0] in 'AEIOU' else 'a'} {fmt} file but its header is truncated or corrupt "
            f"({detail}); the file may be incomplete (an interrupted download or copy?)"
        )
    if detail != "Pillow cannot read it":  # a decoder took it for its format, then failed on the header
        return f"is not a readable image: its header is truncated or corrupt ({detail})"
    return _describe_non_image(head)


_BINARY_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a ZIP archive (or .docx/.xlsx/.npz/.pt, which are ZIPs)"),
    (b"PK\x05\x06", "an empty ZIP archive"),
    (b"%PDF", "a PDF document"),
    (b"%!PS", "a PostScript/EPS file (not accepted: it needs Ghostscript)"),
    (b"\x1f\x8b", "a gzip-compressed file"),
    (b"BZh", "a bzip2-compressed file"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\xfd7zXZ\x00", "an xz-compressed file"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x00\x00\x01\x00", "a Windows icon (.ico; not accepted)"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (b"ID3", "an MP3 audio file"),
    (b"OggS", "an Ogg audio/video file"),
    (b"fLaC", "a FLAC audio file"),
    (b"\x7fELF", "an executable program"),
    (b"MZ", "a Windows executable"),
    (b"8BPS", "a Photoshop document (not accepted; export it as PNG or JPEG)"),
    (b"\x80\x02", "a Python pickle"),
    (b"\x80\x04", "a Python pickle"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image (not accepted; convert it to PNG or JPEG)"),
)


def _describe_non_image(head: bytes) -> str:
    """A human-readable guess at what a non-image input is, for the error message (never its bytes)."""
    for magic, what in _BINARY_SIGNATURES:
        if head.startswith(magic):
            return f"looks like {what}, not an image"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        if brand in _HEIF_BRANDS or brand in _AVIF_BRANDS:
            return f"is a HEIF/AVIF image ({brand}), which this installation cannot decode; convert it to PNG or JPEG"
        return "looks like an MP4/MOV video, not an image"
    if head.startswith(b"RIFF") and head[8:12] in (b"WAVE", b"AVI "):
        return "looks like a RIFF audio/video file (WAV/AVI), not an image"
    text = _as_text(head)
    if text is not None:
        return f"looks like {_describe_text(text)}, not an image"
    return (
        "is not a recognised image format (binary data without the header of any image format); "
        f"supported: {', '.join(decodable_formats())}"
    )


def _as_text(head: bytes) -> str | None:
    """Decode the start of the input as text if it plausibly is text (UTF-8/UTF-16, few control characters)."""
    for bom, enc in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if head.startswith(bom):
            head, encoding = head[len(bom) :], enc
            break
    else:
        encoding = "utf-8"
    try:
        text = codecs.getincrementaldecoder(encoding)().decode(head, final=False)
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    controls = sum(1 for c in text if ord(c) < 32 and c not in "\t\n\r\f\v")
    if "\x00" in text or controls > len(text) * 0.02:
        return None
    return text


def _describe_text(text: str) -> str:
    low = text.lstrip().lower()
    if "<svg" in low[:2000]:
        return "an SVG drawing (vector graphics as XML/text; export it to PNG first)"
    if low.startswith(("<!doctype html", "<html")) or "<head" in low[:2000] or "<body" in low[:2000]:
        return "HTML/text (a web page, perhaps an error page saved instead of the picture)"
    if low.startswith("<?xml") or low.startswith("<"):
        return "XML/markup text"
    if low.startswith("data:image"):
        return "a data: URL (base64 text); decode the base64 payload and pass the bytes"
    if low.startswith(("{", "[")):
        return "JSON/text"
    return "plain text"


# --------------------------------------------------------------------------------------------- TIFF variants

_TIFF_PHOTOMETRIC = {0: "min-is-white gray", 1: "gray", 2: "RGB", 3: "palette"}
_TIFF_OTHER_PHOTOMETRIC = {
    4: "transparency mask",
    5: "CMYK (separated)",
    6: "YCbCr",
    8: "CIE L*a*b*",
    9: "ICC L*a*b*",
    10: "ITU L*a*b*",
    32803: "colour filter array (raw)",
    32844: "LogL",
    32845: "LogLuv",
    34892: "linear raw",
}
_TIFF_INFLATE = {8: "Deflate", 32946: "Deflate"}
_TIFF_COMPRESSION_NAMES = {
    1: "no",
    2: "CCITT RLE",
    3: "CCITT Group 3",
    4: "CCITT Group 4",
    5: "LZW",
    6: "old-style JPEG",
    7: "JPEG",
    8: "Deflate",
    32773: "PackBits",
    32946: "Deflate",
    34712: "JPEG 2000",
    34925: "LZMA",
    50000: "Zstandard",
    50001: "WebP",
}
_TIFF_CONVERT = "re-save it as an uncompressed or Deflate (ZIP) TIFF, or as a 8/16-bit PNG"


def _decode_tiff(
    fp: IO[bytes], label: str, limit: int, bg: tuple[int, int, int], *, fallback: bool
) -> Image.Image | None:
    """A TIFF decoded with tifffile, or None to leave it to Pillow (or to Pillow's message).

    First pass (`fallback=False`): only the variants Pillow gets wrong or cannot read (samples other than 8-bit
    unsigned, planar layouts) that tifffile decodes here; None for the rest. Fallback pass (Pillow failed): every
    variant tifffile can parse, refusing the unsupported ones by name; None when tifffile cannot parse the file."""
    tifffile = _import_tifffile()
    if tifffile is None:
        return None
    try:
        fp.seek(0)
        data = fp.read()
        fp.seek(0)
    except OSError:
        return None
    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
    except MemoryError:
        raise _memory_error(label) from None
    except Exception:  # noqa: BLE001 - not parseable by tifffile either
        return None
    with tif:
        try:
            page = tif.pages.first
            facts = _tiff_facts(page)
        except MemoryError:
            raise _memory_error(label) from None
        except Exception:  # noqa: BLE001
            return None
        variant = _tiff_variant(facts)
        why = _tiff_unsupported(facts)
        if not fallback and (why is not None or not _pillow_unreliable(facts)):
            return None
        _check_size((facts["width"], facts["height"]), limit, label)
        if why is not None:
            raise BadInput(
                f"{label}: this TIFF ({variant}) is a variant convlens cannot decode: {why}; {_TIFF_CONVERT}"
            )
        _check_tiff_bytes(facts, variant, label, limit)
        _check_inflate(data, page, facts, label)
        try:
            arr = page.asarray(maxworkers=1)
            pixels = _tiff_pixels(np.asarray(arr), page, facts, bg)
            return _tiff_orient(Image.fromarray(pixels), facts["orientation"])
        except BadInput:
            raise
        except MemoryError:
            raise _memory_error(label) from None
        except Exception as e:  # noqa: BLE001
            raise BadInput(
                f"{label}: the TIFF ({variant}) data is truncated or corrupt ({_why(e)}); the file may be "
                "incomplete (an interrupted download or copy?)"
            ) from None


def _import_tifffile() -> Any:
    """The tifffile module (installed with scikit-image), or None where it is not installed."""
    try:
        import tifffile
    except ImportError:
        return None
    return tifffile


def _pillow_unreliable(f: dict[str, Any]) -> bool:
    """Variants Pillow has no mode for or decodes wrongly (measured: float/signed RGB, unsigned 32-bit, planar
    16-bit RGB, planar gray+alpha), all of which tifffile decodes exactly."""
    dt = f["dtype"]
    return dt is None or dt.kind not in "ub" or dt.itemsize != 1 or (f["planar"] == 2 and f["samples"] > 1)


def _tiff_facts(page: Any) -> dict[str, Any]:
    """The header fields of one TIFF page that decide whether and how we decode it."""
    dtype = np.dtype(page.dtype) if page.dtype is not None else None
    chunk = math.prod(int(c) for c in page.chunks) if page.chunks else 0
    return {
        "width": int(page.imagewidth),
        "height": int(page.imagelength),
        "depth": int(page.imagedepth),
        "samples": int(page.samplesperpixel),
        "bits": int(page.bitspersample),
        "dtype": dtype,
        "photometric": int(page.photometric),
        "compression": int(page.compression),
        "predictor": int(page.predictor),
        "planar": int(page.planarconfig),
        "extrasamples": tuple(int(x) for x in page.extrasamples),
        "orientation": int(page.tags.valueof(274, 1) or 1),
        "chunk_bytes": chunk * (dtype.itemsize if dtype is not None else 1),
        "segments": len(page.dataoffsets),
        "nbytes": int(page.nbytes),
    }


def _tiff_variant(f: dict[str, Any]) -> str:
    """The variant in words, e.g. "32-bit float RGB, Deflate compression, planar"."""
    dt = f["dtype"]
    kind = {"f": "float", "i": "signed", "u": "unsigned", "b": "bilevel", "c": "complex"}.get(
        dt.kind if dt is not None else "", "unknown sample type"
    )
    colour = _TIFF_PHOTOMETRIC.get(f["photometric"]) or _TIFF_OTHER_PHOTOMETRIC.get(
        f["photometric"], f"photometric {f['photometric']}"
    )
    extra = f", {f['samples']} samples" if f["samples"] not in (1, 3) else ""
    comp = _TIFF_COMPRESSION_NAMES.get(f["compression"], f"compression {f['compression']}")
    planar = ", planar" if f["planar"] == 2 and f["samples"] > 1 else ""
    return f"{f['bits']}-bit {kind} {colour}{extra}, {comp} compression{planar}"


def _tiff_unsupported(f: dict[str, Any]) -> str | None:
    """Why the tifffile path does not decode this variant (None: it does)."""
    if f["depth"] > 1:
        return f"it is a 3-D volume ({f['depth']} slices)"
    if f["photometric"] not in _TIFF_PHOTOMETRIC:
        return f"{_TIFF_OTHER_PHOTOMETRIC.get(f['photometric'], 'this colour space')} is not supported"
    if f["dtype"] is None or f["dtype"].kind not in "uifb":
        return "its sample type is not supported"
    if f["compression"] != 1 and f["compression"] not in _TIFF_INFLATE:
        return f"{_TIFF_COMPRESSION_NAMES.get(f['compression'], 'this')} compression is not supported for it"
    if f["predictor"] not in (1, 2) or (f["predictor"] == 2 and f["dtype"].kind == "f"):
        return "its predictor is not supported"
    need = 3 if f["photometric"] == 2 else 1
    if f["samples"] < need:
        return f"{f['samples']} sample(s) per pixel for {_TIFF_PHOTOMETRIC[f['photometric']]}"
    return None


def _check_tiff_bytes(f: dict[str, Any], variant: str, label: str, limit: int) -> None:
    """ResourceLimit, from the header, for sample data or strips/tiles out of proportion to the pixel budget."""
    budget = limit * 32  # bytes: up to 4 samples of 8 bytes per pixel
    if f["nbytes"] > budget or f["chunk_bytes"] > max(4 * f["nbytes"], 1 << 24):
        raise ResourceLimit(
            f"{label}: this TIFF ({variant}) declares {f['nbytes']:,} bytes of samples (or strips/tiles far "
            f"larger than the image), over what {limit:,} pixels may hold; refused from the header. Raise "
            f"max_pixels / {ENV_MAX_PIXELS} if the image is genuine"
        )


def _check_inflate(data: bytes, page: Any, f: dict[str, Any], label: str) -> None:
    """Refuse Deflate strips/tiles that expand beyond their declared size (a decompression bomb), before tifffile
    inflates them without a bound."""
    if f["compression"] not in _TIFF_INFLATE:
        return
    cap = f["chunk_bytes"] + 1024
    for offset, count in zip(page.dataoffsets, page.databytecounts):
        if not count:
            continue
        seg = data[int(offset) : int(offset) + int(count)]
        d = zlib.decompressobj()
        try:
            out = d.decompress(seg, cap + 1)
        except zlib.error:
            return  # corrupt: tifffile's decode reports it
        if len(out) > cap:
            raise ResourceLimit(
                f"{label}: a Deflate strip of this TIFF expands beyond its declared size (more than {cap:,} bytes); "
                "refused as a decompression bomb"
            )


def _tiff_pixels(arr: np.ndarray, page: Any, f: dict[str, Any], bg: tuple[int, int, int]) -> np.ndarray:
    """tifffile's samples as HxWx3 uint8: scaled by bit depth or value range, palette applied, alpha composited."""
    shaped = tuple(int(s) for s in page.shaped)  # (separate samples, depth, length, width, contig samples)
    a = arr.reshape(shaped)[:, 0]
    h, w = a.shape[1], a.shape[2]
    a = a.transpose(1, 2, 0, 3).reshape(h, w, -1)
    photometric = f["photometric"]
    ncolour = 3 if photometric == 2 else 1
    colour = a[..., :ncolour]
    alpha = None
    if f["extrasamples"] and f["extrasamples"][0] in (1, 2) and a.shape[2] > ncolour:
        alpha = _alpha_unit(a[..., ncolour], f["bits"])
    if photometric == 3:
        cmap = getattr(page, "colormap", None)
        if cmap is None:
            raise BadInput("a palette TIFF without its colour map")
        cmap = np.asarray(cmap)
        idx = np.clip(colour[..., 0].astype(np.int64), 0, cmap.shape[-1] - 1)
        rgb = np.rint(cmap[:, idx].transpose(1, 2, 0).astype(np.float32) / 257.0).astype(np.uint8)
    else:
        rgb = _samples_to_uint8(colour, f["bits"])
        if photometric == 0:
            rgb = 255 - rgb
        if ncolour == 1:
            rgb = np.repeat(rgb.reshape(h, w, 1), 3, axis=2)
    if alpha is None:
        return np.ascontiguousarray(rgb)
    a3 = alpha[..., None]
    base = np.asarray(bg, dtype=np.float32) * (1.0 - a3)
    if f["extrasamples"][0] == 1:  # associated (premultiplied) alpha
        out = rgb.astype(np.float32) + base
    else:
        out = rgb.astype(np.float32) * a3 + base
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _alpha_unit(x: np.ndarray, bits: int) -> np.ndarray:
    """Alpha samples as float32 0..1: integers by their full positive range, floats clipped to 0..1."""
    kind = x.dtype.kind
    top = {"b": 1.0, "u": float(2**bits - 1), "i": float(2 ** (bits - 1) - 1)}.get(kind, 1.0)
    return np.clip(x.astype(np.float32) / np.float32(max(top, 1.0)), 0.0, 1.0)


def _samples_to_uint8(x: np.ndarray, bits: int) -> np.ndarray:
    """Samples of any type as 0..255: unsigned by their bit depth, signed and float by their value range."""
    kind = x.dtype.kind
    if kind == "b":
        return x.astype(np.uint8) * np.uint8(255)
    if kind == "u":
        top = float(2 ** max(1, min(bits, x.dtype.itemsize * 8)) - 1)
        if top == 255.0:
            return x.astype(np.uint8)
        return np.clip(np.rint(x.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    return _scale_to_uint8(x, "F" if kind == "f" else "I")


_ORIENT = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def _tiff_orient(im: Image.Image, orientation: int) -> Image.Image:
    for op in _ORIENT.get(orientation, ()):
        im = im.transpose(op)
    return im


# --------------------------------------------------------------------------------------------- modes


def _to_rgb(im: Image.Image, bg: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: transparency composited on `bg`, high-bit-depth data scaled, not clipped."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _gray_to_rgb(_scale_to_uint8(np.asarray(im), mode))
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if mode == "P" and im.palette is not None and im.palette.mode == "RGBA":
        has_alpha = True
    if has_alpha:
        try:
            rgba = im.convert("RGBA")
        except ValueError as e:
            raise BadInput(f"unsupported image mode {mode!r} with transparency ({_why(e)})") from None
        out = Image.new("RGB", rgba.size, bg)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise BadInput(f"unsupported image mode {mode!r}; cannot convert it to RGB ({_why(e)})") from None


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer or float pixel data to 0..255 (16-bit as value/257, others by their range)."""
    if mode.startswith("I;16") and a.dtype.kind == "u":
        return np.rint(a.astype(np.float32) / 257.0).astype(np.uint8)
    with np.errstate(all="ignore"):  # NaN/inf samples and ranges near the float limits are handled below
        x = a.astype(np.float64)
        finite = np.isfinite(x)
        if not finite.all():
            x = np.where(finite, x, 0.0)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            y = x * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            y = x
        elif lo >= 0.0 and hi <= 65535.0:
            y = x / 257.0
        else:
            y = (x / 2 - lo / 2) * (255.0 / (hi / 2 - lo / 2)) if hi > lo else np.zeros_like(x)
        y = np.nan_to_num(np.rint(y), nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(y, 0, 255).astype(np.uint8)


def _gray_to_rgb(g: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2)))


# --------------------------------------------------------------------------------------------- arrays


def to_array(img: Image.Image | np.ndarray) -> np.ndarray:
    """The image as an HxWx3 uint8 array (any PIL mode converted to RGB; transparency on white)."""
    if isinstance(img, np.ndarray):
        img = from_array(img)
    if not isinstance(img, Image.Image):
        raise BadInput(f"to_array expects a PIL image, got {type(img).__name__}")
    return np.array(_to_rgb(img, (255, 255, 255)), dtype=np.uint8)


def from_array(a: Any) -> Image.Image:
    """An RGB PIL image from an HxW or HxWx3 array, uint8 (0..255) or float (0..1); NaN/inf are refused."""
    return Image.fromarray(_as_uint8_rgb(a, "from_array"))


def _as_uint8_rgb(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        raise BadInput(
            f"{what}: array of shape {arr.shape} looks channel-first; pass HxWx3 (e.g. a.transpose(1, 2, 0))"
        )
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise BadInput(f"{what}: expected an HxW or HxWx3 array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise BadInput(f"{what}: the array has a zero dimension (shape {arr.shape})")
    arr = _values_to_uint8(arr, what)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr)


def _values_to_uint8(arr: np.ndarray, what: str) -> np.ndarray:
    kind = arr.dtype.kind
    if arr.dtype == np.uint8:
        return arr
    if kind == "b":
        return arr.astype(np.uint8) * 255
    if kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise BadInput(f"{what}: integer pixel values must lie in 0..255, got {arr.min()}..{arr.max()}")
        return arr.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(arr).all():
            raise BadInput(f"{what}: the array contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise BadInput(
                f"{what}: float pixel values must lie in 0..1, got {lo:.4g}..{hi:.4g}; clip or rescale first "
                "(divide by 255 if they are 0..255)"
            )
        return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise BadInput(f"{what}: unsupported array dtype {arr.dtype}; use uint8 or float in 0..1")


# --------------------------------------------------------------------------------------------- preprocessing


_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resize_center_crop(
    img: Image.Image, size: int, resize: int | None = None, *, resample: str = "bilinear"
) -> Image.Image:
    """Shorter side to `resize` (default round(size*256/224)), then the centre `size`x`size` crop, as in ImageNet
    evaluation preprocessing (same rounding as torchvision's Resize + CenterCrop)."""
    if not isinstance(size, (int, np.integer)) or size <= 0:
        raise BadInput(f"size must be a positive integer, got {size!r}")
    if resize is None:
        resize = round(size * 256 / 224)
    if not isinstance(resize, (int, np.integer)) or resize < size:
        raise BadInput(f"resize must be an integer >= size ({size}), got {resize!r}")
    if resample not in _RESAMPLE:
        raise BadInput(f"resample must be one of {sorted(_RESAMPLE)}, got {resample!r}")
    if img.mode not in ("RGB", "L"):
        img = _to_rgb(img, (255, 255, 255))
    w, h = img.size
    if w <= h:
        new_w, new_h = int(resize), int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), int(resize)
    left = int(round((new_w - size) / 2.0))
    top = int(round((new_h - size) / 2.0))
    if max(new_w, new_h) <= 8 * resize:  # the usual case: resize, then crop
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), _RESAMPLE[resample])
        return img.crop((left, top, left + size, top + size))
    # Extreme aspect ratio (1x60000 would make a 256x15 M intermediate): resample only the crop box. Same filter
    # and scale (PIL reads the source around the box), so it matches resize-then-crop to +-1 level.
    sx, sy = new_w / w, new_h / h
    box = (left / sx, top / sy, (left + size) / sx, (top + size) / sy)
    return img.resize((size, size), _RESAMPLE[resample], box=box)


# --------------------------------------------------------------------------------------------- display


def overlay(
    img: Image.Image,
    heat: np.ndarray,
    alpha: float = 0.5,
    cmap: str | Callable[[np.ndarray], np.ndarray] = "jet",
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """Blend a colourised HxW heat map (resized to the image) over the image, for attribution displays."""
    h = np.asarray(heat, dtype=np.float64)
    while h.ndim > 2 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2 or h.size == 0:
        raise BadInput(f"overlay: heat must be a non-empty HxW array, got shape {np.shape(heat)}")
    if not np.isfinite(h).all():
        raise BadInput("overlay: the heat map contains NaN or infinite values")
    if not 0.0 <= alpha <= 1.0:
        raise BadInput(f"overlay: alpha must lie in 0..1, got {alpha}")
    lo = float(h.min()) if vmin is None else float(vmin)
    hi = float(h.max()) if vmax is None else float(vmax)
    norm = np.clip((h - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(h)
    base = to_array(img).astype(np.float32) / 255.0
    height, width = base.shape[:2]
    if norm.shape != (height, width):
        small = Image.fromarray(norm.astype(np.float32))
        norm = np.clip(np.asarray(small.resize((width, height), Image.Resampling.BILINEAR)), 0.0, 1.0)
    if isinstance(cmap, str):
        from matplotlib import colormaps

        try:
            cmap = colormaps[cmap]
        except KeyError:
            raise BadInput(f"overlay: unknown colormap {cmap!r} (see matplotlib.colormaps)") from None
    colour = np.asarray(cmap(norm), dtype=np.float32)[..., :3]
    return from_array(np.clip((1.0 - alpha) * base + alpha * colour, 0.0, 1.0))


def make_grid(
    tiles: Sequence[np.ndarray] | np.ndarray,
    ncols: int | None = None,
    pad: int = 1,
    pad_value: int | tuple[int, int, int] = 255,
) -> np.ndarray:
    """Row-major mosaic of equally sized tiles (HxW or HxWx3, uint8 or float 0..1), `pad` pixels around each.

    Returns uint8 HxW when every tile is grayscale and `pad_value` is one number, else HxWx3."""
    items = list(tiles)
    if not items:
        raise BadInput("make_grid: no tiles given")
    arrays = [_values_to_uint8(np.asarray(t), "make_grid") for t in items]
    arrays = [a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a for a in arrays]
    shape = arrays[0].shape[:2]
    for i, a in enumerate(arrays):
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            raise BadInput(f"make_grid: tile {i} has shape {a.shape}; expected HxW or HxWx3")
        if a.shape[:2] != shape:
            raise BadInput(
                f"make_grid: tile {i} is {a.shape[:2]}, tile 0 is {shape}; tiles must be equally sized"
            )
    if pad < 0:
        raise BadInput(f"make_grid: pad must be >= 0, got {pad}")
    n = len(arrays)
    if ncols is None:
        ncols = math.ceil(math.sqrt(n))
    if ncols <= 0:
        raise BadInput(f"make_grid: ncols must be positive, got {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    colour = not isinstance(pad_value, (int, np.integer)) or any(a.ndim == 3 for a in arrays)
    th, tw = shape
    out_shape = (nrows * (th + pad) + pad, ncols * (tw + pad) + pad)
    if colour:
        fill = np.broadcast_to(np.asarray(pad_value, dtype=np.int64), (3,))
        if (fill < 0).any() or (fill > 255).any():
            raise BadInput(f"make_grid: pad_value must lie in 0..255, got {pad_value!r}")
        grid = np.empty((*out_shape, 3), dtype=np.uint8)
        grid[...] = fill.astype(np.uint8)
    else:
        if not 0 <= int(pad_value) <= 255:  # type: ignore[arg-type]
            raise BadInput(f"make_grid: pad_value must lie in 0..255, got {pad_value!r}")
        grid = np.full(out_shape, int(pad_value), dtype=np.uint8)  # type: ignore[arg-type]
    for i, a in enumerate(arrays):
        r, c = divmod(i, ncols)
        y, x = pad + r * (th + pad), pad + c * (tw + pad)
        grid[y : y + th, x : x + tw] = a[..., None] if colour and a.ndim == 2 else a
    return grid


# --------------------------------------------------------------------------------------------- sample photos


_SKIMAGE_SAMPLES = (
    "chelsea.png",
    "coffee.png",
    "astronaut.png",
    "rocket.jpg",
    "horse.png",
    "coins.png",
    "camera.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
)
_SKLEARN_SAMPLES = ("china.jpg", "flower.jpg")
_MATPLOTLIB_SAMPLES = ("grace_hopper.jpg",)


def _package_dirs(pkg: str) -> list[Path]:
    """Directories of an installed package, found without importing it (empty if it is not installed)."""
    try:
        spec = importlib.util.find_spec(pkg)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [Path(p) for p in spec.submodule_search_locations]
    return [Path(spec.origin).parent] if spec.origin else []


def _find_files(pkg: str, subdir: str, names: Sequence[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for base in _package_dirs(pkg):
        for name in names:
            path = base / subdir / name
            key = Path(name).stem
            if key not in found and path.is_file():
                found[key] = path
    return found


def sample_images() -> dict[str, Path]:
    """Sample photos shipped inside installed packages (scikit-image, scikit-learn, matplotlib), name -> path.

    Only files already on disk are listed; nothing is downloaded and the packages are not imported."""
    found: dict[str, Path] = {}
    for pkg, subdir, names in (
        ("skimage", "data", _SKIMAGE_SAMPLES),
        ("sklearn", "datasets/images", _SKLEARN_SAMPLES),
        ("matplotlib", "mpl-data/sample_data", _MATPLOTLIB_SAMPLES),
    ):
        for key, path in _find_files(pkg, subdir, names).items():
            found.setdefault(key, path)
    return {key: found[key] for key in sorted(found)}


def sample_image(name: str) -> Image.Image:
    """Open a packaged sample photo by name (e.g. "chelsea", "china", "grace_hopper") as an RGB image."""
    available = sample_images()
    key = Path(str(name)).stem.lower()
    if key not in available:
        known = ", ".join(available) or "none (install scikit-image, scikit-learn or matplotlib)"
        raise BadInput(f"unknown sample image {name!r}; available: {known}")
    return open_image(available[key])


def foolbox_photos(kind: str = "imagenet") -> list[tuple[Path, int]]:
    """Labelled sample photos from the foolbox package's data folder, as (path, label) sorted by index.

    `kind` is one of imagenet, cifar10, cifar100, mnist, fashionMNIST; [] if foolbox is not installed."""
    canonical = {k.lower(): k for k in FOOLBOX_KINDS}.get(str(kind).lower())
    if canonical is None:
        raise BadInput(f"unknown foolbox sample kind {kind!r}; choose one of {', '.join(FOOLBOX_KINDS)}")
    pattern = re.compile(rf"^{re.escape(canonical)}_(\d+)_(\d+)\.(?:png|jpe?g)$")
    found: dict[int, tuple[Path, int]] = {}
    for base in _package_dirs("foolbox"):
        folder = base / "data"
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            m = pattern.match(path.name)
            if m and path.is_file():
                found.setdefault(int(m.group(1)), (path, int(m.group(2))))
    return [found[i] for i in sorted(found)]


def foolbox_imagenet() -> list[tuple[Path, int]]:
    """The 20 labelled ImageNet photos shipped with foolbox, as (path, ImageNet class index); [] if absent."""
    return foolbox_photos("imagenet")
