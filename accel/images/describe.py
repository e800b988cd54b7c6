"""Words for inputs Pillow cannot identify: what the first bytes look like (a truncated PNG, a PDF, an HTML page...).

Only messages use this reading; Pillow alone decides what is decoded. Nothing here echoes the input's bytes.
"""

from __future__ import annotations

import codecs

from .formats import decodable_formats

__all__ = ["as_text", "describe_text", "describe_unidentified"]

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


def describe_unidentified(head: bytes, detail: str = "Pillow cannot read it") -> str:
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
    text = as_text(head)
    if text is not None:
        return f"looks like {describe_text(text)}, not an image"
    return (
        "is not a recognised image format (binary data without the header of any image format); "
        f"supported: {', '.join(decodable_formats())}"
    )


def as_text(head: bytes) -> str | None:
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


def describe_text(text: str) -> str:
    """What kind of text the input is (SVG, HTML, XML, a data: URL, JSON or plain text), as a noun phrase."""
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
