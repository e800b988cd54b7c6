"""Uploads: user files saved under generated content-hash names (never a user-chosen path), within the upload cap."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from pathlib import Path

from .. import limits
from ..errors import BadInput, ResourceLimit
from ..limits import CAPS
from .folders import os_error

__all__ = ["ENV_MAX_UPLOAD_MB", "UPLOAD_SUFFIXES", "save_upload_to"]

ENV_MAX_UPLOAD_MB = CAPS["upload_mb"].env
UPLOAD_SUFFIXES = (
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
    ".bmp",
    ".tif",
    ".tiff",
    ".pt",
    ".pth",
    ".safetensors",
    ".onnx",
)


def _max_upload_bytes() -> int:
    """The upload cap in bytes (CONVLENS_MAX_UPLOAD_MB; a malformed value raises SettingError naming it)."""
    return int(limits.cap_float("upload_mb") * 2**20)


def save_upload_to(folder: Path, data: bytes, suffix: str, *, name: str | None = None) -> Path:
    """Write uploaded bytes into `folder` under a generated content-hash name; `name` (the user's file name) is
    only used in messages. Refuses unknown types, empty files and files over CONVLENS_MAX_UPLOAD_MB."""
    who = f"{name!r:.120}" if name else "the upload"
    sfx = str(suffix).lower()
    if not sfx.startswith("."):
        sfx = "." + sfx
    if sfx not in UPLOAD_SUFFIXES:
        raise BadInput(
            f"{who}: unsupported upload type {suffix!r:.40}; allowed: {', '.join(UPLOAD_SUFFIXES)}"
        )
    data = bytes(data)
    if not data:
        raise BadInput(f"{who}: the uploaded file is empty (0 bytes)")
    cap = _max_upload_bytes()
    if len(data) > cap:
        size = f"{len(data) / 2**20:.1f} MiB" if len(data) >= 2**20 else f"{len(data)} bytes"
        raise ResourceLimit(
            f"{who} is {size}, over the {limits.cap_float('upload_mb'):g} MiB upload cap; "
            f"raise it with {ENV_MAX_UPLOAD_MB}"
        )
    out = folder / f"upload-{hashlib.sha256(data).hexdigest()[:32]}{sfx}"
    if out.is_file() and out.stat().st_size == len(data):
        return out
    tmp = folder / f".tmp-{uuid.uuid4().hex}{sfx}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise os_error(e, f"save {who}", folder) from None
    return out
