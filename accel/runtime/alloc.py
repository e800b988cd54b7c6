"""C-heap tuning for PyTorch eager on the CPU: keep freed activation buffers instead of returning them to the OS.

glibc serves blocks above its mmap threshold (at most 32 MiB, dynamically) with fresh mmap and trims freed memory
at the heap top, so each eager forward of a batched CNN page-faults its activations in again: on the 2-core
machine, efficientnet_lite0 at batch 16 spent more time in the kernel than in convolutions (50 img/s, 3.0 s
system time per 160 images; 114 img/s and 0.02 s with the thresholds raised). ONNX Runtime has its own arena and
is unaffected unless its arena is off (see `pooled_arena`). Processes convlens owns (the CLI and the dashboard) call
`tune_allocator()`; library users may.

The thresholds only hold in glibc's main arena. Other threads get arenas of their own, built from heaps of at most
64 MiB that are unmapped as they empty, so their large blocks page-fault in again on every pass whatever the
thresholds say; and the dashboard runs every script and every job in a fresh thread (deletion/insertion of four
maps in a fresh thread: 2.07-2.14 s against 1.40 s on the main arena). So the tuning also caps the process at one
arena (`M_ARENA_MAX` = 1): every thread allocates from the tuned main heap (malloc takes a lock; with a few large
blocks per pass that costs nothing measurable).
"""

from __future__ import annotations

import ctypes
import platform
from typing import Any

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_MB = 512  # blocks below this come from the heap (vgg16 at batch 16: 205 MiB per activation)
TRIM_THRESHOLD_MB = 1024  # free memory kept at the heap top before it is given back to the OS

_STATE: dict[str, Any] = {}


def pooled_arena() -> bool:
    """Whether a pooled (shared) ONNX Runtime session should keep its CPU arena.

    Without the arena every run mallocs its activations; on glibc's default heap those large blocks are fresh mmaps
    that page-fault in on every run (lite0 at batch 8: 7.7-9.3 ms per image against 5.2-5.7 with the arena, same
    session otherwise), while on a tuned heap malloc is as fast as the arena (6.0-6.4 vs 5.9-6.7 ms). The arena
    never shrinks (8 concurrent occlusions kept ~0.8 GiB), which matters in the shared dashboard, a tuned process.
    So: no arena on a tuned heap (the dashboard, the CLI), the arena elsewhere (library users, the bench)."""
    return not _STATE.get("applied")


def release_memory() -> bool:
    """Give the C heap's free memory back to the OS now (glibc `malloc_trim(0)`); a server calls it when no run is
    in flight, since the tuned trim threshold otherwise keeps up to a GiB of freed activations. False elsewhere."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def tune_allocator(
    mmap_threshold_mb: int = MMAP_THRESHOLD_MB, trim_threshold_mb: int = TRIM_THRESHOLD_MB
) -> dict[str, Any]:
    """Raise glibc's mmap and trim thresholds and keep every thread on the main arena, for this process (once);
    returns what was done and why not.

    Costs up to `trim_threshold_mb` of retained free memory. CONVLENS_TUNE_MALLOC=0 turns it off.
    """
    if _STATE:
        return dict(_STATE)
    from ..settings import get

    if not get("CONVLENS_TUNE_MALLOC"):
        _STATE.update(applied=False, reason="CONVLENS_TUNE_MALLOC=0")
        return dict(_STATE)
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _STATE.update(applied=False, reason=f"not glibc ({platform.system()} {platform.libc_ver()[0]})")
        return dict(_STATE)
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold_mb) * 2**20) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold_mb) * 2**20) == 1 and ok
        ok = libc.mallopt(_M_ARENA_MAX, 1) == 1 and ok  # every thread on the tuned main heap (see above)
    except (OSError, AttributeError) as e:
        _STATE.update(applied=False, reason=f"mallopt unavailable: {e}")
        return dict(_STATE)
    _STATE.update(
        applied=ok,
        mmap_threshold_mb=int(mmap_threshold_mb),
        trim_threshold_mb=int(trim_threshold_mb),
        arena_max=1,
        **({} if ok else {"reason": "mallopt refused the values"}),
    )
    return dict(_STATE)


def allocator_state() -> dict[str, Any]:
    """What `tune_allocator` did in this process ({} if it has not been called)."""
    return dict(_STATE)
