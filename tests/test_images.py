"""Tests for accel.images: a bad-input corpus built at test time, mode conversions, and the small helpers."""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import struct
import subprocess
import sys
import time
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from accel.errors import BadInput, ResourceLimit
from accel.images import (
    DEFAULT_MAX_PIXELS,
    decodable_formats,
    foolbox_imagenet,
    foolbox_photos,
    from_array,
    make_grid,
    open_image,
    overlay,
    resize_center_crop,
    sample_image,
    sample_images,
    to_array,
)
from tests.badinputs import gif_declaring, png_declaring, tiff_declaring

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- corpus builders


def noisy_rgb(w: int = 256, h: int = 192, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    a = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_close(pixel: object, expected: tuple[int, int, int], tol: int = 12) -> None:
    got = np.asarray(pixel, dtype=int)
    assert np.all(np.abs(got - np.asarray(expected)) <= tol), f"{tuple(got)} not within {tol} of {expected}"


# ----------------------------------------------------------------------------- bad input


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "cat.jpg"
    with pytest.raises(BadInput, match="not found") as info:
        open_image(path)
    assert "cat.jpg" in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.png", b"")
    with pytest.raises(BadInput, match="empty") as info:
        open_image(path)
    assert "empty.png" in str(info.value)


def test_empty_bytes_and_stream() -> None:
    with pytest.raises(BadInput, match="empty"):
        open_image(b"")
    with pytest.raises(BadInput, match="empty"):
        open_image(io.BytesIO(b""))


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="directory"):
        open_image(tmp_path)


def test_url_is_refused() -> None:
    with pytest.raises(BadInput, match="URL"):
        open_image("https://example.com/cat.jpg")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = encode(noisy_rgb(), "JPEG", quality=92)
    path = write(tmp_path, "half.jpg", data[: len(data) // 2])
    with pytest.raises(BadInput, match="truncated") as info:
        open_image(path)
    assert "half.jpg" in str(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png(tmp_path: Path) -> None:
    data = encode(noisy_rgb(), "PNG")
    path = write(tmp_path, "half.png", data[: len(data) // 2])
    with pytest.raises(BadInput, match="truncated"):
        open_image(path)


def test_png_cut_inside_header() -> None:
    with pytest.raises(BadInput, match="PNG"):
        open_image(encode(noisy_rgb(), "PNG")[:20])


def test_text_named_jpg(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.jpg", b"These are my notes about cats.\nNot a picture at all.\n")
    with pytest.raises(BadInput, match="text") as info:
        open_image(path)
    assert "not an image" in str(info.value)
    assert "notes.jpg" in str(info.value)


def test_html_error_page(tmp_path: Path) -> None:
    html = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not found</body></html>\n"
    with pytest.raises(BadInput, match="HTML") as info:
        open_image(write(tmp_path, "download.jpg", html))
    assert "not an image" in str(info.value)


def test_svg(tmp_path: Path) -> None:
    svg = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>\n'
    )
    with pytest.raises(BadInput, match="SVG"):
        open_image(write(tmp_path, "drawing.svg", svg))


def test_zip_named_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("cat.png", encode(noisy_rgb(8, 8), "PNG"))
    with pytest.raises(BadInput, match="ZIP"):
        open_image(write(tmp_path, "archive.png", buf.getvalue()))


def test_random_binary_is_unrecognised() -> None:
    with pytest.raises(BadInput, match="not a recognised image format"):
        open_image(bytes(range(1, 200)) * 3)


def test_png_bomb_refused_from_header(tmp_path: Path) -> None:
    path = write(tmp_path, "bomb.png", png_declaring(50_000, 50_000))
    start = time.perf_counter()
    with pytest.raises(ResourceLimit) as info:
        open_image(path)
    assert time.perf_counter() - start < 1.0
    msg = str(info.value)
    assert "50000x50000" in msg
    assert "2,500,000,000" in msg
    assert f"{DEFAULT_MAX_PIXELS:,}" in msg
    assert "max_pixels" in msg and "CONVLENS_MAX_PIXELS" in msg
    assert isinstance(info.value, BadInput)


def test_gif_bomb_screen_size() -> None:
    with pytest.raises(ResourceLimit, match="65535x65535"):
        open_image(gif_declaring((65535, 65535), (65535, 65535)))


def test_gif_bomb_frame_larger_than_screen_no_warning_leaks() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for frame in ((12_000, 12_000), (60_000, 60_000)):  # PIL warns on the first, errors on the second
            with pytest.raises(ResourceLimit):
                open_image(gif_declaring((10, 10), frame))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_tiff_bomb(tmp_path: Path) -> None:
    with pytest.raises(ResourceLimit, match="100000x100000"):
        open_image(write(tmp_path, "bomb.tif", tiff_declaring(100_000, 100_000)))


def test_zero_dimension_png() -> None:
    with pytest.raises(BadInput, match="zero|corrupt"):
        open_image(png_declaring(0, 10))


def test_pixel_limit_env_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(noisy_rgb(100, 100), "PNG")
    assert open_image(data).size == (100, 100)
    monkeypatch.setenv("CONVLENS_MAX_PIXELS", "5000")
    with pytest.raises(ResourceLimit, match="5,000"):
        open_image(data)
    assert open_image(data, max_pixels=20_000).size == (100, 100)
    with pytest.raises(ResourceLimit):
        open_image(data, max_pixels=9_999)
    monkeypatch.setenv("CONVLENS_MAX_PIXELS", "lots")
    with pytest.raises(BadInput, match="CONVLENS_MAX_PIXELS"):
        open_image(data)


def test_pil_global_state_untouched() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    open_image(encode(noisy_rgb(), "JPEG"))
    with pytest.raises(ResourceLimit):
        open_image(png_declaring(50_000, 50_000))
    after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    assert after == before


def test_unsupported_type() -> None:
    with pytest.raises(BadInput, match="file path, bytes"):
        open_image(12345)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- conversions


def test_path_bytes_and_filelike_agree(tmp_path: Path) -> None:
    data = encode(noisy_rgb(), "PNG")
    path = write(tmp_path, "noise.png", data)
    a = to_array(open_image(path))
    b = to_array(open_image(str(path)))
    c = to_array(open_image(data))
    with open(path, "rb") as fh:
        d = to_array(open_image(fh))
    e = to_array(open_image(io.BytesIO(data)))
    assert a.shape == (192, 256, 3) and a.dtype == np.uint8
    for other in (b, c, d, e):
        np.testing.assert_array_equal(a, other)


def test_result_is_loaded_and_detached(tmp_path: Path) -> None:
    path = write(tmp_path, "x.png", encode(noisy_rgb(32, 16), "PNG"))
    im = open_image(path)
    path.unlink()
    assert im.mode == "RGB" and im.size == (32, 16)
    assert not isinstance(im, ImageFile.ImageFile)
    assert im.getpixel((0, 0)) is not None


def test_cmyk_jpeg_to_rgb() -> None:
    im = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # red ink-wise: no cyan, full magenta+yellow
    out = open_image(encode(im, "JPEG", quality=95))
    assert out.mode == "RGB"
    assert_close(out.getpixel((16, 16)), (255, 0, 0), tol=20)


def test_16bit_grayscale_png_scaled_not_clipped() -> None:
    a = np.array([[65535, 32896, 0, 257]], dtype=np.uint16)
    data = encode(Image.fromarray(a), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    out = to_array(open_image(data))
    assert out[0, :, 0].tolist() == [255, 128, 0, 1]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_32bit_int_and_float_modes() -> None:
    i = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert i.mode == "I"
    assert to_array(open_image(encode(i, "TIFF")))[0, :, 0].tolist() == [0, 255]
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert f.mode == "F"
    assert to_array(open_image(encode(f, "TIFF")))[0, :, 0].tolist() == [0, 128, 255]


def test_palette_with_transparency_composited() -> None:
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    p.paste(1, (0, 0, 4, 8))  # left half red, right half index 0 (transparent)
    data = encode(p, "PNG", transparency=0)
    out = open_image(data, background=(0, 255, 0))
    assert out.getpixel((1, 1)) == (255, 0, 0)
    assert out.getpixel((6, 6)) == (0, 255, 0)
    assert open_image(data).getpixel((6, 6)) == (255, 255, 255)


def test_rgba_composited_on_background() -> None:
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    a[..., 0] = 255  # red
    a[:, :2, 3] = 255  # left opaque
    a[:, 2:, 3] = 0  # right fully transparent
    a[0, 0, 3] = 128  # one half-transparent pixel
    data = encode(Image.fromarray(a, "RGBA"), "PNG")
    out = to_array(open_image(data, background=(0, 0, 255)))
    assert tuple(out[1, 1]) == (255, 0, 0)
    assert tuple(out[1, 3]) == (0, 0, 255)
    assert_close(out[0, 0], (128, 0, 127), tol=2)


def test_la_composited() -> None:
    la = Image.merge("LA", (Image.new("L", (2, 1), 0), Image.frombytes("L", (2, 1), b"\xff\x00")))
    out = to_array(open_image(encode(la, "PNG"), background=(10, 20, 30)))
    assert tuple(out[0, 0]) == (0, 0, 0)
    assert tuple(out[0, 1]) == (10, 20, 30)


def test_exif_orientation_applied() -> None:
    a = np.zeros((32, 64, 3), dtype=np.uint8)
    a[..., 2] = 255  # blue everywhere
    a[:16, :16] = (255, 0, 0)  # red top-left quadrant
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())
    out = open_image(data)
    assert out.size == (32, 64)  # width and height swapped
    assert_close(out.getpixel((28, 4)), (255, 0, 0), tol=30)  # top-left went to top-right
    assert_close(out.getpixel((4, 4)), (0, 0, 255), tol=30)


def test_grayscale_and_bilevel_to_rgb() -> None:
    g = Image.fromarray(np.array([[0, 100, 200]], dtype=np.uint8))
    out = to_array(open_image(encode(g, "PNG")))
    assert out.shape == (1, 3, 3)
    assert out[0, :, 0].tolist() == [0, 100, 200]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    b = Image.new("1", (4, 4), 1)
    assert to_array(open_image(encode(b, "PNG")))[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animation_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    kw: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    try:
        data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    except (OSError, KeyError) as e:
        pytest.skip(f"{fmt} animation writing unavailable: {e}")
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert_close(open_image(data).getpixel((8, 8)), (255, 0, 0), tol=4)


def test_other_formats_roundtrip() -> None:
    im = noisy_rgb(20, 10)
    for fmt in ("BMP", "TIFF", "PPM"):
        np.testing.assert_array_equal(to_array(open_image(encode(im, fmt))), to_array(im))


def test_pil_image_input_goes_through_checks() -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert open_image(rgba, background=(1, 2, 3)).getpixel((0, 0)) == (1, 2, 3)
    with pytest.raises(ResourceLimit):
        open_image(Image.new("L", (100, 100)), max_pixels=100)


def test_bad_background() -> None:
    with pytest.raises(BadInput, match="background"):
        open_image(encode(noisy_rgb(4, 4), "PNG"), background=(0, 0, 300))


def test_thread_safe_concurrent_opens() -> None:
    blobs = [encode(noisy_rgb(64, 48, seed=i), "PNG") for i in range(8)]
    expected = [to_array(open_image(b)) for b in blobs]
    bomb = png_declaring(50_000, 50_000)

    def work(i: int) -> np.ndarray | str:
        if i % 3 == 0:
            try:
                open_image(bomb)
            except ResourceLimit:
                return "refused"
        return to_array(open_image(blobs[i % 8]))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(48)))
    for i, r in enumerate(results):
        if isinstance(r, str):
            assert i % 3 == 0
        else:
            np.testing.assert_array_equal(r, expected[i % 8])


# ----------------------------------------------------------------------------- arrays and helpers


def test_to_array_and_from_array() -> None:
    a = (np.arange(12, dtype=np.uint8) * 20).reshape(2, 2, 3)
    np.testing.assert_array_equal(to_array(from_array(a)), a)
    f = from_array(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32))
    assert f.mode == "RGB" and f.size == (2, 2)
    assert to_array(f)[0, 1].tolist() == [128, 128, 128]
    assert to_array(Image.new("RGBA", (3, 2), (1, 2, 3, 255))).shape == (2, 3, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_from_array_refuses_non_finite(bad: float) -> None:
    a = np.zeros((4, 4, 3), dtype=np.float32)
    a[1, 2, 0] = bad
    with pytest.raises(BadInput, match="NaN or infinite"):
        from_array(a)


def test_from_array_refuses_bad_shapes_and_ranges() -> None:
    with pytest.raises(BadInput, match="channel-first"):
        from_array(np.zeros((3, 8, 8), dtype=np.uint8))
    with pytest.raises(BadInput, match="HxW"):
        from_array(np.zeros((8,), dtype=np.uint8))
    with pytest.raises(BadInput, match="0..1"):
        from_array(np.full((2, 2), 200.0))


def test_resize_center_crop() -> None:
    out = resize_center_crop(noisy_rgb(300, 200), 224)
    assert out.size == (224, 224)
    tall = resize_center_crop(noisy_rgb(100, 400), 32, resize=32)
    assert tall.size == (32, 32)
    marked = np.zeros((224, 224, 3), dtype=np.uint8)
    marked[112, 112] = 255
    same = resize_center_crop(Image.fromarray(marked), 224, resize=224)
    np.testing.assert_array_equal(to_array(same), marked)
    with pytest.raises(BadInput):
        resize_center_crop(noisy_rgb(), 224, resize=100)


def test_overlay() -> None:
    pytest.importorskip("matplotlib")
    img = noisy_rgb(40, 30)
    heat = np.zeros((7, 7), dtype=np.float32)
    heat[3, 3] = 1.0
    out = overlay(img, heat, alpha=0.5)
    assert out.mode == "RGB" and out.size == img.size
    np.testing.assert_array_equal(to_array(overlay(img, heat, alpha=0.0)), to_array(img))
    with pytest.raises(BadInput, match="NaN"):
        overlay(img, np.full((4, 4), np.nan))
    with pytest.raises(BadInput, match="colormap"):
        overlay(img, heat, cmap="not-a-colormap")


def test_make_grid_shapes() -> None:
    tiles = [np.full((5, 4), i * 10, dtype=np.uint8) for i in range(7)]
    grid = make_grid(tiles, ncols=3, pad=1)
    assert grid.shape == (3 * 6 + 1, 3 * 5 + 1) and grid.dtype == np.uint8
    assert grid[0, 0] == 255 and grid[1, 1] == 0 and grid[1, 1 + 5] == 10
    rgb = make_grid(np.zeros((4, 8, 8, 3), dtype=np.uint8), pad=2, pad_value=(0, 0, 255))
    assert rgb.shape == (2 * 10 + 2, 2 * 10 + 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 255]
    assert make_grid([np.zeros((2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8)], pad=0).shape == (2, 4, 3)
    with pytest.raises(BadInput, match="equally sized"):
        make_grid([np.zeros((2, 2), np.uint8), np.zeros((3, 2), np.uint8)])
    with pytest.raises(BadInput, match="no tiles"):
        make_grid([])


# ----------------------------------------------------------------------------- packaged samples


def test_sample_images_finds_chelsea() -> None:
    if importlib.util.find_spec("skimage") is None:
        pytest.skip("scikit-image is not installed")
    found = sample_images()
    assert "chelsea" in found and found["chelsea"].is_file()
    cat = sample_image("chelsea")
    assert cat.mode == "RGB" and cat.size == (451, 300)
    with pytest.raises(BadInput, match="chelsea"):
        sample_image("no-such-sample")


def test_sample_image_grayscale_becomes_rgb() -> None:
    if "camera" not in sample_images():
        pytest.skip("scikit-image camera.png not on disk")
    assert sample_image("camera").mode == "RGB"


def test_foolbox_imagenet() -> None:
    if importlib.util.find_spec("foolbox") is None:
        pytest.skip("foolbox is not installed (pip install --no-deps foolbox==3.3.4)")
    items = foolbox_imagenet()
    assert len(items) == 20
    assert all(p.is_file() and p.suffix == ".jpg" for p, _ in items)
    assert all(0 <= label <= 999 for _, label in items)
    assert items[0][0].name.startswith("imagenet_00_")
    assert open_image(items[0][0]).mode == "RGB"
    assert len(foolbox_photos("cifar10")) == 20
    assert all(p.name.startswith("cifar10_") for p, _ in foolbox_photos("cifar10"))
    assert all(0 <= label <= 9 for _, label in foolbox_photos("fashionmnist"))
    with pytest.raises(BadInput, match="imagenet"):
        foolbox_photos("svhn")


# ----------------------------------------------------------------------------- the boundary (issue 16)


def _pil_raises(data: bytes) -> type[BaseException] | None:
    """What plain Pillow raises opening and decoding `data` (None: it decodes)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            im.load()
            im.convert("RGB")
    except BaseException as e:  # noqa: BLE001
        return type(e)
    return None


def _small_photo() -> Image.Image:
    return sample_image("chelsea").resize((48, 32))


@functools.cache
def bit_flipped() -> tuple[str, bytes]:
    """A bit-flipped file in a newer format that makes Pillow itself raise RuntimeError (AVIF), or else a
    bit-flipped PNG that Pillow refuses with its own error; (name, bytes)."""
    if "AVIF" in decodable_formats():
        data = encode(_small_photo(), "AVIF", quality=80)
        for pos in range(len(data)):
            flipped = bytearray(data)
            flipped[pos] ^= 1
            if _pil_raises(bytes(flipped)) is RuntimeError:
                return "flipped.avif", bytes(flipped)
    data = bytearray(encode(_small_photo(), "PNG"))
    data[40] ^= 0x10
    return "flipped.png", bytes(data)


def tiny_files() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, the words the refusal must contain) for the issue's cases."""
    name, flipped = bit_flipped()
    return [
        ("one.jpg", b"\xff", "is only 1 byte long, too short to be an image"),
        ("two.png", b"\x89P", "is only 2 bytes long, too short to be an image"),
        ("three.tif", b"II*", "is only 3 bytes long, too short to be an image"),
        (name, flipped, "truncated or corrupt"),
    ]


def test_tiny_and_bit_flipped_files_give_bad_input(tmp_path: Path) -> None:
    """The issue's escapes (struct.error from 1-3 byte files, RuntimeError from a flipped AVIF) are BadInput."""
    name, flipped = bit_flipped()
    if name.endswith(".avif"):
        assert _pil_raises(flipped) is RuntimeError  # the exception that used to escape
    assert _pil_raises(b"\x89P") is not None
    for fname, data, words in tiny_files():
        path = write(tmp_path, fname, data)
        for src in (path, data, io.BytesIO(data)):
            with pytest.raises(BadInput) as info:
                open_image(src)
            assert type(info.value) in (BadInput,), type(info.value)
            assert words in str(info.value), str(info.value)
        with pytest.raises(BadInput) as info:
            open_image(path)
        assert str(info.value).startswith(f"{str(path)!r}: ")


def test_messages_never_echo_file_bytes() -> None:
    rng = np.random.default_rng(11)
    blob = bytes(rng.integers(0, 256, 600, dtype=np.uint8))
    broken_chunk = bytearray(encode(noisy_rgb(8, 8), "PNG"))
    broken_chunk[37:41] = b"\xf5\xceP7"  # the IDAT chunk type: Pillow's own message quotes these bytes
    for data in (blob, bytes(broken_chunk), b"\x00\x01\x02\x03\x04\x05\x06\x07" * 10):
        with pytest.raises(BadInput) as info:
            open_image(data)
        msg = str(info.value)
        assert data[:4].hex(" ") not in msg and data[:2].hex(" ") not in msg, msg
        assert "\\x" not in msg and "b'\\" not in msg, msg
        assert "first bytes" not in msg


def test_label_is_what_messages_call_the_input(tmp_path: Path) -> None:
    """A front end names the user's file, not the server's storage name for it."""
    stored = write(tmp_path, "upload-5f2c9a.bin", b"<html><body>404</body></html>")
    for src in (stored, stored.read_bytes(), io.BytesIO(stored.read_bytes())):
        with pytest.raises(BadInput) as info:
            open_image(src, label="holiday photo.jpg")
        msg = str(info.value)
        assert msg.startswith("'holiday photo.jpg': looks like HTML"), msg
        assert "upload-5f2c9a" not in msg and str(tmp_path) not in msg
    with pytest.raises(BadInput, match="^'cat.png': file not found"):
        open_image(tmp_path / "upload-gone.bin", label="cat.png")
    with pytest.raises(BadInput, match="label must be a string"):
        open_image(stored, label=b"cat.png")  # type: ignore[arg-type]
    assert open_image(encode(noisy_rgb(4, 4), "PNG"), label="x" * 10_000).size == (4, 4)


def test_bomb_beyond_pils_own_limit_names_size_and_our_cap() -> None:
    """Pillow refuses > 2x MAX_IMAGE_PIXELS inside Image.open; the message still gives WxH and our cap."""
    with pytest.raises(ResourceLimit) as info:
        open_image(png_declaring(40_000, 30_000))
    msg = str(info.value)
    assert "40000x30000 = 1,200,000,000 pixels" in msg and "over the limit of 50,000,000 pixels" in msg
    with pytest.raises(ResourceLimit) as info:
        open_image(png_declaring(40_000, 30_000), max_pixels=2_000_000_000)
    assert "PIL's own hard limit" in str(info.value) and "MAX_IMAGE_PIXELS" in str(info.value)


def test_out_of_memory_is_a_resource_limit(tmp_path: Path) -> None:
    """MemoryError while decoding (here: an address-space limit in a child process) becomes ResourceLimit."""
    big = tmp_path / "big.png"
    Image.new("1", (7000, 7000)).save(big)  # 49 Mpx: under the pixel cap, 147 MB once RGB
    code = f"""
import resource, sys
import accel.images as ai
from accel.errors import ResourceLimit
size_kb = int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmSize:')))
room = (size_kb + 60 * 1024) * 1024
resource.setrlimit(resource.RLIMIT_AS, (room, room))
try:
    ai.open_image({str(big)!r})
except ResourceLimit as e:
    print('RESOURCE', e)
    sys.exit(0)
except BaseException as e:
    print('OTHER', type(e).__name__, e)
    sys.exit(1)
print('DECODED')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        "RESOURCE" in proc.stdout
        and "ran out of memory" in proc.stdout
        and "CONVLENS_MAX_PIXELS" in proc.stdout
    )


# ----------------------------------------------------------------------------- TIFF variants (issue 16)


def _tifffile():
    return pytest.importorskip("tifffile")


def _tiff(a: np.ndarray, **kw: object) -> bytes:
    buf = io.BytesIO()
    _tifffile().imwrite(buf, a, **kw)
    return buf.getvalue()


def test_float_rgb_tiff_is_decoded_not_called_corrupt() -> None:
    """The issue's case: a valid float32 RGB TIFF (values 0..1) opens as the right picture."""
    ref = to_array(_small_photo())
    data = _tiff(ref.astype(np.float32) / 255.0, photometric="rgb")
    assert _pil_raises(data) is not None  # Pillow alone has no mode for it
    np.testing.assert_array_equal(to_array(open_image(data)), ref)


_DTYPES = ("u1", "u2", "u4", "i2", "i4", "f2", "f4", "f8")


def _encode_samples(v: np.ndarray, dt: str) -> np.ndarray:
    """8-bit sample values in the full range of `dt` (floats in 0..1, signed as they are)."""
    d = np.dtype(dt)
    if d.kind == "f":
        return (v / 255.0).astype(d)
    if d.kind == "u":
        return (v.astype(np.uint64) * ((2 ** (8 * d.itemsize) - 1) // 255)).astype(d)
    return v.astype(d)


@pytest.mark.parametrize("dt", _DTYPES)
@pytest.mark.parametrize(
    "layout",
    ["gray", "gray+alpha", "rgb", "rgba", "rgb-planar", "rgba-planar", "rgb-deflate-tiled", "rgb-big-endian"],
)
def test_tiff_sample_types_and_layouts_decode_exactly(dt: str, layout: str) -> None:
    """Every sample type x layout tifffile writes: the decoded picture equals the 8-bit original (+-1 level)."""
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (10, 14, 3)).astype(np.uint8)
    gray = rgb[..., 0]
    opaque = np.where(np.arange(14) < 4, 0, 255).astype(np.uint8)[None, :].repeat(10, 0)
    alpha = "alpha" in layout or "rgba" in layout
    colour = gray[..., None] if layout.startswith("gray") else rgb
    arr = np.dstack([colour, opaque]) if alpha else colour
    enc = _encode_samples(arr, dt)
    if alpha and np.dtype(dt).kind == "i":  # signed alpha: opaque is the largest positive value
        enc[..., -1] = np.where(arr[..., -1] > 0, np.iinfo(np.dtype(dt)).max, 0)
    kw: dict[str, object] = {"photometric": "minisblack" if layout.startswith("gray") else "rgb"}
    if alpha:
        kw["extrasamples"] = ("unassalpha",)
    if enc.shape[2] == 1:
        enc = enc[..., 0]
    if "planar" in layout:
        enc, kw["planarconfig"] = np.moveaxis(enc, 2, 0), "separate"
    if "deflate" in layout:
        kw.update(compression="zlib", tile=(16, 16))
    if "big-endian" in layout:
        kw["byteorder"] = ">"
    expected = np.repeat(gray[..., None], 3, 2) if layout.startswith("gray") else rgb.copy()
    if alpha:
        expected[:, :4] = 255  # transparent columns over the white background
    got = to_array(open_image(_tiff(enc, **kw)))
    assert np.abs(got.astype(int) - expected).max() <= 1


def test_odd_but_valid_tiffs() -> None:
    g = (np.arange(10 * 14).reshape(10, 14) % 256).astype(np.uint8)
    cases = {
        "min-is-white": (_tiff(g, photometric="miniswhite"), 255 - g),
        "bilevel": (_tiff(g > 100, photometric="minisblack"), np.where(g > 100, 255, 0)),
        "orientation-6": (
            _tiff(g.astype(np.uint16) * 257, extratags=[(274, 3, 1, 6, True)]),
            np.rot90(g, -1),
        ),
        "16-bit palette": (
            _tiff(
                g.astype(np.uint16) * 256,
                photometric="palette",
                colormap=np.stack([np.arange(65536) // 256 * 257] * 3).astype(np.uint16),
            ),
            g,
        ),
        "float multi-page": (_tiff(np.stack([g / 255.0, np.zeros_like(g, float)]).astype(np.float32)), g),
        "signed 16-bit CT-like range": (_tiff(g.astype(np.int16) * 8 - 1024), np.rint(g * 255.0 / g.max())),
    }
    for name, (data, expected) in cases.items():
        got = to_array(open_image(data))[..., 0]
        assert got.shape == expected.shape, name
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, name


def test_unsupported_tiff_variant_is_named_with_a_way_out() -> None:
    a = np.random.default_rng(2).random((8, 8, 3)).astype(np.float32)
    with pytest.raises(BadInput) as info:
        open_image(_tiff(a, photometric="rgb", compression="lzma"), label="scan.tif")
    msg = str(info.value)
    assert msg.startswith(
        "'scan.tif': this TIFF (32-bit float RGB, LZMA compression) is a variant convlens cannot"
    )
    assert "re-save it as an uncompressed or Deflate (ZIP) TIFF" in msg
    cmyk = np.random.default_rng(3).random((8, 8, 4)).astype(np.float32)
    with pytest.raises(
        BadInput, match=r"32-bit float CMYK \(separated\), 4 samples.*CMYK \(separated\) is not supported"
    ):
        open_image(_tiff(cmyk, photometric="separated"))


def test_deflate_bomb_in_a_float_tiff_is_refused_before_inflating() -> None:
    """A strip whose Deflate stream expands far beyond its declared size (tifffile would inflate it unbounded)."""
    tifffile = _tifffile()
    data = bytearray(_tiff(np.zeros((100, 100), np.float32), compression="zlib", rowsperstrip=100))
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tags = tif.pages.first.tags
        off_at, cnt_at = tags["StripOffsets"].valueoffset, tags["StripByteCounts"].valueoffset
    bomb = zlib.compress(b"\0" * (64 << 20), 9)  # 64 MiB of zeros in ~64 KB, for a 40 KB strip
    new_offset = len(data)
    data[off_at : off_at + 4] = struct.pack("<I", new_offset)
    data[cnt_at : cnt_at + 4] = struct.pack("<I", len(bomb))
    start = time.perf_counter()
    with pytest.raises(ResourceLimit, match="expands beyond its declared size"):
        open_image(bytes(data) + bomb)
    assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------------------- front ends (issue 16)


def test_cli_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    """`convlens predict FILE` for each tiny or flipped file: exit 2, exactly one stderr line, the reason in it."""
    exe = ROOT / ".venv" / "bin" / "convlens"
    if not exe.exists():
        pytest.skip("the convlens console script is not installed in .venv")
    for fname, data, words in tiny_files():
        path = write(tmp_path, fname, data)
        proc = subprocess.run([str(exe), "predict", str(path)], capture_output=True, text=True, timeout=300)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2, (fname, proc.returncode, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("convlens: error: "), (fname, proc.stderr)
        assert words in lines[0] and fname in lines[0], lines[0]
        assert proc.stdout == ""


def test_cli_predicts_a_float_tiff_like_its_png(tmp_path: Path, lite0) -> None:  # noqa: ANN001
    """The float RGB TIFF once called corrupt: `convlens predict` gives the PNG's top-3 (the PNG in-process)."""
    exe = ROOT / ".venv" / "bin" / "convlens"
    if not exe.exists():
        pytest.skip("the convlens console script is not installed in .venv")
    photo = sample_image("chelsea")
    tif = write(tmp_path, "cat.tif", _tiff(to_array(photo).astype(np.float32) / 255.0, photometric="rgb"))
    proc = subprocess.run(
        [str(exe), "predict", str(tif), "--json", "--top", "3"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    got = json.loads(proc.stdout)
    want = lite0.predict(open_image(encode(photo, "PNG")), top=3)
    assert [r["label"] for r in got] == [lab for lab, _ in want]
    assert abs(got[0]["probability"] - want[0][1]) < 1e-4


def test_dashboard_shows_an_error_box_and_keeps_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidebar upload of each tiny or flipped file: an error box with the reason, no exception; a float TIFF
    upload afterwards gives predictions again (AppTest simulates the upload through the real file_uploader)."""
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CONVLENS_STORE", str(tmp_path / "store"))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=240)
    at.session_state["img_source"] = "Upload"
    at.run()
    assert not at.exception

    def upload(name: str, data: bytes) -> None:
        at.sidebar.file_uploader[0].set_value((name, data, "application/octet-stream"))
        at._finished_page_script_hash = (
            ""  # rerun as the same page (see tests/test_dashboard.py::_home_rerun)
        )
        at._page_hash = ""
        at.run()
        assert not at.exception, (name, [e.value for e in at.exception])

    for fname, data, words in tiny_files():
        upload(fname, data)
        errors = " ".join(e.value for e in at.sidebar.error)
        assert words in errors and fname in errors, (fname, errors)
        assert "internal error" not in errors.lower()
    photo = _small_photo().resize((96, 64))
    upload("scan.tif", _tiff(to_array(photo).astype(np.float32) / 255.0, photometric="rgb"))
    assert not at.error, [e.value for e in at.error]
    assert len(at.get("progress")) == 5  # the top-5 predictions are back


def test_without_tifffile_a_float_tiff_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _tiff(np.zeros((4, 4, 3), np.float32), photometric="rgb")
    monkeypatch.setitem(sys.modules, "tifffile", None)  # as if it were not installed: `import tifffile` fails
    with pytest.raises(BadInput) as info:
        open_image(data, label="scan.tif")
    msg = str(info.value)
    assert msg.startswith("'scan.tif': ") and "pip install tifffile" in msg and "float" in msg
