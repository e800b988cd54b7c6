"""The sandbox's wire format, shared by the parent (`accel.runtime.sandbox`) and the host process
(`accel.runtime.sandbox_host`): frames over pipes, each a 4-byte big-endian header length, a JSON header, then the
header's `nbytes` of raw float32 data. Nothing is pickled in either direction.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

MAX_HEADER = 1 << 20


def frame(header: dict[str, Any], payload: bytes | memoryview = b"") -> list[bytes | memoryview]:
    """The parts of one frame: header length, JSON header (with the payload's `nbytes`), payload."""
    head = json.dumps({**header, "nbytes": memoryview(payload).nbytes}).encode()
    return [struct.pack(">I", len(head)), head, payload]


class Died(Exception):
    """The host closed its pipe (it exited or was killed)."""


class TimedOut(Exception):
    """A request passed its deadline."""


def write_all(fd: int, parts: list[bytes | memoryview], deadline: float | None) -> None:
    """Write every part to a (non-blocking) pipe before `deadline` (None: no limit); TimedOut or Died."""
    for part in parts:
        view = memoryview(part).cast("B")
        off = 0
        while off < len(view):
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimedOut
                _, w, _ = select.select([], [fd], [], left)
                if not w:
                    raise TimedOut
            try:
                off += os.write(fd, view[off : off + (1 << 20)])
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError) as e:
                raise Died(str(e)) from None


def read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    """Exactly `n` bytes from a pipe before `deadline` (None: no limit); TimedOut, or Died at end of stream."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimedOut
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                raise TimedOut
        try:
            chunk = os.read(fd, min(n - len(buf), 1 << 20))
        except BlockingIOError:
            continue
        except OSError as e:
            raise Died(str(e)) from None
        if not chunk:
            raise Died("end of stream")
        buf += chunk
    return bytes(buf)


def read_frame(fd: int, deadline: float | None) -> tuple[dict[str, Any], bytes]:
    """One frame: its JSON header and raw payload; Died on a malformed or oversized header."""
    (n,) = struct.unpack(">I", read_exact(fd, 4, deadline))
    if n > MAX_HEADER:
        raise Died(f"header of {n} bytes")
    try:
        header = json.loads(read_exact(fd, n, deadline))
    except ValueError:
        raise Died("malformed header") from None
    if not isinstance(header, dict):
        raise Died("malformed header")
    nbytes = header.get("nbytes", 0)
    if not isinstance(nbytes, int) or nbytes < 0:
        raise Died("malformed payload size")
    return header, read_exact(fd, nbytes, deadline) if nbytes else b""
