"""Byte-level fuzzing of the image boundary (issue 16): `accel.open_image` gives an RGB image or a `BadInput`, in
bounded time and memory, for arbitrary short byte strings and structured mutations of real files.

The seeds are one real photo (scikit-image's chelsea, resized small so thousands of inputs fit in seconds) saved
in every format and variant this Pillow writes and convlens decodes: PNG (RGB, 16-bit, palette, alpha, gray,
interlaced, animated), JPEG (baseline, progressive, CMYK, grayscale, EXIF-rotated), GIF (still, animated), WEBP
(lossy, lossless, alpha, animated), BMP/DIB, TIFF (five compressions, float, 16-bit, planar), PPM/PGM/PBM/PFM,
QOI and AVIF where Pillow has it. Each seed is first checked to decode to the right picture, so the mutations
start from files the boundary accepts.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, features

from accel.errors import BadInput
from accel.images import decodable_formats, open_image, sample_image, to_array
from tests.fuzzkit import byte_inputs, fuzz

W, H = 24, 16  # seed size: small enough for 8,000 decodes in seconds, big enough for strips, palettes, blocks
FUZZ_INPUTS = 8000
FUZZ_MAX_PIXELS = (
    4_000_000  # a mutated header may declare millions of pixels; the cap itself is tested elsewhere
)
RSS_GROWTH_MB = 500


# ------------------------------------------------------------------------------------------------ seed files


@functools.cache
def reference() -> np.ndarray:
    """The seed picture: chelsea (a real photo) resized to W x H, as HxWx3 uint8."""
    return to_array(sample_image("chelsea").resize((W, H), Image.Resampling.LANCZOS))


def _save(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))


def png_raw(a: np.ndarray, colour_type: int, interlace: bool = False) -> bytes:
    """A PNG written by hand (Pillow writes neither interlaced nor 16-bit RGB PNGs): 8- or 16-bit samples."""
    h, w = a.shape[:2]
    depth = 16 if a.dtype == np.uint16 else 8
    samples = a.astype(">u2") if depth == 16 else a
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    raw = b"".join(
        b"\x00" + row.tobytes() for y0, x0, dy, dx in passes for row in samples[y0::dy, x0::dx] if row.size
    )
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, int(interlace))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def _tifffile(a: np.ndarray, **kw: object) -> bytes:
    tifffile = pytest.importorskip("tifffile")
    buf = io.BytesIO()
    tifffile.imwrite(buf, a, **kw)
    return buf.getvalue()


def _gray(a: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(a).convert("L"))


def _rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=2)


# name -> (file bytes, expected HxWx3 picture, tolerance as mean absolute error in 0..255 levels)
Seed = tuple[bytes, np.ndarray, float]


@functools.cache
def seed_files() -> dict[str, Seed]:
    """Every format variant this Pillow writes and convlens decodes, made from the reference photo."""
    ref = reference()
    im = Image.fromarray(ref)
    gray = _gray(ref)
    rgba = np.dstack([ref, np.where(np.arange(W) < W // 3, 0, 255).astype(np.uint8)[None, :].repeat(H, 0)])
    over_white = ref.copy()
    over_white[:, : W // 3] = 255
    pal = im.quantize(64)
    pal_rgb = to_array(pal.convert("RGB"))
    frames = [im, im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), Image.new("RGB", (W, H), (0, 128, 255))]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    cmyk = im.convert("CMYK")
    seeds: dict[str, Seed] = {
        "png-rgb": (_save(im, "PNG"), ref, 0),
        "png-rgba": (_save(Image.fromarray(rgba, "RGBA"), "PNG"), over_white, 0),
        "png-gray": (_save(Image.fromarray(gray), "PNG"), _rgb(gray), 0),
        "png-gray16": (_save(Image.fromarray(gray.astype(np.uint16) * 257), "PNG"), _rgb(gray), 0),
        "png-rgb16": (png_raw(ref.astype(np.uint16) * 257, 2), ref, 0),
        "png-interlaced": (png_raw(ref, 2, interlace=True), ref, 0),
        "png-interlaced-rgba16": (png_raw(rgba.astype(np.uint16) * 257, 6, interlace=True), over_white, 0),
        "png-palette": (_save(pal, "PNG"), pal_rgb, 0),
        "png-palette-transparent": (_save(pal, "PNG", transparency=0), None, 0),  # expected filled in below
        "png-1bit": (_save(Image.fromarray(gray).convert("1", dither=0), "PNG"), None, 0),
        "png-animated": (_save(im, "PNG", save_all=True, append_images=frames[1:], duration=50), ref, 0),
        "jpeg-baseline": (_save(im, "JPEG", quality=90), ref, 8),
        "jpeg-progressive": (_save(im, "JPEG", quality=90, progressive=True, optimize=True), ref, 8),
        "jpeg-gray": (_save(Image.fromarray(gray), "JPEG", quality=90), _rgb(gray), 6),
        "jpeg-cmyk": (_save(cmyk, "JPEG", quality=95), to_array(cmyk.convert("RGB")), 8),
        "jpeg-exif-rotated": (_save(im, "JPEG", quality=90, exif=exif.tobytes()), np.rot90(ref, -1), 8),
        "gif": (_save(pal, "GIF"), pal_rgb, 0),
        "gif-animated": (
            _save(pal, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0),
            None,
            0,
        ),
        "bmp": (_save(im, "BMP"), ref, 0),
        "bmp-palette": (_save(pal, "BMP"), pal_rgb, 0),
        "bmp-1bit": (_save(Image.fromarray(gray).convert("1", dither=0), "BMP"), None, 0),
        "dib": (_save(im, "DIB"), ref, 0),
        "ppm": (_save(im, "PPM"), ref, 0),
        "pgm": (_save(Image.fromarray(gray), "PPM"), _rgb(gray), 0),
        "pgm-16bit": (_save(Image.fromarray(gray.astype(np.uint16) * 257), "PPM"), _rgb(gray), 0),
        "pbm": (_save(Image.fromarray(gray).convert("1", dither=0), "PPM"), None, 0),
        "pfm": (_save(Image.fromarray(gray.astype(np.float32) / 255), "PPM"), _rgb(gray), 0.5),
        "ppm-plain": (
            f"P3\n{W} {H}\n255\n".encode() + " ".join(map(str, ref.ravel())).encode() + b"\n",
            ref,
            0,
        ),
        "tiff": (_save(im, "TIFF"), ref, 0),
        "tiff-lzw": (_save(im, "TIFF", compression="tiff_lzw"), ref, 0),
        "tiff-deflate": (_save(im, "TIFF", compression="tiff_adobe_deflate"), ref, 0),
        "tiff-packbits": (_save(im, "TIFF", compression="packbits"), ref, 0),
        "tiff-jpeg": (_save(im, "TIFF", compression="jpeg", quality=90), ref, 8),
        "tiff-group4": (
            _save(Image.fromarray(gray).convert("1", dither=0), "TIFF", compression="group4"),
            None,
            0,
        ),
        "tiff-rgba-lzw": (
            _save(Image.fromarray(rgba, "RGBA"), "TIFF", compression="tiff_lzw"),
            over_white,
            0,
        ),
        "tiff-float-rgb": (_tifffile(ref.astype(np.float32) / 255, photometric="rgb"), ref, 0.5),
        "tiff-float-rgb-deflate": (
            _tifffile(ref.astype(np.float32) / 255, photometric="rgb", compression="zlib"),
            ref,
            0.5,
        ),
        "tiff-rgb16-planar": (
            _tifffile(
                np.moveaxis(ref.astype(np.uint16) * 257, 2, 0), photometric="rgb", planarconfig="separate"
            ),
            ref,
            0,
        ),
        "tiff-rgb16-tiled-bigendian": (
            _tifffile(ref.astype(np.uint16) * 257, photometric="rgb", tile=(16, 16), byteorder=">"),
            ref,
            0,
        ),
        "tiff-gray-float64-deflate-predictor": (
            _tifffile(gray.astype(np.float64) / 255, photometric="minisblack", compression="zlib"),
            _rgb(gray),
            0.5,
        ),
        "tiff-int16-gray-predictor": (
            _tifffile(gray.astype(np.int16), photometric="minisblack", compression="zlib", predictor=True),
            _rgb(gray),
            0,
        ),
        "webp-lossy": (_save(im, "WEBP", quality=90), ref, 10),
        "webp-lossless": (_save(im, "WEBP", lossless=True), ref, 0),
        "webp-alpha": (_save(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True), over_white, 0),
        "webp-animated": (
            _save(im, "WEBP", save_all=True, append_images=frames[1:], duration=50, lossless=True),
            ref,
            0,
        ),
        "qoi": (_save(im, "QOI"), ref, 0),
        "qoi-rgba": (_save(Image.fromarray(rgba, "RGBA"), "QOI"), over_white, 0),
    }
    if "AVIF" in decodable_formats():
        seeds["avif"] = (_save(im, "AVIF", quality=90), ref, 12)
        seeds["avif-alpha"] = (_save(Image.fromarray(rgba, "RGBA"), "AVIF", quality=90), over_white, 12)
    # expectations that are simplest to state through Pillow's own conversion of the saved picture
    one_bit = to_array(Image.fromarray(gray).convert("1", dither=0).convert("RGB"))
    for name in ("png-1bit", "bmp-1bit", "pbm", "tiff-group4"):
        seeds[name] = (seeds[name][0], one_bit, 0)
    transparent = pal_rgb.copy()
    transparent[np.asarray(pal) == 0] = 255
    seeds["png-palette-transparent"] = (seeds["png-palette-transparent"][0], transparent, 0)
    gif_anim = seeds["gif-animated"][0]
    seeds["gif-animated"] = (gif_anim, to_array(Image.open(io.BytesIO(gif_anim)).convert("RGB")), 0)
    return seeds


def _format(data: bytes) -> str | None:
    try:
        return Image.open(io.BytesIO(data), formats=decodable_formats()).format
    except Exception:  # noqa: BLE001
        return None


def test_every_seed_decodes_to_its_picture() -> None:
    """The fuzzing starts from valid files of every format, and each decodes to the right upright picture."""
    seeds = seed_files()
    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "DIB", "TIFF", "PPM", "QOI", "AVIF"):
        if fmt in decodable_formats():
            assert any(_format(d) == fmt for d, _, _ in seeds.values()), fmt
    for name, (data, expected, tol) in seeds.items():
        got = to_array(open_image(data))
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        err = float(np.abs(got.astype(np.float64) - expected).mean())
        assert err <= tol + 1e-9, f"{name}: mean abs error {err:.2f} > {tol}"


# ------------------------------------------------------------------------------------------------ short inputs


def _refusal(data: bytes) -> str:
    with pytest.raises(BadInput) as info:
        open_image(data)
    return str(info.value)


def test_every_one_byte_input_is_a_clear_refusal() -> None:
    for b in range(256):
        msg = _refusal(bytes([b]))
        assert (
            msg
            == "image bytes: is only 1 byte long, too short to be an image of any format (an interrupted download or copy?)"
        ), msg


def test_two_and_three_byte_inputs_are_clear_refusals() -> None:
    """Every first byte followed by the bytes that start real formats (and a few fillers), as 2- and 3-byte inputs."""
    starts = {d[1:3] for d, _, _ in seed_files().values()} | {
        b"\x00\x00",
        b"\xff\xff",
        b"PN",
        b"II",
        b"MM",
        b"1 ",
    }
    for b0 in range(256):
        for tail in starts:
            assert "is only 2 bytes long, too short" in _refusal(bytes([b0]) + tail[:1])
            assert "is only 3 bytes long, too short" in _refusal(bytes([b0]) + tail)


def test_prefixes_of_every_seed_are_refused_or_decoded() -> None:
    """Every seed cut to 1..64 bytes and to each tenth of its length: BadInput (never another exception)."""
    for name, (data, _, _) in seed_files().items():
        cuts = sorted({*range(1, min(64, len(data))), *(len(data) * k // 10 for k in range(1, 10))})
        for n in cuts:
            try:
                open_image(data[:n])
            except BadInput:
                continue
            except Exception as e:  # noqa: BLE001 - the failure we are looking for
                raise AssertionError(f"{name}[:{n}] escaped as {type(e).__name__}: {e}") from None


# ------------------------------------------------------------------------------------------------ the fuzzer


def _peak_rss_mb() -> float:
    """VmHWM (peak resident set size) of this process in MiB, from /proc/self/status."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _decode(data: bytes) -> object:
    img = open_image(data, max_pixels=FUZZ_MAX_PIXELS)
    assert img.mode == "RGB" and img.size[0] * img.size[1] <= FUZZ_MAX_PIXELS
    return img


def test_fuzz_image_bytes(record_property: Callable[[str, object], None]) -> None:
    """8,000 generated inputs (short byte strings and mutations of every seed): 0 escapes, bounded memory."""
    seeds = [d for d, _, _ in seed_files().values()]
    before, cpu = _peak_rss_mb(), time.process_time()
    rep = fuzz("images", _decode, byte_inputs(seeds), FUZZ_INPUTS)
    growth, cpu = _peak_rss_mb() - before, time.process_time() - cpu
    record_property(
        "summary_line",
        f"images: {rep.tried} fuzzed inputs in {cpu:.1f} s of CPU ({rep.seconds:.1f} s wall), "
        f"peak RSS growth {growth:.0f} MiB",
    )
    rep.assert_clean()
    assert rep.ok > 0 and rep.refused > 0  # both outcomes are reached: the mutations are not all fatal
    assert growth < RSS_GROWTH_MB, f"peak RSS grew by {growth:.0f} MiB while fuzzing"


def _mutations(seeds: list[bytes], n: int, rng_seed: int = 1) -> list[bytes]:
    """`n` quick mutations (bit flips and cuts) of the seeds, without hypothesis."""
    rng = random.Random(rng_seed)
    out = []
    for _ in range(n):
        d = bytearray(rng.choice(seeds))
        if rng.random() < 0.7:
            for _ in range(rng.randint(1, 4)):
                d[rng.randrange(len(d))] ^= 1 << rng.randrange(8)
        else:
            del d[rng.randrange(1, len(d)) :]
        out.append(bytes(d))
    return out


def test_damaged_files_print_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    """Decoders below Pillow (libtiff) and the libraries' loggers and warnings stay silent: a front end's one-line
    message is all a user sees (fd-level capture, so C libraries writing to stderr are caught too)."""
    seeds = [d for d, _, _ in seed_files().values()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcomes = Counter()
        for data in _mutations(seeds, 3000):
            try:
                open_image(data, max_pixels=FUZZ_MAX_PIXELS)
                outcomes["ok"] += 1
            except BadInput:
                outcomes["refused"] += 1
    out, err = capfd.readouterr()
    assert err == "" and out == "", err[:500]
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught[:5]]
    assert outcomes["ok"] > 100 and outcomes["refused"] > 100, outcomes


def test_avif_is_decoded_where_pillow_has_it() -> None:
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    assert "AVIF" in decodable_formats() and "avif" in seed_files()
