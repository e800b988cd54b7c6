"""TIFF variants Pillow has no pixel mode for (float, signed, 16/32-bit, planar), decoded with tifffile.

Sizes and Deflate expansion are checked from the header before tifffile decodes anything; variants neither
library can decode are refused by name (volume, CMYK, JPEG 2000 compression, ...).
"""

from __future__ import annotations

import io
import math
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image

from ..errors import BadInput, ResourceLimit
from .guard import ENV_MAX_PIXELS, check_size, memory_error, why
from .modes import scale_to_uint8

__all__ = ["TIFF_MAGIC", "decode_tiff", "import_tifffile", "silence_libtiff"]

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


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


def decode_tiff(
    fp: IO[bytes], label: str, limit: int, bg: tuple[int, int, int], *, fallback: bool
) -> Image.Image | None:
    """A TIFF decoded with tifffile, or None to leave it to Pillow (or to Pillow's message).

    First pass (`fallback=False`): only the variants Pillow gets wrong or cannot read (samples other than 8-bit
    unsigned, planar layouts) that tifffile decodes here; None for the rest. Fallback pass (Pillow failed): every
    variant tifffile can parse, refusing the unsupported ones by name; None when tifffile cannot parse the file."""
    tifffile = import_tifffile()
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
        raise memory_error(label) from None
    except Exception:  # noqa: BLE001 - not parseable by tifffile either
        return None
    with tif:
        try:
            page = tif.pages.first
            facts = _tiff_facts(page)
        except MemoryError:
            raise memory_error(label) from None
        except Exception:  # noqa: BLE001
            return None
        variant = _tiff_variant(facts)
        unsupported = _tiff_unsupported(facts)
        if not fallback and (unsupported is not None or not _pillow_unreliable(facts)):
            return None
        check_size((facts["width"], facts["height"]), limit, label)
        if unsupported is not None:
            raise BadInput(
                f"{label}: this TIFF ({variant}) is a variant convlens cannot decode: {unsupported}; {_TIFF_CONVERT}"
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
            raise memory_error(label) from None
        except Exception as e:  # noqa: BLE001
            raise BadInput(
                f"{label}: the TIFF ({variant}) data is truncated or corrupt ({why(e)}); the file may be "
                "incomplete (an interrupted download or copy?)"
            ) from None


def import_tifffile() -> Any:
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
    return scale_to_uint8(x, "F" if kind == "f" else "I")


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
    """The image turned upright by the TIFF orientation tag (1..8, as EXIF)."""
    for op in _ORIENT.get(orientation, ()):
        im = im.transpose(op)
    return im


_LIBTIFF_QUIET: list[bool] = []


def silence_libtiff() -> None:
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
