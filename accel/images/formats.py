"""Which image formats convlens decodes: a short allow-list, narrowed to what this Pillow build can read."""

from __future__ import annotations

from PIL import Image, features

__all__ = ["SUPPORTED_FORMATS", "decodable_formats", "image_extensions"]

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
