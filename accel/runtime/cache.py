"""The on-disk cache of the runtime: where exported graphs and engines live, and the temporaries of writers.

Every cached file is written to a temporary beside its target (`.<name>.<pid>-<thread>.tmp`) and renamed into
place; temporaries left by a killed process are removed the first time a process uses the folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from pathlib import Path

from .. import settings
from ..errors import BadInput

STALE_TMP_S = 30 * 60  # a temporary this old is an orphan whatever its pid says (pids get reused)

_CLEANED: set[str] = set()
_TMP_RE = re.compile(r"^\..+\.(\d+)-(\d+)\.tmp$")


def cache_dir() -> Path:
    """Where exports live: $CONVLENS_CACHE/onnx or the user cache directory; stale temporaries of killed
    exports are removed the first time a process uses it."""
    env = settings.get("CONVLENS_CACHE")
    if env:
        root = Path(env)
    else:
        from platformdirs import user_cache_dir

        root = Path(user_cache_dir("convlens"))
    d = root / "onnx"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadInput(
            f"the convlens cache folder cannot be created ({e.strerror or type(e).__name__}); point "
            "CONVLENS_CACHE at a writable folder"
        ) from None
    if str(d) not in _CLEANED:
        _CLEANED.add(str(d))
        clean_stale_temporaries(d)
    return d


def temp_name(target: Path) -> Path:
    """A temporary beside `target`, unique per process and thread: `.<name>.<pid>-<thread>.tmp`."""
    return target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temporaries(folder: Path, prefix: str = "") -> list[str]:
    """Remove temporaries `.<prefix>*.<pid>-<thread>.tmp` in `folder` whose process is gone, or older than
    STALE_TMP_S from another process; returns the names removed."""
    gone: list[str] = []
    now = time.time()
    try:
        entries = list(folder.glob(f".{prefix}*.tmp"))
    except OSError:
        return gone
    for f in entries:
        m = _TMP_RE.match(f.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid == os.getpid():
            continue
        try:
            old = now - f.stat().st_mtime > STALE_TMP_S
        except OSError:
            continue
        if old or not _pid_alive(pid):
            with contextlib.suppress(OSError):
                f.unlink()
                gone.append(f.name)
    return gone
