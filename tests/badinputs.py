"""A named corpus of bad (and awkward-but-valid) inputs, generated into a folder at test time, and a runner.

Each entry says what it is (`kind`: image, checkpoint, onnx, upload), how to make it, and what must happen:
`accel.BadInput` (or a subclass) whose message matches a keyword, or acceptance with a correct result ("ok").
`run_corpus` feeds every entry through the API (and optionally the CLI) and counts crashes: any exception that
is not BadInput, a bad input that is silently accepted, or a good input that is refused or decoded wrongly.
Used by tests/test_hardening.py and scripts/bad_inputs.py; nothing here is a binary file in the repository.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so `python scripts/bad_inputs.py` finds accel from a checkout
    sys.path.insert(0, str(ROOT))

import accel  # noqa: E402
from accel.errors import BadInput, ResourceLimit, UntrustedFile  # noqa: E402

ARCH = "fashion_cnn"  # the small packaged backbone every checkpoint entry is built for
OK = None  # `expect` of entries that must be accepted


# --------------------------------------------------------------------------------------------- raw builders


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_declaring(width: int, height: int, idat: bytes | None = None, bit_depth: int = 8) -> bytes:
    """A syntactically valid gray PNG whose IHDR declares width x height (tiny IDAT unless one is given)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 64) if idat is None else idat
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def png_deflate_bomb(side: int = 12_000) -> bytes:
    """A real 1-bit side x side PNG of zeros: a few KB on disk, side**2 pixels once decoded."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return png_declaring(side, side, data, bit_depth=1)


def gif_declaring(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A GIF with the given logical screen size and one image descriptor of the given frame size."""
    header = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, *frame, 0)
    lzw = b"\x02" + b"\x02\x4c\x01" + b"\x00"  # min code size 2, one tiny sub-block, terminator
    return header + descriptor + lzw + b";"


def tiff_declaring(width: int, height: int, strip_bytes: int = 4) -> bytes:
    """A little-endian baseline gray TIFF whose IFD declares width x height, with a 4-byte strip."""
    entries = [
        (256, 4, 1, width),  # ImageWidth, LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample, SHORT
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 0),  # StripOffsets, patched below
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, strip_bytes),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    strip_offset = 8 + ifd_size
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 273:
            value = strip_offset
        packed = struct.pack("<H", value) + b"\x00\x00" if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    out += struct.pack("<I", 0) + b"\x00\x00\x00\x00"
    return bytes(out)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A baseline JPEG header (SOF0 + SOS) declaring width x height, with no real scan data."""
    sof = (
        b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    )
    sos = b"\xff\xda" + struct.pack(">H", 12) + b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 32 + b"\xff\xd9"


def bmp_declaring(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring width x height, followed by a few bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\x00" * 16


def webp_declaring(width: int, height: int) -> bytes:
    """A lossless WebP (VP8L) header declaring width x height (at most 16384 a side), with junk pixel data."""
    bits = (width - 1) | ((height - 1) << 14)
    body = b"\x2f" + struct.pack("<I", bits) + b"\x00" * 32
    chunk = b"VP8L" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    """`im` saved in `fmt` as bytes."""
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def noisy_rgb(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    """A reproducible RGB photo-like image (ramp plus noise) that compresses poorly, for truncation tests."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    a = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _two_colour(w: int, h: int) -> Image.Image:
    """Left half red, right half blue: orientation and first-frame checks look at which side is red."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 2] = 255
    a[:, : max(1, w // 2)] = (255, 0, 0)
    return Image.fromarray(a)


def _exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(_two_colour(64, 32), "JPEG", quality=95, exif=exif.tobytes())


class _Payload:
    """Pickles to a call that creates `marker`: if the marker ever exists, untrusted code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


class _ShellPayload(_Payload):
    """The classic: a shell command through os.system."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {str(self.marker)!r}",))


def marker_for(path: Path) -> Path:
    """Where a malicious entry's payload would write its marker file."""
    return path.with_name(path.name + ".PWNED")


# --------------------------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    """One corpus entry: how to make it, how to feed it, and what must happen."""

    id: str
    kind: str  # "image" | "checkpoint" | "onnx" | "upload"
    expect: type[BadInput] | None  # None: must be accepted (OK)
    keyword: str  # regex (case-insensitive) the error message must contain; for OK entries, a note
    make: Callable[[Path], bytes]
    suffix: str
    arch: str | None = None
    # raises AssertionError if the result is wrong (OK entries) or a side effect happened (called with None)
    verify: Callable[[Any, Path], None] | None = None
    action: Callable[[Path], Any] | None = None  # overrides the kind's default way of feeding the file
    cli: bool = False  # part of the representative CLI subset

    @property
    def outcome(self) -> str:
        """What must happen, as text: "ok" or the expected exception class name."""
        return "ok" if self.expect is None else self.expect.__name__

    def path(self, folder: Path) -> Path:
        return folder / self.kind / f"{self.id}{self.suffix}"


CASES: list[Case] = []


def _add(
    id: str,
    kind: str,
    expect: type[BadInput] | None,
    keyword: str,
    suffix: str,
    make: Callable[[Path], bytes],
    **kw: Any,
) -> None:
    if any(c.id == id for c in CASES):
        raise ValueError(f"duplicate corpus id {id!r}")
    CASES.append(Case(id, kind, expect, keyword, make, suffix, **kw))


# -- images: what must be refused ---------------------------------------------------------------------------


def _const(data: bytes) -> Callable[[Path], bytes]:
    return lambda _p: data


def _truncated(fmt: str, frac: float = 0.5, **kw: Any) -> Callable[[Path], bytes]:
    def make(_p: Path) -> bytes:
        data = encode(noisy_rgb(), fmt, **kw)
        return data[: int(len(data) * frac)]

    return make


def _zip_bytes(_p: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("photo.png", encode(noisy_rgb(8, 8), "PNG"))
    return buf.getvalue()


def _bad_crc_png(_p: Path) -> bytes:
    data = bytearray(encode(noisy_rgb(16, 16), "PNG"))
    i = data.index(b"IDAT") + 8  # inside the compressed pixels; the chunk CRC no longer matches
    data[i] ^= 0xFF
    return bytes(data)


def _pickle_as_png(p: Path) -> bytes:
    return pickle.dumps(_Payload(marker_for(p)), protocol=4)


def _no_marker(_res: Any, p: Path) -> None:
    assert not marker_for(p).exists(), "the pickle's payload ran"


_IMAGE_BAD: list[tuple[str, type[BadInput], str, str, Callable[[Path], bytes]]] = [
    ("zero-byte-png", BadInput, r"empty \(0 bytes\)", ".png", _const(b"")),
    ("zero-byte-jpg", BadInput, r"empty \(0 bytes\)", ".jpg", _const(b"")),
    ("png-signature-only", BadInput, "truncated|corrupt", ".png", _const(b"\x89PNG\r\n\x1a\n")),
    ("truncated-png", BadInput, "truncated|corrupt", ".png", _truncated("PNG")),
    ("truncated-jpeg", BadInput, "truncated|corrupt", ".jpg", _truncated("JPEG", quality=90)),
    (
        "truncated-progressive-jpeg",
        BadInput,
        "truncated|corrupt",
        ".jpg",
        _truncated("JPEG", progressive=True),
    ),
    ("truncated-gif", BadInput, "truncated|corrupt", ".gif", _truncated("GIF", 0.3)),
    ("truncated-webp", BadInput, "truncated|corrupt", ".webp", _truncated("WEBP", 0.5, lossless=True)),
    ("truncated-bmp", BadInput, "truncated|corrupt", ".bmp", _truncated("BMP")),
    ("truncated-tiff", BadInput, "truncated|corrupt", ".tif", _truncated("TIFF", 0.5)),
    ("png-bad-crc", BadInput, "truncated|corrupt|crc", ".png", _bad_crc_png),
    ("text-as-png", BadInput, "plain text", ".png", _const(b"hello, this is a shopping list\n" * 20)),
    (
        "html-as-jpg",
        BadInput,
        "HTML",
        ".jpg",
        _const(b"<!DOCTYPE html><html><head><title>404</title></head><body>Not found</body></html>"),
    ),
    (
        "svg-as-png",
        BadInput,
        "SVG",
        ".png",
        _const(b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9"><rect/></svg>'),
    ),
    ("zip-as-jpg", BadInput, "ZIP", ".jpg", _zip_bytes),
    ("pdf-as-png", BadInput, "PDF", ".png", _const(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")),
    (
        "eps-as-jpg",
        BadInput,
        "PostScript",
        ".jpg",
        _const(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n"),
    ),
    ("json-as-png", BadInput, "JSON", ".png", _const(b'{"error": "quota exceeded", "code": 429}')),
    ("pickle-as-png", BadInput, "pickle", ".png", _pickle_as_png),
    ("heic-as-jpg", BadInput, "HEIF", ".jpg", _const(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")),
    (
        "random-bytes-as-png",
        BadInput,
        "not a recognised image",
        ".png",
        _const(bytes(np.random.default_rng(7).integers(0, 256, 600, dtype=np.uint8))),
    ),
    ("bomb-png-header", ResourceLimit, "50000x50000", ".png", _const(png_declaring(50_000, 50_000))),
    ("bomb-png-deflate", ResourceLimit, "12000x12000", ".png", lambda _p: png_deflate_bomb()),
    ("bomb-gif-screen", ResourceLimit, "65535x65535", ".gif", _const(gif_declaring((65535, 65535), (9, 9)))),
    (
        "bomb-gif-frame",
        ResourceLimit,
        "bomb|pixels",
        ".gif",
        _const(gif_declaring((10, 10), (60_000, 60_000))),
    ),
    ("bomb-tiff", ResourceLimit, "100000x100000", ".tif", _const(tiff_declaring(100_000, 100_000))),
    ("bomb-jpeg-header", ResourceLimit, "60000x60000", ".jpg", _const(jpeg_declaring(60_000, 60_000))),
    ("bomb-bmp-header", ResourceLimit, "30000x30000", ".bmp", _const(bmp_declaring(30_000, 30_000))),
    ("bomb-ppm-header", ResourceLimit, "40000x40000", ".ppm", _const(b"P5\n40000 40000\n255\n" + b"\0" * 16)),
    ("bomb-webp-header", ResourceLimit, "16384x16384|bomb", ".webp", _const(webp_declaring(16384, 16384))),
    ("zero-width-png", BadInput, "zero|corrupt", ".png", _const(png_declaring(0, 10))),
]
for _id, _exp, _kw, _sfx, _make in _IMAGE_BAD:
    _add(
        _id,
        "image",
        _exp,
        _kw,
        _sfx,
        _make,
        verify=_no_marker if _id == "pickle-as-png" else None,
        cli=_id in ("bomb-png-header", "svg-as-png"),
    )


# -- images: awkward but valid, must open as the right upright RGB picture ------------------------------------


def _expect_image(
    size: tuple[int, int], pixels: dict[tuple[int, int], tuple[int, int, int]] | None = None, tol: int = 40
) -> Callable[[Any, Path], None]:
    def verify(img: Any, _p: Path) -> None:
        from accel.images import resize_center_crop

        assert isinstance(img, Image.Image) and img.mode == "RGB", f"not an RGB image: {img!r}"
        assert img.size == size, f"size {img.size}, expected {size}"
        for xy, rgb in (pixels or {}).items():
            got = np.asarray(img.getpixel(xy), dtype=int)
            assert np.abs(got - rgb).max() <= tol, f"pixel {xy} is {tuple(got)}, expected about {rgb}"
        start = time.perf_counter()  # every accepted image must also preprocess, quickly, to a 224 crop
        crop = resize_center_crop(img, 224)
        took = time.perf_counter() - start
        assert crop.size == (224, 224), crop.size
        assert took < 5.0, f"preprocessing a {img.size[0]}x{img.size[1]} image took {took:.1f} s"

    return verify


RED, BLUE, GREEN, WHITE = (255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 255)


def _palette_transparent(_p: Path) -> bytes:
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    p.paste(1, (0, 0, 4, 8))
    return encode(p, "PNG", transparency=0)


def _rgba(_p: Path) -> bytes:
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 255
    a[:, :4, 3] = 255  # left opaque red, right fully transparent (composited on white)
    return encode(Image.fromarray(a, "RGBA"), "PNG")


def _gray16(_p: Path) -> bytes:
    a = np.zeros((4, 8), np.uint16)
    a[:, :4] = 65535
    return encode(Image.fromarray(a), "PNG")


def _animated(fmt: str, **kw: Any) -> Callable[[Path], bytes]:
    def make(_p: Path) -> bytes:
        frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE, GREEN)]
        return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)

    return make


def _sized(w: int, h: int, fmt: str = "PNG") -> Callable[[Path], bytes]:
    return lambda _p: encode(Image.new("RGB", (w, h), (200, 120, 40)), fmt)


def _bad_exif_orientation(_p: Path) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 9  # not a valid orientation: keep the picture as stored
    return encode(_two_colour(64, 32), "JPEG", quality=95, exif=exif.tobytes())


_IMAGE_OK: list[tuple[str, str, str, Callable[[Path], bytes], Callable[[Any, Path], None]]] = [
    ("one-pixel", "1x1", ".png", _sized(1, 1), _expect_image((1, 1), {(0, 0): (200, 120, 40)})),
    ("one-by-n", "1x500", ".png", _sized(1, 500), _expect_image((1, 500))),
    ("n-by-one", "500x1", ".png", _sized(500, 1), _expect_image((500, 1))),
    ("extreme-wide", "10000x3", ".png", _sized(10_000, 3), _expect_image((10_000, 3))),
    ("extreme-tall", "3x10000", ".png", _sized(3, 10_000), _expect_image((3, 10_000))),
    (
        "needle",
        "1x60000: the preprocessing resize must not blow up",
        ".png",
        _sized(1, 60_000),
        _expect_image((1, 60_000)),
    ),
    (
        "cmyk-jpeg",
        "CMYK",
        ".jpg",
        lambda _p: encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95),
        _expect_image((16, 16), {(8, 8): RED}),
    ),
    (
        "gray16-png",
        "16-bit",
        ".png",
        _gray16,
        _expect_image((8, 4), {(1, 1): WHITE, (6, 1): (0, 0, 0)}, tol=1),
    ),
    (
        "palette-png",
        "palette",
        ".png",
        lambda _p: encode(_two_colour(16, 8).convert("P"), "PNG"),
        _expect_image((16, 8), {(2, 2): RED, (13, 2): BLUE}, tol=2),
    ),
    (
        "palette-transparent-png",
        "palette + tRNS",
        ".png",
        _palette_transparent,
        _expect_image((8, 8), {(1, 1): RED, (6, 6): WHITE}, tol=0),
    ),
    ("rgba-png", "alpha", ".png", _rgba, _expect_image((8, 8), {(1, 1): RED, (6, 6): WHITE}, tol=0)),
    (
        "la-png",
        "gray + alpha",
        ".png",
        lambda _p: encode(Image.new("LA", (4, 4), (0, 0)), "PNG"),
        _expect_image((4, 4), {(1, 1): WHITE}, tol=0),
    ),
    (
        "bilevel-png",
        "1-bit",
        ".png",
        lambda _p: encode(Image.new("1", (8, 8), 1), "PNG"),
        _expect_image((8, 8), {(1, 1): WHITE}, tol=0),
    ),
    # orientation 6 = rotate 90 CW to display: the red left half of the 64x32 picture ends up on top
    (
        "exif-rotate-90",
        "EXIF orientation 6",
        ".jpg",
        lambda _p: _exif_jpeg(6),
        _expect_image((32, 64), {(16, 4): RED, (16, 60): BLUE}),
    ),
    (
        "exif-rotate-270",
        "EXIF orientation 8",
        ".jpg",
        lambda _p: _exif_jpeg(8),
        _expect_image((32, 64), {(16, 4): BLUE, (16, 60): RED}),
    ),
    (
        "exif-rotate-180",
        "EXIF orientation 3",
        ".jpg",
        lambda _p: _exif_jpeg(3),
        _expect_image((64, 32), {(4, 16): BLUE, (60, 16): RED}),
    ),
    (
        "exif-invalid-orientation",
        "EXIF orientation 9",
        ".jpg",
        _bad_exif_orientation,
        _expect_image((64, 32), {(4, 16): RED}),
    ),
    ("animated-gif", "first frame", ".gif", _animated("GIF"), _expect_image((16, 16), {(8, 8): RED}, tol=4)),
    (
        "animated-png",
        "APNG first frame",
        ".png",
        _animated("PNG"),
        _expect_image((16, 16), {(8, 8): RED}, tol=4),
    ),
    (
        "animated-webp",
        "first frame",
        ".webp",
        _animated("WEBP", lossless=True),
        _expect_image((16, 16), {(8, 8): RED}, tol=4),
    ),
    (
        "progressive-jpeg",
        "progressive",
        ".jpg",
        lambda _p: encode(Image.new("RGB", (32, 32), RED), "JPEG", progressive=True),
        _expect_image((32, 32), {(16, 16): RED}, tol=8),
    ),
    (
        "interlaced-png",
        "Adam7",
        ".png",
        lambda _p: _adam7(),
        _expect_image((16, 8), {(2, 2): RED, (13, 2): BLUE}, tol=0),
    ),
    (
        "jpeg-named-png",
        "JPEG bytes with a .png name",
        ".png",
        lambda _p: encode(Image.new("RGB", (8, 8), RED), "JPEG"),
        _expect_image((8, 8), {(4, 4): RED}, tol=8),
    ),
]


def _adam7() -> bytes:
    """An interlaced (Adam7) 16x8 RGB PNG built by hand (PIL cannot write interlaced PNGs)."""
    img = np.asarray(_two_colour(16, 8))
    passes = (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    )
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = img[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", 16, 8, 8, 2, 0, 0, 1)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


for _id, _note, _sfx, _make, _verify in _IMAGE_OK:
    _add(_id, "image", OK, _note, _sfx, _make, verify=_verify)


# -- checkpoints ------------------------------------------------------------------------------------------


def _state_dict() -> dict[str, Any]:
    """A fresh copy of the packaged fashion_cnn weights (a real, loadable state dict)."""
    return {k: v.clone() for k, v in accel.load(ARCH).module.state_dict().items()}


def _torch_bytes(obj: Any, **kw: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _zeros() -> Any:
    import torch

    return torch.zeros(3)


def _sd_with(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], bytes]:
    def make(_p: Path) -> bytes:
        sd = _state_dict()
        out = edit(sd)
        return _torch_bytes(sd if out is None else out)

    return make


def _first_weight(sd: dict[str, Any]) -> str:
    return next(k for k, v in sd.items() if k.endswith("weight") and v.ndim == 4)


def _nan(sd: dict[str, Any]) -> None:
    sd[_first_weight(sd)][0, 0, 0, 0] = float("nan")


def _inf(sd: dict[str, Any]) -> None:
    sd[_first_weight(sd)].view(-1)[-1] = float("-inf")


def _wrong_shape(sd: dict[str, Any]) -> None:
    import torch

    k = _first_weight(sd)
    sd[k] = torch.zeros(sd[k].shape[0] * 2, *sd[k].shape[1:])


def _sparse(sd: dict[str, Any]) -> None:
    k = _first_weight(sd)
    sd[k] = sd[k].to_sparse()


def _complex(sd: dict[str, Any]) -> None:
    k = _first_weight(sd)
    sd[k] = sd[k].to(dtype=_zeros().dtype.to_complex())


def _missing(sd: dict[str, Any]) -> None:
    sd.pop(_first_weight(sd))


def _extra(sd: dict[str, Any]) -> None:
    import torch

    sd["head.secret_layer.weight"] = torch.zeros(3)


def _drop_bn_counters(sd: dict[str, Any]) -> None:
    for k in [k for k in sd if k.endswith("num_batches_tracked")]:
        sd.pop(k)


def _evil_torch(p: Path) -> bytes:
    sd = _state_dict()
    sd["payload"] = _Payload(marker_for(p))
    return _torch_bytes(sd)


def _evil_torch_shell(p: Path) -> bytes:
    return _torch_bytes({"weight": _ShellPayload(marker_for(p))})


def _evil_torch_legacy(p: Path) -> bytes:
    return _torch_bytes({"payload": _Payload(marker_for(p))}, _use_new_zipfile_serialization=False)


def _safetensors(edit: Callable[[dict[str, Any]], Any] | None = None) -> Callable[[Path], bytes]:
    def make(_p: Path) -> bytes:
        from safetensors.torch import save

        sd = _state_dict()
        if edit is not None:
            edit(sd)
        return save({k: v.contiguous() for k, v in sd.items()})

    return make


def _cut(make: Callable[[Path], bytes], frac: float) -> Callable[[Path], bytes]:
    def cut(p: Path) -> bytes:
        data = make(p)
        return data[: int(len(data) * frac)]

    return cut


def _same_weights(net: Any, _p: Path) -> None:
    import torch

    ref = accel.load(ARCH).module.state_dict()
    got = net.module.state_dict()
    for k, v in ref.items():
        if v.is_floating_point():
            assert torch.allclose(got[k].float(), v.float(), atol=1e-3), f"weights differ at {k}"
    img = Image.new("RGB", (28, 28), (120, 120, 120))
    preds = net.predict(img, top=3)
    assert len(preds) == 3 and all(np.isfinite(p) for _, p in preds), preds


_CKPT: list[tuple[str, type[BadInput] | None, str, str, Callable[[Path], bytes], dict[str, Any]]] = [
    ("ckpt-zero-byte", BadInput, "empty", ".pt", _const(b""), {}),
    (
        "ckpt-text",
        BadInput,
        "not a .*checkpoint|not a readable",
        ".pt",
        _const(b"just some notes about the model\n" * 4),
        {},
    ),
    (
        "ckpt-html",
        BadInput,
        "not a .*checkpoint|not a readable",
        ".pth",
        _const(b"<!DOCTYPE html><html>403</html>"),
        {},
    ),
    (
        "ckpt-random-bytes",
        BadInput,
        "not a .*checkpoint|not a readable",
        ".pt",
        _const(bytes(np.random.default_rng(3).integers(0, 256, 999, dtype=np.uint8))),
        {},
    ),
    (
        "ckpt-truncated-zip",
        BadInput,
        "not a readable|corrupt|truncated",
        ".pt",
        _cut(_sd_with(lambda sd: None), 0.5),
        {"cli": False},
    ),
    (
        "ckpt-legacy-truncated",
        BadInput,
        "not a readable|corrupt|truncated",
        ".pt",
        _cut(lambda p: _torch_bytes(_state_dict(), _use_new_zipfile_serialization=False), 0.5),
        {},
    ),
    (
        "ckpt-safetensors-corrupt",
        BadInput,
        "safetensors",
        ".safetensors",
        _const(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"),
        {},
    ),
    ("ckpt-safetensors-truncated", BadInput, "safetensors", ".safetensors", _cut(_safetensors(), 0.6), {}),
    (
        "ckpt-wrong-architecture",
        BadInput,
        "does not fit architecture 'resnet18'",
        ".pt",
        _sd_with(lambda sd: None),
        {"arch": "resnet18"},
    ),
    ("ckpt-missing-key", BadInput, "1 missing key", ".pt", _sd_with(_missing), {}),
    ("ckpt-extra-key", BadInput, "1 unexpected key.*secret_layer", ".pt", _sd_with(_extra), {}),
    ("ckpt-wrong-shape", BadInput, "wrong shape", ".pt", _sd_with(_wrong_shape), {}),
    ("ckpt-nan", BadInput, "NaN or inf", ".pt", _sd_with(_nan), {"cli": True}),
    ("ckpt-inf", BadInput, "NaN or inf", ".pt", _sd_with(_inf), {}),
    ("ckpt-nan-safetensors", BadInput, "NaN or inf", ".safetensors", _safetensors(_nan), {}),
    ("ckpt-sparse-tensor", BadInput, "sparse|dense", ".pt", _sd_with(_sparse), {}),
    ("ckpt-complex-tensor", BadInput, "complex", ".pt", _sd_with(_complex), {}),
    (
        "ckpt-bare-tensor",
        BadInput,
        "expected a state dict",
        ".pt",
        lambda _p: _torch_bytes(_zeros()),
        {},
    ),
    (
        "ckpt-list",
        BadInput,
        "expected a state dict",
        ".pt",
        lambda _p: _torch_bytes([_zeros()]),
        {},
    ),
    ("ckpt-no-arch", BadInput, "needs an architecture", ".pt", _sd_with(lambda sd: None), {"arch": None}),
    (
        "ckpt-unknown-arch",
        BadInput,
        "unknown model 'notanet'",
        ".pt",
        _sd_with(lambda sd: None),
        {"arch": "notanet"},
    ),
    (
        "ckpt-malicious-pickle",
        UntrustedFile,
        "refusing to load",
        ".pt",
        _evil_torch,
        {"verify": _no_marker, "cli": True},
    ),
    (
        "ckpt-malicious-legacy",
        UntrustedFile,
        "refusing to load",
        ".pt",
        _evil_torch_legacy,
        {"verify": _no_marker},
    ),
    (
        "ckpt-malicious-raw-pickle",
        UntrustedFile,
        "refusing to load",
        ".pth",
        _pickle_as_png,
        {"verify": _no_marker},
    ),
    (
        "ckpt-malicious-os-system",
        UntrustedFile,
        "refusing to load.*system",
        ".pt",
        _evil_torch_shell,
        {"verify": _no_marker},
    ),
    ("ckpt-zip-not-torch", BadInput, "not a readable PyTorch checkpoint", ".pt", _zip_bytes, {}),
    ("ckpt-empty-dict", BadInput, "empty dict", ".pt", lambda _p: _torch_bytes({}), {}),
    # accepted: what real checkpoints look like
    (
        "ckpt-nested-state-dict",
        OK,
        "{'epoch':.., 'state_dict':..}",
        ".pt",
        _sd_with(lambda sd: {"epoch": 3, "state_dict": sd}),
        {"verify": _same_weights},
    ),
    (
        "ckpt-dataparallel-prefix",
        OK,
        "module.* keys",
        ".pt",
        _sd_with(lambda sd: {f"module.{k}": v for k, v in sd.items()}),
        {"verify": _same_weights},
    ),
    (
        "ckpt-legacy-format",
        OK,
        "pre-1.6 torch.save",
        ".pt",
        lambda _p: _torch_bytes(_state_dict(), _use_new_zipfile_serialization=False),
        {"verify": _same_weights},
    ),
    (
        "ckpt-float64",
        OK,
        "double precision",
        ".pt",
        _sd_with(lambda sd: {k: (v.double() if v.is_floating_point() else v) for k, v in sd.items()}),
        {"verify": _same_weights},
    ),
    (
        "ckpt-old-batchnorm",
        OK,
        "no num_batches_tracked (pre-0.4.1 BatchNorm)",
        ".pt",
        _sd_with(_drop_bn_counters),
        {"verify": _same_weights},
    ),
    ("ckpt-safetensors", OK, "safetensors", ".safetensors", _safetensors(), {"verify": _same_weights}),
    (
        "ckpt-safetensors-named-bin",
        OK,
        "safetensors bytes with a .bin name",
        ".bin",
        _safetensors(),
        {"verify": _same_weights},
    ),
]
for _id, _exp, _kw, _sfx, _make, _extra_kw in _CKPT:
    _add(_id, "checkpoint", _exp, _kw, _sfx, _make, **{"arch": ARCH, **_extra_kw})


# -- ONNX files -------------------------------------------------------------------------------------------


def _onnx_model(
    *,
    in_type: int | None = None,
    in_shape: list[Any] | None = None,
    out_shape: list[Any] | None = None,
    body: str = "classifier",
    ir_version: int = 10,
    opset: int = 17,
    weight: float = 1.0,
    external: str | None = None,
    inputs: int = 1,
) -> bytes:
    """A tiny ONNX model: by default a valid (N,3,8,8) -> (N,3) classifier (global average pool, scale)."""
    from onnx import TensorProto, helper, numpy_helper

    ft = TensorProto.FLOAT if in_type is None else in_type
    ins = [helper.make_tensor_value_info("x", ft, in_shape or ["N", 3, 8, 8])]
    ins += [helper.make_tensor_value_info(f"x{i}", ft, in_shape or ["N", 3, 8, 8]) for i in range(1, inputs)]
    opsets = [helper.make_opsetid("", opset)]
    inits = []
    if body == "classifier":
        w = numpy_helper.from_array(np.full((1, 3), weight, np.float32), "w")
        if external is not None:
            w.ClearField("raw_data")
            w.data_location = TensorProto.EXTERNAL
            e = w.external_data.add()
            e.key, e.value = "location", external
        inits.append(w)
        nodes = [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Mul", ["f", "w"], ["y"]),
        ]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or ["N", 3])
    elif body == "custom-op":
        nodes = [helper.make_node("Exfiltrate", ["x"], ["y"], domain="com.example.evil")]
        opsets.append(helper.make_opsetid("com.example.evil", 1))
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape or ["N", 3])
    elif body == "identity":
        nodes = [helper.make_node("Identity", ["x"], ["y"])]
        out = helper.make_tensor_value_info("y", ft, in_shape or ["N", 3, 8, 8])
    elif body == "add":
        nodes = [helper.make_node("Add", ["x", "x1"], ["y"])]
        out = helper.make_tensor_value_info("y", ft, in_shape or ["N", 3, 8, 8])
    elif body == "constant":
        ins = []
        value = numpy_helper.from_array(np.ones((1, 3), np.float32))
        nodes = [helper.make_node("Constant", [], ["y"], value=value)]
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    else:
        raise ValueError(body)
    graph = helper.make_graph(nodes, "g", ins, [out], inits)
    model = helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)
    return model.SerializeToString()


def _onnx(**kw: Any) -> Callable[[Path], bytes]:
    return lambda _p: _onnx_model(**kw)


def _secret_next_door(p: Path) -> bytes:
    (p.parent.parent / "secret.bin").write_bytes(np.ones(3, np.float32).tobytes())
    return _onnx_model(external="../secret.bin")


def _onnx_ok(net: Any, _p: Path) -> None:
    assert net.module is None and not net.differentiable
    preds = net.predict(Image.new("RGB", (8, 8), (10, 200, 30)), top=3)
    assert len(preds) == 3 and abs(sum(p for _, p in preds) - 1.0) < 1e-4, preds
    assert preds[0][0] == "1", preds  # the green channel has the largest mean


def _onnx_predict(path: Path) -> Any:
    """Load the file and, if that worked, classify a small image (some problems only show at run time)."""
    net = accel.load(path)
    net.predict(Image.new("RGB", (8, 8), (10, 200, 30)), top=3)
    return net


_ONNX: list[tuple[str, type[BadInput] | None, str, Callable[[Path], bytes], dict[str, Any]]] = [
    ("onnx-zero-byte", BadInput, "empty", _const(b""), {}),
    ("onnx-garbage", BadInput, "not a valid ONNX", _const(b"\x08\x07garbage" * 10), {}),
    ("onnx-html", BadInput, "not a valid ONNX", _const(b"<html><body>502 Bad Gateway</body></html>"), {}),
    ("onnx-truncated", BadInput, "not a valid ONNX", _cut(_onnx(), 0.6), {}),
    ("onnx-pickle", BadInput, "not a valid ONNX", _pickle_as_png, {"verify": _no_marker}),
    ("onnx-input-rank-2", BadInput, "rank 4", _onnx(in_shape=["N", 10], body="identity"), {"cli": True}),
    ("onnx-input-rank-5", BadInput, "rank 4", _onnx(in_shape=["N", 3, 2, 8, 8], body="identity"), {}),
    ("onnx-input-int64", BadInput, "float32", _onnx(in_type=7, body="identity"), {}),  # TensorProto.INT64
    (
        "onnx-input-float16",
        BadInput,
        "float32",
        _onnx(in_type=10, body="identity"),
        {},
    ),  # TensorProto.FLOAT16
    ("onnx-two-inputs", BadInput, "one image input", _onnx(body="add", inputs=2), {}),
    ("onnx-no-inputs", BadInput, "one image input", _onnx(body="constant"), {}),
    ("onnx-five-channels", BadInput, "1 or 3 channels", _onnx(in_shape=["N", 5, 8, 8], body="identity"), {}),
    ("onnx-huge-input", ResourceLimit, "pixels", _onnx(in_shape=["N", 3, 100_000, 100_000]), {}),
    ("onnx-ir-too-new", BadInput, r"ir.version", _onnx(ir_version=99), {"cli": True}),
    ("onnx-non-square-input", BadInput, "square", _onnx(in_shape=["N", 3, 8, 16]), {}),
    ("onnx-opset-too-new", BadInput, "opset", _onnx(opset=999), {}),
    ("onnx-custom-op", BadInput, "Exfiltrate|com.example.evil", _onnx(body="custom-op"), {}),
    ("onnx-nan-weights", BadInput, "NaN or inf", _onnx(weight=float("nan")), {}),
    ("onnx-external-data-escape", BadInput, "outside|external", _secret_next_door, {}),
    ("onnx-no-classifier-output", BadInput, "no classifier head", _onnx(body="identity"), {}),
    ("onnx-classifier", OK, "a valid tiny classifier", _onnx(), {"verify": _onnx_ok}),
]
for _id, _exp, _kw, _make, _extra_kw in _ONNX:
    _add(_id, "onnx", _exp, _kw, ".onnx", _make, action=_onnx_predict, **_extra_kw)


# -- uploads into the run store ---------------------------------------------------------------------------

TRAVERSAL_NAME = "../../evil.png"


def _upload_as_dashboard(name: str) -> Callable[[Path], Any]:
    """Save the file the way the dashboard does: the suffix comes from the user's file name, nothing else."""

    def act(path: Path) -> Any:
        from accel.store import RunStore

        store = RunStore(path.parent / "store")
        return store, store.save_upload(path.read_bytes(), Path(name).suffix)

    return act


def _upload_raw_name(path: Path) -> Any:
    from accel.store import RunStore

    return RunStore(path.parent / "store").save_upload(path.read_bytes(), TRAVERSAL_NAME)


def _landed_inside(res: Any, path: Path) -> None:
    store, saved = res
    uploads = store.uploads_dir.resolve()
    saved = Path(saved).resolve()
    assert saved.parent == uploads, f"{saved} is not inside {uploads}"
    assert saved.name.startswith("upload-") and "evil" not in saved.name, saved.name
    assert saved.read_bytes() == path.read_bytes()
    for up in (1, 2, 3):  # where ../../evil.png would have gone from the store's folders
        for base in (uploads, store.root.resolve(), path.parent.resolve()):
            anc = base.parents[up - 1] if up - 1 < len(base.parents) else base
            assert not (anc / "evil.png").exists(), f"a file escaped to {anc / 'evil.png'}"
    assert accel.open_image(saved).size == (8, 8)


_add(
    "upload-path-traversal-name",
    "upload",
    OK,
    f"{TRAVERSAL_NAME!r} lands in the store's uploads folder under a generated name",
    ".png",
    lambda _p: encode(Image.new("RGB", (8, 8), RED), "PNG"),
    action=_upload_as_dashboard(TRAVERSAL_NAME),
    verify=_landed_inside,
)
_add(
    "upload-path-as-suffix",
    "upload",
    BadInput,
    "unsupported upload type",
    ".png",
    lambda _p: encode(Image.new("RGB", (8, 8), RED), "PNG"),
    action=_upload_raw_name,
)
_add(
    "upload-script-behind-image-name",
    "upload",
    BadInput,
    "unsupported upload type",
    ".png",
    lambda _p: b"#!/bin/sh\nrm -rf ~\n",
    action=_upload_as_dashboard("photo.png/../../run.sh"),
)


# --------------------------------------------------------------------------------------------- running


def build_corpus(folder: str | os.PathLike[str], ids: list[str] | None = None) -> list[tuple[Case, Path]]:
    """Write every entry (or those in `ids`) under `folder`; returns (case, path) pairs in corpus order."""
    root = Path(folder)
    out = []
    for case in CASES:
        if ids is not None and case.id not in ids:
            continue
        path = case.path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(case.make(path))
        out.append((case, path))
    return out


@dataclass
class Outcome:
    """What happened to one entry through one channel ("api" or "cli")."""

    case: Case
    channel: str
    status: (
        str  # "handled" (right error or correctly accepted), "unclear" (BadInput, wrong class/words), "crash"
    )
    detail: str
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "handled"


def _default_action(case: Case, path: Path) -> Any:
    if case.kind == "image":
        return accel.open_image(path)
    if case.kind == "checkpoint":
        return accel.load(path, arch=case.arch)
    if case.kind == "onnx":
        return accel.load(path)
    raise ValueError(f"no default action for kind {case.kind!r}")


def _judge_error(case: Case, channel: str, e: BaseException, msg: str, took: float) -> Outcome:
    if case.expect is None:
        return Outcome(case, channel, "crash", f"refused a good input: {type(e).__name__}: {msg}", took)
    if not isinstance(e, case.expect):
        return Outcome(
            case, channel, "unclear", f"raised {type(e).__name__}, expected {case.outcome}: {msg}", took
        )
    if not re.search(case.keyword, msg, re.IGNORECASE):
        return Outcome(case, channel, "unclear", f"message lacks /{case.keyword}/: {msg}", took)
    return Outcome(case, channel, "handled", f"{type(e).__name__}: {msg}", took)


def try_api(case: Case, path: Path) -> Outcome:
    """Feed one entry through the Python API and judge the result."""
    start = time.perf_counter()
    try:
        res = (case.action or (lambda p: _default_action(case, p)))(path)
    except BadInput as e:
        took = time.perf_counter() - start
        out = _judge_error(case, "api", e, str(e), took)
        if case.verify is not None and case.expect is not None:
            try:
                case.verify(None, path)
            except AssertionError as a:
                return Outcome(case, "api", "crash", f"{a} (after {type(e).__name__})", took)
        return out
    except Exception as e:  # noqa: BLE001 - anything but BadInput escaping is exactly what we count
        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        return Outcome(
            case, "api", "crash", f"{type(e).__name__} at {where}: {e}", time.perf_counter() - start
        )
    took = time.perf_counter() - start
    if case.expect is not None:
        if case.verify is not None:
            try:
                case.verify(res, path)
            except AssertionError as a:
                return Outcome(case, "api", "crash", str(a), took)
        return Outcome(case, "api", "crash", f"silently accepted (returned {type(res).__name__})", took)
    try:
        if case.verify is not None:
            case.verify(res, path)
    except AssertionError as a:
        return Outcome(case, "api", "crash", f"accepted but wrong: {a}", took)
    except Exception as e:  # noqa: BLE001
        return Outcome(case, "api", "crash", f"accepted, then {type(e).__name__}: {e}", took)
    return Outcome(case, "api", "handled", "accepted correctly", took)


def convlens_command() -> list[str]:
    """How to start the `convlens` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "convlens"
    return [str(script)] if script.exists() else [sys.executable, "-m", "accel.cli"]


def cli_args(case: Case, path: Path, probe: Path) -> list[str]:
    """`convlens predict ...` arguments that feed this entry."""
    if case.kind == "image":
        return ["predict", str(path), "--model", ARCH]
    if case.kind == "checkpoint":
        return ["predict", str(probe), "--model", str(path), *(["--arch", case.arch] if case.arch else [])]
    if case.kind == "onnx":
        return ["predict", str(probe), "--model", str(path)]
    raise ValueError(f"no CLI form for kind {case.kind!r}")


def try_cli(case: Case, path: Path, probe: Path) -> Outcome:
    """Feed one entry through `convlens predict`: bad input must exit 2 with one line on stderr, no traceback."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    r = subprocess.run(
        [*convlens_command(), *cli_args(case, path, probe)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    took = time.perf_counter() - start
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if case.verify is not None and case.expect is not None:
        try:
            case.verify(None, path)
        except AssertionError as a:
            return Outcome(case, "cli", "crash", str(a), took)
    if case.expect is None:
        status = "handled" if r.returncode == 0 else "crash"
        return Outcome(case, "cli", status, f"exit {r.returncode}: {r.stderr.strip()[-300:]}", took)
    if "Traceback" in r.stderr or r.returncode not in (0, 2):
        return Outcome(case, "cli", "crash", f"exit {r.returncode}: {r.stderr.strip()[-300:]}", took)
    if r.returncode == 0:
        return Outcome(case, "cli", "crash", "exit 0: silently accepted", took)
    if len(lines) != 1 or not lines[0].startswith("convlens: error:"):
        return Outcome(case, "cli", "unclear", f"stderr is not one error line: {lines!r}", took)
    if not re.search(case.keyword, lines[0], re.IGNORECASE):
        return Outcome(case, "cli", "unclear", f"message lacks /{case.keyword}/: {lines[0]}", took)
    return Outcome(case, "cli", "handled", lines[0], took)


@dataclass
class Report:
    """All outcomes of one corpus run, with the counts the summary line prints."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return len(self.outcomes)

    @property
    def handled(self) -> int:
        return sum(o.status == "handled" for o in self.outcomes)

    @property
    def unclear(self) -> int:
        return sum(o.status == "unclear" for o in self.outcomes)

    @property
    def crashes(self) -> int:
        return sum(o.status == "crash" for o in self.outcomes)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def line(self) -> str:
        """The one-line summary: tried, handled with a clear error (or accepted correctly), crashes."""
        api = sum(o.channel == "api" for o in self.outcomes)
        cli = self.tried - api
        how = f" ({api} API, {cli} CLI)" if cli else ""
        unclear = f", {self.unclear} unclear messages" if self.unclear else ""
        return (
            f"bad inputs: {self.tried} tried{how}, {self.handled} handled with a clear error "
            f"(or accepted correctly){unclear}, {self.crashes} crashes"
        )


def run_corpus(
    folder: str | os.PathLike[str] | None = None,
    *,
    cli: bool = False,
    ids: list[str] | None = None,
    progress: Callable[[Outcome], None] | None = None,
) -> Report:
    """Build the corpus (in `folder`, else a temporary folder) and feed every entry through the API, and the
    representative subset through the CLI when `cli` is true."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="convlens-badinputs-") as tmp:
            return run_corpus(tmp, cli=cli, ids=ids, progress=progress)
    root = Path(folder)
    os.environ.setdefault("CONVLENS_OFFLINE", "1")
    os.environ.setdefault("CONVLENS_CACHE", str(root / "cache"))
    report = Report()
    built = build_corpus(root, ids)
    for case, path in built:
        out = try_api(case, path)
        report.outcomes.append(out)
        if progress is not None:
            progress(out)
    if cli:
        probe = root / "probe.png"
        Image.new("RGB", (28, 28), (128, 128, 128)).save(probe)
        for case, path in built:
            if case.cli:
                out = try_cli(case, path, probe)
                report.outcomes.append(out)
                if progress is not None:
                    progress(out)
    return report


__all__ = [
    "CASES",
    "Case",
    "Outcome",
    "Report",
    "build_corpus",
    "run_corpus",
    "try_api",
    "try_cli",
    "png_declaring",
    "gif_declaring",
    "tiff_declaring",
]
