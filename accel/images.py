"""Safe image opening and small image helpers (arrays, preprocessing crops, overlays, grids, sample photos).

Everything that turns user-supplied bytes into pixels goes through `open_image`, which refuses bad input with
`BadInput` and a message saying what was wrong, checks a pixel budget from the header before decoding anything,
and never changes PIL's global settings (so it is safe to call from several threads at once).
"""

from __future__ import annotations

import codecs
import importlib.util
import io
import math
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import BadInput, ResourceLimit
from .limits import CAPS

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENV_MAX_PIXELS",
    "SUPPORTED_FORMATS",
    "FOOLBOX_KINDS",
    "open_image",
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
# Python's warnings filters are process-global; this lock keeps our rare, temporary filter consistent.
_WARN_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------- open_image


def open_image(
    src: ImageSource,
    *,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """A path, bytes or binary file as a fully loaded, upright RGB image, or `BadInput` saying what is wrong.

    Images over `max_pixels` (default: env CONVLENS_MAX_PIXELS, else 50 M) are refused from the header alone."""
    limit = _pixel_limit(max_pixels)
    bg = _check_background(background)
    if isinstance(src, Image.Image):
        _check_size(src.size, limit, "image")
        return _to_rgb(src, bg).copy()
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise BadInput("image bytes: the input is empty (0 bytes)")
        return _decode(io.BytesIO(data), "image bytes", "", limit, bg)
    if isinstance(src, (str, os.PathLike)):
        path = _check_path(src)
        label = repr(str(src))
        try:
            fp = open(path, "rb")  # noqa: SIM115 - closed below, after decoding
        except OSError as e:
            raise BadInput(f"{label}: cannot be read ({e.strerror or e})") from e
        with fp:
            return _decode(fp, label, str(path), limit, bg)
    if hasattr(src, "read"):
        name = getattr(src, "name", None)
        label = repr(name) if isinstance(name, str) else "image stream"
        try:
            data = src.read()
        except (OSError, ValueError) as e:
            raise BadInput(f"{label}: cannot be read ({e})") from e
        if isinstance(data, str):
            raise BadInput(f"{label}: is a text stream; open the file in binary mode ('rb')")
        if not data:
            raise BadInput(f"{label}: the input is empty (0 bytes)")
        return _decode(io.BytesIO(bytes(data)), label, "", limit, bg)
    raise BadInput(
        f"cannot open an image from a {type(src).__name__}; pass a file path, bytes, or a binary file object"
    )


def _pixel_limit(max_pixels: int | None) -> int:
    """The pixel budget: the argument, else the CONVLENS_MAX_PIXELS environment variable, else the default."""
    if max_pixels is None:
        env = os.environ.get(ENV_MAX_PIXELS, "").strip()
        if not env:
            return DEFAULT_MAX_PIXELS
        try:
            max_pixels = int(env.replace("_", "").replace(",", ""))
        except ValueError:
            try:
                max_pixels = int(float(env))
            except ValueError:
                raise BadInput(f"{ENV_MAX_PIXELS}={env!r} is not a whole number of pixels") from None
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


def _check_path(src: str | os.PathLike[str]) -> Path:
    text = os.fspath(src)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if re.match(r"^(https?|ftp)://", text, re.IGNORECASE):
        raise BadInput(f"{text!r}: is a URL; download the image first and pass the file or its bytes")
    if text.lower().startswith("data:"):
        raise BadInput("the input is a data: URL (text); decode its base64 payload and pass the bytes")
    path = Path(text).expanduser()
    label = repr(text)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BadInput(f"{label}: file not found (no such file)") from None
    except (OSError, ValueError) as e:
        raise BadInput(f"{label}: cannot be accessed ({e})") from None
    if path.is_dir():
        raise BadInput(f"{label}: is a directory, not an image file")
    if st.st_size == 0:
        raise BadInput(f"{label}: the file is empty (0 bytes)")
    return path


def _decode(fp: IO[bytes], label: str, filename: str, limit: int, bg: tuple[int, int, int]) -> Image.Image:
    """Identify, size-check, decode and convert one image from a seekable binary stream."""
    im = _identify(fp, label, filename)
    fmt = im.format or "image"
    _check_size(im.size, limit, label)
    # PIL re-checks its own (global) bomb limit while decoding TIFF and GIF; only reachable past ~89 Mpx.
    pil_limit = Image.MAX_IMAGE_PIXELS
    loud = pil_limit is not None and im.size[0] * im.size[1] > pil_limit
    try:
        with _quiet_bomb_warning(loud):
            im.load()
    except Image.DecompressionBombError as e:
        raise ResourceLimit(
            f"{label}: PIL refuses to decode an image this large ({e}); raise PIL.Image.MAX_IMAGE_PIXELS "
            "as well as max_pixels / CONVLENS_MAX_PIXELS to open it"
        ) from None
    except (OSError, SyntaxError, EOFError, ValueError, IndexError, TypeError) as e:
        raise BadInput(
            f"{label}: the {fmt} data is truncated or corrupt ({e}); the file may be incomplete "
            "(an interrupted download or copy?)"
        ) from None
    try:
        upright = ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF must not make a readable picture unreadable; keep it unrotated
        upright = im.copy()
    _check_size(upright.size, limit, label)
    return _to_rgb(upright, bg)


def _identify(fp: IO[bytes], label: str, filename: str) -> ImageFile.ImageFile:
    """Pick the decoder from the magic bytes (like Image.open, restricted to SUPPORTED_FORMATS, no bomb check)."""
    head = fp.read(_SNIFF_BYTES)
    if not head:
        raise BadInput(f"{label}: the input is empty (0 bytes)")
    prefix = head[:16]
    if any(f not in Image.OPEN for f in SUPPORTED_FORMATS):
        Image.init()
    failures: list[tuple[str, BaseException]] = []
    for fmt in SUPPORTED_FORMATS:
        entry = Image.OPEN.get(fmt)
        if entry is None:
            continue
        factory, accept = entry
        ok = accept(prefix) if accept is not None else True
        if not ok or isinstance(ok, str):
            continue
        fp.seek(0)
        try:
            with _quiet_bomb_warning(fmt == "GIF"):  # a GIF frame may declare a size beyond its screen
                return factory(fp, filename)
        except Image.DecompressionBombError as e:
            what = "a frame far larger than its canvas" if fmt == "GIF" else "an image"
            raise ResourceLimit(
                f"{label}: the {fmt} declares {what} beyond PIL's hard limit ({e}); refused as a "
                "decompression bomb"
            ) from None
        except Exception as e:  # a decoder that recognised the magic but could not parse the header
            failures.append((fmt, e))
    if failures:
        fmt, err = failures[0]
        raise BadInput(f"{label}: looks like a {fmt} file but its header is truncated or corrupt ({err})")
    raise BadInput(f"{label}: {_describe_non_image(head)}")


@contextmanager
def _quiet_bomb_warning(active: bool) -> Iterator[None]:
    """Silence PIL's DecompressionBombWarning (we enforce our own limit); a no-op unless `active`."""
    if not active:
        yield
        return
    with _WARN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


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
)


def _describe_non_image(head: bytes) -> str:
    """A human-readable guess at what a non-image input is, for the error message."""
    for magic, what in _BINARY_SIGNATURES:
        if head.startswith(magic):
            return f"looks like {what}, not an image"
    if head[4:8] == b"ftyp":
        brand = head[8:12].decode("ascii", "replace").strip()
        if brand in ("heic", "heix", "heim", "heis", "hevc", "hevx", "mif1", "msf1", "avif", "avis"):
            return f"is a HEIF/AVIF image ({brand}), which this installation cannot decode; convert it to PNG or JPEG"
        return "looks like an MP4/MOV video, not an image"
    if head.startswith(b"RIFF") and head[8:12] in (b"WAVE", b"AVI "):
        return "looks like a RIFF audio/video file (WAV/AVI), not an image"
    text = _as_text(head)
    if text is not None:
        return f"looks like {_describe_text(text)}, not an image"
    return f"is not a recognised image format (first bytes {head[:8].hex(' ')}; supported: {', '.join(SUPPORTED_FORMATS)})"


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
            raise BadInput(f"unsupported image mode {mode!r} with transparency ({e})") from None
        out = Image.new("RGB", rgba.size, bg)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise BadInput(f"unsupported image mode {mode!r}; cannot convert it to RGB ({e})") from None


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map 16-bit, 32-bit integer or float pixel data to 0..255 (16-bit as value/257, others by their range)."""
    if mode.startswith("I;16") and a.dtype.kind == "u":
        return np.rint(a.astype(np.float32) / 257.0).astype(np.uint8)
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
        y = (x - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(x)
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


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
