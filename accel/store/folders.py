"""The store on disk: where it lives, run folders and their manifests, and how failures to read or write them are
worded (StoreError says what to do; no message echoes a file's content)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import BadInput
from ..result import read_artifact

__all__ = [
    "ENV_STORE",
    "MANIFEST",
    "REBUILD_HINT",
    "RUN_ID",
    "StoreError",
    "default_root",
    "os_error",
    "read_failure",
    "read_manifest",
    "verify_artifact",
    "write_json_atomic",
]

ENV_STORE = "CONVLENS_STORE"
RUN_ID = re.compile(r"^[0-9a-f]{16}$")  # a run id, which is also its folder's name
MANIFEST = "manifest.json"  # in every run folder: everything the run's index row holds, and its files
REBUILD_HINT = (
    "run `convlens store check` to see what is affected and `convlens store rebuild` to rebuild the index from "
    "the run folders (the damaged file is kept beside it)"
)


class StoreError(BadInput):
    """The run store cannot read or write (disk full, permissions, a missing run); the message says what to do."""


def default_root() -> Path:
    """`$CONVLENS_STORE`, else a `store` folder in the user's data directory."""
    env = settings.get(ENV_STORE)
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir("convlens")) / "store"


def os_error(e: OSError, what: str, where: Path) -> StoreError:
    """A StoreError for a failed file operation: what failed where, and what to do (free space, fix permissions)."""
    why = e.strerror or str(e)
    hint = (
        "free some disk space or point CONVLENS_STORE to a folder on another disk"
        if e.errno in (errno.ENOSPC, errno.EDQUOT)
        else f"check that {where} is writable, or point CONVLENS_STORE to another folder"
    )
    return StoreError(f"run store: cannot {what} in {where}: {why} (errno {e.errno}); {hint}")


def read_failure(e: BaseException) -> str:
    """A short reason for a failed read that names no path and echoes no file content."""
    if isinstance(e, UnicodeDecodeError):
        return "not UTF-8 text"
    if isinstance(e, json.JSONDecodeError):
        return f"not valid JSON (line {e.lineno}, column {e.colno})"
    if isinstance(e, FileNotFoundError):
        return "missing"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).split("\n", 1)[0]
    text = re.sub(r"(/[^\s'\"]+)+", "<path>", text)[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` as JSON in one step (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_text(json.dumps(obj, allow_nan=False), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def read_manifest(folder: Path) -> dict[str, Any]:
    """A run folder's manifest.json as a dict (OSError/ValueError when missing or damaged)."""
    m = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    if not isinstance(m, dict):
        raise ValueError("manifest.json is not a JSON object")
    return m


def verify_artifact(path: Path) -> str | None:
    """Why an artifact file cannot be read back (None when it decodes): PNGs decoded fully, arrays by header."""
    try:
        read_artifact(path)
        return None
    except Exception as e:  # noqa: BLE001 - any decoder failure means the file is damaged
        return read_failure(e)
